"""Alerts: list them (viewers and up), acknowledge or close them (analysts and up)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from finsecure.alert import service as alert_service
from finsecure.alert import suppression as suppression_service
from finsecure.alert.models import AlertStatus
from finsecure.alert.schemas import (
    AlertExplanation,
    AlertPage,
    AlertRead,
    AlertSort,
    AlertUpdate,
    SuppressionCreate,
    SuppressionPage,
    SuppressionRead,
    SuppressionSuggestionList,
)
from finsecure.auth.deps import AnalystUser, ViewerUser, user_actor
from finsecure.core.deps import DbSession, Page
from finsecure.core.enums import Severity
from finsecure.core.errors import NotFound, error_responses
from finsecure.core.schemas import RowId
from finsecure.event.schemas import Domain

router = APIRouter(prefix="/alerts", tags=["alerts"])
suppressions_router = APIRouter(prefix="/suppressions", tags=["alerts"])


@router.get(
    "",
    response_model=AlertPage,
    summary="Alerts, filtered and sorted (newest activity first by default)",
    responses=error_responses(400, 401, 403, 422),
)
def list_alerts(
    _viewer: ViewerUser,
    db_session: DbSession,
    page: Page,
    status: AlertStatus | None = None,
    severity: Severity | None = None,
    rule_id: Annotated[str | None, Query(max_length=128)] = None,
    entity_type: Annotated[str | None, Query(max_length=32)] = None,
    entity_id: Annotated[str | None, Query(max_length=128)] = None,
    domain: Domain | None = None,
    sort: AlertSort = "-last_seen",
) -> AlertPage:
    alerts, total = alert_service.get_all(
        db_session=db_session,
        offset=page.offset,
        limit=page.size,
        status=status,
        severity=severity,
        rule_id=rule_id,
        entity_type=entity_type,
        entity_id=entity_id,
        domain=domain.value if domain else None,
        sort=sort,
    )
    return AlertPage(
        items=[AlertRead.model_validate(a) for a in alerts], total=total, page=page.page, size=page.size
    )


@router.get(
    "/{alert_id}",
    response_model=AlertRead,
    summary="One alert",
    responses=error_responses(401, 403, 404, 422),
)
def read_alert(alert_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> AlertRead:
    alert = alert_service.get(db_session=db_session, alert_id=alert_id)
    if alert is None:
        raise NotFound("There is no alert with that id")
    return AlertRead.model_validate(alert)


@router.get(
    "/{alert_id}/explanation",
    response_model=AlertExplanation,
    summary="Why an alert fired: rule hits, matched events, feature values and model contributions",
    responses=error_responses(401, 403, 404, 422),
)
def explain_alert(alert_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> AlertExplanation:
    alert = alert_service.get(db_session=db_session, alert_id=alert_id)
    if alert is None:
        raise NotFound("There is no alert with that id")
    return alert_service.explain(db_session=db_session, alert=alert)


@router.patch(
    "/{alert_id}",
    response_model=AlertRead,
    summary="Acknowledge or close an alert",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def update_alert(
    alert_id: RowId, body: AlertUpdate, user: AnalystUser, request: Request, db_session: DbSession
) -> AlertRead:
    alert = alert_service.get(db_session=db_session, alert_id=alert_id)
    if alert is None:
        raise NotFound("There is no alert with that id")
    alert = alert_service.update(
        db_session=db_session, alert=alert, alert_in=body, actor=user_actor(user, request)
    )
    return AlertRead.model_validate(alert)


@suppressions_router.get(
    "",
    response_model=SuppressionPage,
    summary="Alert suppressions, soonest to expire first (active ones unless include_expired)",
    responses=error_responses(400, 401, 403, 422),
)
def list_suppressions(
    _analyst: AnalystUser, db_session: DbSession, page: Page, include_expired: bool = False
) -> SuppressionPage:
    items, total = suppression_service.get_all(
        db_session=db_session, offset=page.offset, limit=page.size, include_expired=include_expired
    )
    return SuppressionPage(
        items=[SuppressionRead.model_validate(s) for s in items], total=total, page=page.page, size=page.size
    )


@suppressions_router.post(
    "",
    response_model=SuppressionRead,
    status_code=201,
    summary="Stop alerting on a rule and/or an entity until the suppression expires",
    responses=error_responses(400, 401, 403, 413, 422),
)
def create_suppression(
    body: SuppressionCreate, user: AnalystUser, request: Request, db_session: DbSession
) -> SuppressionRead:
    suppression = suppression_service.create(
        db_session=db_session, suppression_in=body, actor=user_actor(user, request)
    )
    return SuppressionRead.model_validate(suppression)


@suppressions_router.get(
    "/suggestions",
    response_model=SuppressionSuggestionList,
    summary="Rules and entities that analysts keep closing as false positive",
    responses=error_responses(401, 403, 422),
)
def suggest_suppressions(
    _analyst: AnalystUser,
    db_session: DbSession,
    days: Annotated[int, Query(ge=1, le=365)] = 30,
    min_incidents: Annotated[int, Query(ge=1, le=1000)] = 1,
) -> SuppressionSuggestionList:
    return SuppressionSuggestionList(
        items=suppression_service.suggestions(db_session=db_session, days=days, min_incidents=min_incidents)
    )


@suppressions_router.delete(
    "/{suppression_id}",
    response_model=SuppressionRead,
    summary="Remove a suppression: alerting resumes",
    responses=error_responses(401, 403, 404, 422),
)
def delete_suppression(
    suppression_id: RowId, user: AnalystUser, request: Request, db_session: DbSession
) -> SuppressionRead:
    suppression = suppression_service.get(db_session=db_session, suppression_id=suppression_id)
    if suppression is None:
        raise NotFound("There is no suppression with that id")
    read = SuppressionRead.model_validate(suppression)
    suppression_service.delete(
        db_session=db_session, suppression=suppression, actor=user_actor(user, request)
    )
    return read
