"""The per-application context and the FastAPI dependencies that reach it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from finsecure.core.ratelimit import RateLimiter
from finsecure.core.schemas import PageParams, page_params
from finsecure.core.security import Passwords
from finsecure.core.settings import Settings

if TYPE_CHECKING:
    from finsecure.platform import Platform


@dataclass(frozen=True)
class AppContext:
    """Everything a request handler may need, built once by the app factory."""

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    passwords: Passwords
    login_limiter: RateLimiter
    platform: Platform | None = None
    """The data plane (pipeline, lake); ``None`` for an API-only process, where ingest answers 503."""


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.context
    return ctx


def get_db(request: Request) -> Iterator[Session]:
    """A session per request. Services commit explicitly; anything left uncommitted is rolled back."""
    session = get_context(request).session_factory()
    try:
        yield session
    finally:
        session.close()


Context = Annotated[AppContext, Depends(get_context)]
DbSession = Annotated[Session, Depends(get_db)]
Page = Annotated[PageParams, Depends(page_params)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
