"""Operations endpoints outside ``/api``: ``GET /metrics`` for Prometheus, and the request-id middleware.

``/metrics`` is not part of the public API (it is left out of the OpenAPI document and the role matrix):
it is for the monitoring system, open by default and guarded by a bearer token when
``FINSECURE_METRICS_TOKEN`` is set.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Request, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from finsecure.core.deps import AppContext
from finsecure.core.errors import Unauthorized
from finsecure.core.logging import correlation_id
from finsecure.ops.metrics import CONTENT_TYPE, Metrics
from finsecure.web.hub import InMemoryBroadcaster

__all__ = ["RequestIdMiddleware", "install_operations", "router"]

router = APIRouter(include_in_schema=False)

REQUEST_ID_HEADER = "x-request-id"
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


@router.get("/metrics")
def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Everything this process measures, in the Prometheus text format."""
    ctx: AppContext = request.app.state.context
    token = ctx.settings.metrics_token
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise Unauthorized("Metrics need the monitoring token", code="metrics_token_required")
    return Response(_metrics_of(request).render(), media_type=CONTENT_TYPE)


class RequestIdMiddleware:
    """Give every request a correlation id (the caller's ``X-Request-ID`` if sane, else a new one).

    The id is in every JSON log line written while the request is served, and in the answer's
    ``X-Request-ID`` header, so a user's report can be matched to the server's logs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER.encode()), b"")
        text = given.decode("latin-1")
        request_id = text if _GOOD_ID.fullmatch(text) else uuid.uuid4().hex
        token = correlation_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)


class _HubCollector(Collector):
    """WebSocket clients of this process, read from the app's hub (if the dashboard is installed)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        hub = getattr(self.app.state, "hub", None)
        if not isinstance(hub, InMemoryBroadcaster):
            return
        clients = GaugeMetricFamily("finsecure_websocket_clients", "Live dashboard connections")
        clients.add_metric([], hub.subscribers)
        published = CounterMetricFamily("finsecure_websocket_published", "Live messages published")
        published.add_metric([], hub.published)
        dropped = CounterMetricFamily("finsecure_websocket_dropped", "Connections dropped for falling behind")
        dropped.add_metric([], hub.dropped)
        yield from (clients, published, dropped)


def install_operations(app: FastAPI) -> Metrics:
    """Add ``/metrics``, the request-id middleware and the process's metrics to ``app``."""
    ctx: AppContext = app.state.context
    metrics = Metrics()
    if ctx.platform is not None:
        metrics.watch_pipeline(ctx.platform.pipeline, "api")
        metrics.watch_alerts(ctx.session_factory, ctx.platform.alerts)
    else:
        metrics.watch_alerts(ctx.session_factory)
    metrics.register(_HubCollector(app))
    app.state.metrics = metrics
    app.include_router(router)
    app.add_middleware(RequestIdMiddleware)
    return metrics
