"""Incidents: list and read them (viewers and up), run the workflow on them (analysts and up)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from finsecure.alert.schemas import AlertRead
from finsecure.auth.deps import AnalystUser, ViewerUser, user_actor
from finsecure.core.deps import DbSession, Page
from finsecure.core.enums import Severity
from finsecure.core.errors import NotFound, error_responses
from finsecure.core.schemas import MAX_ROW_ID, RowId
from finsecure.event.schemas import Domain
from finsecure.incident import service as incident_service
from finsecure.incident.models import Incident, IncidentStatus
from finsecure.incident.schemas import (
    IncidentDetail,
    IncidentPage,
    IncidentRead,
    IncidentSort,
    IncidentUpdate,
)

router = APIRouter(prefix="/incidents", tags=["incidents"])

RowIdQuery = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]


def _detail(db_session: DbSession, incident: Incident) -> IncidentDetail:
    alerts = incident_service.alerts_of(db_session=db_session, incident_id=incident.id)
    return IncidentDetail.model_validate(
        {
            **IncidentRead.model_validate(incident).model_dump(),
            "alerts": [AlertRead.model_validate(a) for a in alerts],
            "timeline": incident_service.timeline(
                db_session=db_session, incident_id=incident.id, alerts=alerts
            ),
        }
    )


@router.get(
    "",
    response_model=IncidentPage,
    summary="Incidents, filtered and sorted (latest activity first by default)",
    responses=error_responses(400, 401, 403, 422),
)
def list_incidents(
    _viewer: ViewerUser,
    db_session: DbSession,
    page: Page,
    status: IncidentStatus | None = None,
    severity: Severity | None = None,
    domain: Domain | None = None,
    assignee_id: RowIdQuery = None,
    include_merged: bool = False,
    sort: IncidentSort = "-last_seen",
) -> IncidentPage:
    incidents, total = incident_service.get_all(
        db_session=db_session,
        offset=page.offset,
        limit=page.size,
        status=status,
        severity=severity,
        domain=domain.value if domain else None,
        assignee_id=assignee_id,
        include_merged=include_merged,
        sort=sort,
    )
    return IncidentPage(
        items=[IncidentRead.model_validate(i) for i in incidents], total=total, page=page.page, size=page.size
    )


@router.get(
    "/{incident_id}",
    response_model=IncidentDetail,
    summary="One incident with its alerts and timeline",
    responses=error_responses(401, 403, 404, 422),
)
def read_incident(incident_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> IncidentDetail:
    incident = incident_service.get(db_session=db_session, incident_id=incident_id)
    if incident is None:
        raise NotFound("There is no incident with that id")
    return _detail(db_session, incident)


@router.patch(
    "/{incident_id}",
    response_model=IncidentDetail,
    summary="Assign an incident, move it along the workflow, record what it was",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def update_incident(
    incident_id: RowId, body: IncidentUpdate, user: AnalystUser, request: Request, db_session: DbSession
) -> IncidentDetail:
    incident = incident_service.get(db_session=db_session, incident_id=incident_id)
    if incident is None:
        raise NotFound("There is no incident with that id")
    incident = incident_service.update(
        db_session=db_session, incident=incident, incident_in=body, actor=user_actor(user, request)
    )
    return _detail(db_session, incident)
