"""Health check."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from finsecure import __version__
from finsecure.core import migrate
from finsecure.core.database import ping
from finsecure.core.deps import Context
from finsecure.core.schemas import ApiModel
from finsecure.lake.sinks import LakeSink

logger = logging.getLogger(__name__)
router = APIRouter(tags=["system"])


class ComponentHealth(ApiModel):
    status: Literal["ok", "outdated", "degraded", "down"]
    detail: str | None = None


class Health(ApiModel):
    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    schema_revision: str | None
    pipeline: ComponentHealth | None = None
    """Present when this process runs the pipeline: ``degraded`` while database writes wait (the events
    still go to the lake)."""


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A component is down"}},
    summary="Is the platform up, is its database reachable and up to date, are its writes done?",
)
def health(ctx: Context) -> JSONResponse:
    try:
        ping(ctx.engine)
        revision = migrate.current_revision(ctx.engine)
        if revision == migrate.head_revision():
            database = ComponentHealth(status="ok", detail=ctx.engine.dialect.name)
        else:
            database = ComponentHealth(
                status="outdated",
                detail=f"the database schema is at {revision or 'nothing'}, this version needs "
                f"{migrate.head_revision()}: run `finsecure migrate`",
            )
    except SQLAlchemyError as exc:
        logger.warning("health: database unreachable: %s", type(exc).__name__)
        revision = None
        database = ComponentHealth(status="down", detail="the database does not answer")
    pipeline = None
    if ctx.platform is not None:
        outbox = ctx.platform.outbox.status()
        # refused rows are reported in the detail (kept on disk for review) but do not fail the check
        pipeline = ComponentHealth(status=outbox.state, detail=outbox.detail)
        lake_errors = [s.last_error for s in ctx.platform.pipeline.sinks if isinstance(s, LakeSink)]
        if any(lake_errors):
            pipeline = ComponentHealth(
                status="degraded", detail="; ".join([*filter(None, lake_errors), outbox.detail])
            )
    ok = database.status == "ok" and (pipeline is None or pipeline.status == "ok")
    body = Health(
        status="ok" if ok else "degraded",
        version=__version__,
        database=database,
        schema_revision=revision,
        pipeline=pipeline,
    )
    content = body.model_dump(mode="json", exclude={"pipeline"} if pipeline is None else None)
    return JSONResponse(content, status_code=200 if ok else 503)
