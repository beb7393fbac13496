"""The dashboard's own read endpoints: the overview and the map (viewers and up)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request

from finsecure.auth.deps import ViewerUser
from finsecure.core.deps import Context, DbSession
from finsecure.core.errors import error_responses
from finsecure.core.schemas import QueryTime
from finsecure.incident.schemas import IncidentRead
from finsecure.web import service as web_service
from finsecure.web.live import LiveFeed
from finsecure.web.schemas import MapPoints, Overview

overview_router = APIRouter(prefix="/overview", tags=["dashboard"])
map_router = APIRouter(prefix="/map", tags=["dashboard"])

#: How far back the map looks by default.
DEFAULT_MAP_WINDOW = web_service.DEFAULT_MAP_WINDOW


def _live(request: Request) -> LiveFeed | None:
    live: LiveFeed | None = getattr(request.app.state, "live", None)
    return live


@overview_router.get(
    "",
    response_model=Overview,
    summary="Live KPIs, their recent history, the latest serious incidents and the model versions",
    responses=error_responses(401, 403),
)
def read_overview(_viewer: ViewerUser, ctx: Context, db_session: DbSession, request: Request) -> Overview:
    live = _live(request)
    series = live.history() if live is not None else []
    now = dt.datetime.now(dt.UTC)
    stats = ctx.platform.pipeline.stats() if ctx.platform is not None else None
    kpi = web_service.build_kpi(
        db_session=db_session, stats=stats, now=now, previous=series[-1] if series else None
    )
    return Overview(
        kpi=kpi,
        series=series,
        recent_incidents=[
            IncidentRead.model_validate(i) for i in web_service.recent_incidents(db_session=db_session)
        ],
        models=web_service.model_versions(db_session=db_session),
    )


@map_router.get(
    "/points",
    response_model=MapPoints,
    summary="Where recent alerts and events happened, and impossible-travel trips (at most seconds old)",
    responses=error_responses(400, 401, 403, 422, 503),
)
def read_map_points(
    _viewer: ViewerUser,
    ctx: Context,
    db_session: DbSession,
    since: Annotated[
        QueryTime | None, Query(description="From this time (default: the last hour; UTC if no zone)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="At most this many points")] = 1000,
) -> MapPoints:
    return web_service.cached_map_points(
        settings=ctx.settings,
        db_session=db_session,
        session_factory=ctx.session_factory,
        since=since,
        limit=limit,
    )
