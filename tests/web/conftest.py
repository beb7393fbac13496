"""An app whose every database path (requests, WebSocket sign-in, live feed) uses the test's connection."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from finsecure.api import create_app
from finsecure.core.deps import AppContext, get_db
from tests.alert.factories import session_factory


@pytest.fixture
def web_context(context: AppContext, db_session: Session) -> AppContext:
    factory: Any = session_factory(db_session)
    return replace(context, session_factory=factory)


@pytest.fixture
def web_app(web_context: AppContext, db_session: Session) -> FastAPI:
    application = create_app(context=web_context)
    application.dependency_overrides[get_db] = lambda: db_session
    return application


@pytest.fixture
def web_client(web_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(web_app, raise_server_exceptions=False) as test_client:
        yield test_client
