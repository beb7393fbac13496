"""Health check."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from finsecure import __version__
from finsecure.core.deps import Context
from finsecure.core.schemas import ApiModel
from finsecure.lake.sinks import LakeSink
from finsecure.system import service as system_service
from finsecure.system.service import ComponentState

router = APIRouter(tags=["system"])


class ComponentHealth(ApiModel):
    status: ComponentState
    """``busy``: it works, but waits on locks for a moment (no 503 for that); ``outdated``, ``degraded``
    and ``down`` fail the check."""
    detail: str | None = None


class Health(ApiModel):
    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    schema_revision: str | None
    pipeline: ComponentHealth | None = None
    """Present when this process runs the pipeline: ``busy`` while database writes wait a moment on a busy
    database, ``degraded`` while they wait on one that does not answer (the events still go to the lake)."""


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A component is down"}},
    summary="Is the platform up, is its database reachable and up to date, are its writes done?",
)
def health(ctx: Context) -> JSONResponse:
    check = system_service.check_database(engine=ctx.engine)
    database = ComponentHealth(status=check.status, detail=check.detail)
    pipeline = None
    if ctx.platform is not None:
        outbox = ctx.platform.outbox.status()
        # refused rows are reported in the detail (kept on disk for review) but do not fail the check
        pipeline = ComponentHealth(status=system_service.writes_state(outbox), detail=outbox.detail)
        lake_errors = [s.last_error for s in ctx.platform.pipeline.sinks if isinstance(s, LakeSink)]
        if any(lake_errors):
            pipeline = ComponentHealth(
                status="degraded", detail="; ".join([*filter(None, lake_errors), outbox.detail])
            )
    components = [database] if pipeline is None else [database, pipeline]
    failing = any(c.status in system_service.FAILING for c in components)
    body = Health(
        status="ok" if all(c.status == "ok" for c in components) else "degraded",
        version=__version__,
        database=database,
        schema_revision=check.revision,
        pipeline=pipeline,
    )
    content = body.model_dump(mode="json", exclude={"pipeline"} if pipeline is None else None)
    return JSONResponse(content, status_code=503 if failing else 200)
