"""Model versions for the dashboard: list them with their quality figures (viewers and up), promote a
version or roll back to the one served before (admins).

The running pipeline re-reads the registry every few seconds (``FINSECURE_ML_RELOAD_INTERVAL_S``), so a
promotion or a rollback is served without a restart, exactly as with ``finsecure models promote``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import Field
from sqlalchemy import select

from finsecure.audit import service as audit_service
from finsecure.auth.deps import AdminUser, ViewerUser, user_actor
from finsecure.core.deps import DbSession
from finsecure.core.errors import Conflict, NotFound, error_responses
from finsecure.core.schemas import ApiModel
from finsecure.ml import registry
from finsecure.model.models import ModelStage, ModelVersion

router = APIRouter(prefix="/models", tags=["models"])

ModelName = Annotated[str, Path(min_length=1, max_length=128)]
Version = Annotated[int, Path(ge=1, le=1_000_000)]


class ModelVersionRead(ApiModel):
    name: str
    version: int
    kind: str
    domain: str
    stage: ModelStage
    live: bool = Field(description="This version scores events now")
    metrics: dict[str, Any] = Field(description="Quality on held-out data, as measured at training")
    threshold: float = Field(description="Scores at or above it count as suspicious")
    created_at: dt.datetime
    promoted_at: dt.datetime | None


class ModelRead(ApiModel):
    name: str
    kind: str
    domain: str
    live_version: int | None
    can_roll_back: bool = Field(description="An earlier promoted version exists to go back to")
    versions: list[ModelVersionRead] = Field(description="Newest first")


class ModelList(ApiModel):
    items: list[ModelRead]
    total: int


def _version(row: ModelVersion) -> ModelVersionRead:
    return ModelVersionRead(
        name=row.name,
        version=row.version,
        kind=row.kind,
        domain=row.domain,
        stage=row.stage,
        live=row.stage == ModelStage.production,
        metrics=row.metrics if isinstance(row.metrics, dict) else {},
        threshold=row.threshold,
        created_at=row.created_at,
        promoted_at=row.promoted_at,
    )


def _model(rows: list[ModelVersion]) -> ModelRead:
    live = next((row for row in rows if row.stage == ModelStage.production), None)
    earlier = [row for row in rows if row.promoted_at is not None and row is not live]
    return ModelRead(
        name=rows[0].name,
        kind=rows[0].kind,
        domain=rows[0].domain,
        live_version=live.version if live is not None else None,
        can_roll_back=live is not None and bool(earlier),
        versions=[_version(row) for row in rows],
    )


def _audit_view(row: ModelVersion) -> dict[str, Any]:
    return {"name": row.name, "version": row.version, "stage": row.stage.value}


def _live(db_session: DbSession, name: str) -> ModelVersion | None:
    return db_session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.stage == ModelStage.production)
    )


@router.get(
    "",
    response_model=ModelList,
    summary="Registered models, each with its versions (newest first) and which one is live",
    responses=error_responses(401, 403, 422),
)
def list_models(_viewer: ViewerUser, db_session: DbSession) -> ModelList:
    by_name: dict[str, list[ModelVersion]] = {}
    for row in registry.get_all(db_session=db_session):
        by_name.setdefault(row.name, []).append(row)
    items = [_model(rows) for _, rows in sorted(by_name.items())]
    return ModelList(items=items, total=len(items))


@router.post(
    "/{name}/{version}/promote",
    response_model=ModelRead,
    summary="Serve this version (the one served before is archived); the pipeline follows within seconds",
    responses=error_responses(401, 403, 404, 409, 422),
)
def promote_model(
    name: ModelName, version: Version, user: AdminUser, request: Request, db_session: DbSession
) -> ModelRead:
    row = registry.get_or_raise(db_session=db_session, name=name, version=version)
    if row.stage == ModelStage.production:
        raise Conflict(f"{name} v{version} is already live")
    before = _live(db_session, name)
    before_view = _audit_view(before) if before is not None else None
    row = registry.promote(db_session=db_session, name=name, version=version)
    audit_service.record(
        db_session=db_session, actor=user_actor(user, request), action="model.promote",
        target_type="model", target_id=f"{name}:v{version}", before=before_view, after=_audit_view(row),
    )  # fmt: skip
    db_session.commit()
    return _model(registry.get_all(db_session=db_session, name=name))


@router.post(
    "/{name}/rollback",
    response_model=ModelRead,
    summary="Go back to the version served before the live one (the live one is archived)",
    responses=error_responses(401, 403, 404, 409, 422),
)
def rollback_model(name: ModelName, user: AdminUser, request: Request, db_session: DbSession) -> ModelRead:
    rows = registry.get_all(db_session=db_session, name=name)
    if not rows:
        raise NotFound(f"There is no model named {name!r}")
    current = _live(db_session, name)
    if current is None:
        raise Conflict(f"{name} has no live version to roll back from")
    before_view = _audit_view(current)
    row = registry.rollback(db_session=db_session, name=name)
    audit_service.record(
        db_session=db_session, actor=user_actor(user, request), action="model.rollback",
        target_type="model", target_id=f"{name}:v{row.version}", before=before_view, after=_audit_view(row),
    )  # fmt: skip
    db_session.commit()
    return _model(registry.get_all(db_session=db_session, name=name))
