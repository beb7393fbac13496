"""The FastAPI application factory and the one place where routers are registered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy import Engine

from finsecure import __version__
from finsecure.alert.views import router as alerts_router
from finsecure.alert.views import suppressions_router
from finsecure.audit.views import router as audit_router
from finsecure.auth.views import apikeys_router, auth_router, users_router
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.core.deps import AppContext
from finsecure.core.errors import error_responses, install_error_handlers
from finsecure.core.middleware import BodySizeLimitMiddleware, SecurityHeadersMiddleware
from finsecure.core.query_params import reject_unknown_query_params
from finsecure.core.security import Passwords
from finsecure.core.settings import Settings, get_settings
from finsecure.core.shared import make_broadcaster, make_rate_limiter
from finsecure.detection.views import router as rules_router
from finsecure.event.views import router as events_router
from finsecure.graph.views import router as graph_router
from finsecure.incident.views import labels_router
from finsecure.incident.views import router as incidents_router
from finsecure.ingest.views import router as ingest_router
from finsecure.ml.views import router as models_router
from finsecure.ops.views import install_operations
from finsecure.platform import Platform
from finsecure.response.views import actions_router, blocklist_router, enforcement_router, playbooks_router
from finsecure.system.views import router as system_router
from finsecure.web import install_web, map_router, overview_router, start_live, stop_live

API_PREFIX = "/api"

#: Every router of the API, in the order they appear in the OpenAPI document.
ROUTERS: tuple[APIRouter, ...] = (
    system_router,
    auth_router,
    users_router,
    apikeys_router,
    audit_router,
    events_router,
    ingest_router,
    alerts_router,
    incidents_router,
    suppressions_router,
    labels_router,
    actions_router,
    blocklist_router,
    enforcement_router,
    playbooks_router,
    overview_router,
    map_router,
    graph_router,
    rules_router,
    models_router,
)


def build_context(
    settings: Settings, engine: Engine | None = None, *, platform: Platform | None = None
) -> AppContext:
    engine = engine or create_db_engine(settings.resolved_database_url, echo=settings.database_echo)
    return AppContext(
        settings=settings,
        engine=engine,
        session_factory=make_session_factory(engine),
        passwords=Passwords(settings),
        login_limiter=make_rate_limiter(settings),  # Redis when FINSECURE_REDIS_URL is set
        platform=platform,
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the data plane with the server and drain it on shutdown, so accepted events are not lost."""
    platform: Platform | None = app.state.context.platform
    started = platform is not None and not platform.pipeline.running
    if platform is not None and started:
        platform.start()
    if platform is not None:
        start_live(app)  # the dashboard's live feed samples the data plane
    try:
        yield
    finally:
        stop_live(app)
        if platform is not None and started:
            platform.stop()


def create_app(settings: Settings | None = None, *, context: AppContext | None = None) -> FastAPI:
    """Build the API application.

    Parameters
    ----------
    settings
        Defaults to :func:`finsecure.core.settings.get_settings`.
    context
        A prepared context (tests pass one bound to their own database).
    """
    settings = settings or (context.settings if context else get_settings())
    app = FastAPI(
        title="FinSecure Nexus",
        version=__version__,
        description="Cyber, fraud and geo signals correlated on one entity graph, explained.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.context = context or build_context(settings)
    install_error_handlers(app)
    for router in ROUTERS:  # a query parameter an operation does not take is a 422, never ignored
        app.include_router(
            router,
            prefix=API_PREFIX,
            dependencies=[Depends(reject_unknown_query_params)],
            responses=error_responses(422),
        )
    # /ws, the live feed and the dashboard at / (before the security headers); Redis fan-out if configured
    install_web(app, hub=make_broadcaster(settings))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    install_operations(app)  # /metrics (outside /api) and request ids in the logs
    return app
