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

logger = logging.getLogger(__name__)
router = APIRouter(tags=["system"])


class ComponentHealth(ApiModel):
    status: Literal["ok", "outdated", "down"]
    detail: str | None = None


class Health(ApiModel):
    status: Literal["ok", "degraded"]
    version: str
    database: ComponentHealth
    schema_revision: str | None


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A component is down"}},
    summary="Is the platform up, and is its database reachable and up to date?",
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
    body = Health(
        status="ok" if database.status == "ok" else "degraded",
        version=__version__,
        database=database,
        schema_revision=revision,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.status == "ok" else 503)
