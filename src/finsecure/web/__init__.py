"""The web dashboard's server side: static files at ``/``, the live WebSocket at ``/ws``, the overview
and map endpoints, and the hub that carries live messages from the pipeline to the browsers."""

from __future__ import annotations

from fastapi import FastAPI

from finsecure.core.deps import AppContext
from finsecure.web.hub import Broadcaster, InMemoryBroadcaster
from finsecure.web.live import LiveFeed
from finsecure.web.static import DashboardMiddleware
from finsecure.web.views import map_router, overview_router
from finsecure.web.ws import websocket_endpoint

__all__ = ["install_web", "map_router", "overview_router", "start_live", "stop_live"]


def install_web(app: FastAPI, *, hub: Broadcaster | None = None) -> None:
    """Give ``app`` its hub, live feed, ``/ws`` and the dashboard.

    Call it before the security-headers middleware is added, so the dashboard's files get those headers.
    """
    context: AppContext = app.state.context
    app.state.hub = hub or InMemoryBroadcaster()
    app.state.live = LiveFeed(app.state.hub, context.session_factory, context.platform)
    app.add_api_websocket_route("/ws", websocket_endpoint)
    app.add_middleware(DashboardMiddleware)


def start_live(app: FastAPI) -> None:
    """Start the live feed (from the app's lifespan)."""
    live: LiveFeed | None = getattr(app.state, "live", None)
    if live is not None:
        live.start()


def stop_live(app: FastAPI) -> None:
    live: LiveFeed | None = getattr(app.state, "live", None)
    if live is not None:
        live.stop()
