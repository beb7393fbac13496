"""Incidents: list and read them (viewers and up), run the workflow on them (analysts and up)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from finsecure.alert.schemas import AlertRead
from finsecure.auth.deps import AnalystUser, ViewerUser, user_actor
from finsecure.core.deps import DbSession, Page
from finsecure.core.enums import Severity
from finsecure.core.errors import error_responses
from finsecure.core.schemas import MAX_ROW_ID, RowId
from finsecure.event.schemas import Domain
from finsecure.incident import labels as incident_labels
from finsecure.incident import service as incident_service
from finsecure.incident.models import Incident, IncidentStatus
from finsecure.incident.schemas import (
    BulkResult,
    BulkUpdate,
    IncidentDetail,
    IncidentExport,
    IncidentPage,
    IncidentRead,
    IncidentSort,
    IncidentUpdate,
    MergeRequest,
    NoteCreate,
    NoteList,
    NoteRead,
    SplitRequest,
    Timeline,
    TrainingLabelPage,
    TrainingLabelRead,
)

router = APIRouter(prefix="/incidents", tags=["incidents"])
labels_router = APIRouter(prefix="/labels", tags=["incidents"])

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
    label: Annotated[str | None, Query(max_length=64)] = None,
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
        label=label,
        include_merged=include_merged,
        sort=sort,
    )
    return IncidentPage(
        items=[IncidentRead.model_validate(i) for i in incidents], total=total, page=page.page, size=page.size
    )


@router.post(
    "/bulk",
    response_model=BulkResult,
    summary="Move many incidents to one status at once (each succeeds or fails on its own)",
    responses=error_responses(400, 401, 403, 413, 422),
)
def bulk_update_incidents(
    body: BulkUpdate, user: AnalystUser, request: Request, db_session: DbSession
) -> BulkResult:
    return incident_service.bulk_update(db_session=db_session, bulk_in=body, actor=user_actor(user, request))


@router.get(
    "/{incident_id}",
    response_model=IncidentDetail,
    summary="One incident with its alerts and timeline",
    responses=error_responses(401, 403, 404, 422),
)
def read_incident(incident_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> IncidentDetail:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    return _detail(db_session, incident)


@router.patch(
    "/{incident_id}",
    response_model=IncidentDetail,
    summary="Assign an incident, move it along the workflow, record what it was, label it",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def update_incident(
    incident_id: RowId, body: IncidentUpdate, user: AnalystUser, request: Request, db_session: DbSession
) -> IncidentDetail:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    incident = incident_service.update(
        db_session=db_session, incident=incident, incident_in=body, actor=user_actor(user, request)
    )
    return _detail(db_session, incident)


@router.get(
    "/{incident_id}/notes",
    response_model=NoteList,
    summary="Analysts' notes on an incident, oldest first",
    responses=error_responses(401, 403, 404, 422),
)
def list_notes(incident_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> NoteList:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    notes = incident_service.notes_of(db_session=db_session, incident_id=incident.id)
    return NoteList(items=[NoteRead.model_validate(n) for n in notes])


@router.post(
    "/{incident_id}/notes",
    response_model=NoteRead,
    status_code=201,
    summary="Add a note to an incident",
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def add_note(
    incident_id: RowId, body: NoteCreate, user: AnalystUser, request: Request, db_session: DbSession
) -> NoteRead:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    note = incident_service.add_note(
        db_session=db_session, incident=incident, text=body.text, actor=user_actor(user, request)
    )
    return NoteRead.model_validate(note)


@router.post(
    "/{incident_id}/merge",
    response_model=IncidentDetail,
    summary="Fold other incidents into this one",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def merge_incidents(
    incident_id: RowId, body: MergeRequest, user: AnalystUser, request: Request, db_session: DbSession
) -> IncidentDetail:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    incident = incident_service.merge(
        db_session=db_session,
        incident=incident,
        other_ids=body.incident_ids,
        actor=user_actor(user, request),
    )
    return _detail(db_session, incident)


@router.post(
    "/{incident_id}/split",
    response_model=IncidentDetail,
    status_code=201,
    summary="Move some alerts of this incident into a new incident (the new one is returned)",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def split_incident(
    incident_id: RowId, body: SplitRequest, user: AnalystUser, request: Request, db_session: DbSession
) -> IncidentDetail:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    new = incident_service.split(
        db_session=db_session, incident=incident, alert_ids=body.alert_ids, actor=user_actor(user, request)
    )
    return _detail(db_session, new)


@router.get(
    "/{incident_id}/timeline",
    response_model=Timeline,
    summary="Events, alerts, changes, notes and response actions of an incident, in time order",
    responses=error_responses(401, 403, 404, 422),
)
def read_timeline(incident_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> Timeline:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    alerts = incident_service.alerts_of(db_session=db_session, incident_id=incident.id)
    return Timeline(
        items=incident_service.timeline(db_session=db_session, incident_id=incident.id, alerts=alerts)
    )


@router.get(
    "/{incident_id}/export",
    response_model=IncidentExport,
    summary="The evidence bundle of an incident (JSON, with a SHA-256 of its content)",
    responses=error_responses(401, 403, 404, 422),
)
def export_incident(
    incident_id: RowId, user: ViewerUser, request: Request, response: Response, db_session: DbSession
) -> IncidentExport:
    incident = incident_service.get_or_raise(db_session=db_session, incident_id=incident_id)
    bundle = incident_service.export(
        db_session=db_session, incident=incident, actor=user_actor(user, request)
    )
    response.headers["Content-Disposition"] = f'attachment; filename="incident-{incident.id}.json"'
    return bundle


@labels_router.get(
    "",
    response_model=TrainingLabelPage,
    summary="Analysts' verdicts as training labels: one row per event of a resolved incident",
    responses=error_responses(400, 401, 403, 422),
)
def list_labels(_viewer: ViewerUser, db_session: DbSession, page: Page) -> TrainingLabelPage:
    rows = incident_labels.training_labels(db_session)
    items = rows[page.offset : page.offset + page.size]
    return TrainingLabelPage(
        items=[TrainingLabelRead.model_validate(r) for r in items],
        total=len(rows),
        page=page.page,
        size=page.size,
    )
