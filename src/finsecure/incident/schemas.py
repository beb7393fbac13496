"""Incident bodies."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from finsecure.alert.schemas import AlertRead
from finsecure.core.enums import Severity
from finsecure.core.schemas import MAX_ROW_ID, ApiModel
from finsecure.incident.models import Disposition, IncidentStatus

#: How a list of incidents may be ordered (a leading ``-`` means newest/highest first).
IncidentSort = Literal["-last_seen", "last_seen", "-created_at", "created_at", "-risk", "risk"]

#: A row id inside a body.
BodyRowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
#: A label an analyst puts on an incident ("card-testing", "insider"...).
Label = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w .:/-]+$")]


class IncidentRead(ApiModel):
    id: int
    title: str
    summary: str
    severity: Severity
    status: IncidentStatus
    disposition: Disposition | None
    risk: float
    domains: list[Any]
    labels: list[Any]
    evidence: dict[str, Any]
    assignee_id: int | None
    merged_into_id: int | None
    first_seen: dt.datetime
    last_seen: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    closed_at: dt.datetime | None


class IncidentPage(ApiModel):
    items: list[IncidentRead]
    total: int
    page: int
    size: int


class TimelineEntry(ApiModel):
    """One moment in an incident's life: an event, an alert, an analyst's change or note, a response."""

    ts: dt.datetime
    kind: Literal["event", "alert", "change", "note", "action"]
    text: str
    alert_id: int | None = None
    event_id: str | None = None
    action_id: int | None = None
    actor: str | None = None


class IncidentDetail(IncidentRead):
    alerts: list[AlertRead]
    timeline: list[TimelineEntry]


class IncidentUpdate(ApiModel):
    """Assign, move along the workflow (new → triaged → investigating → resolved), say what it was and
    label it. Resolving needs a disposition (true_positive, false_positive or benign)."""

    status: IncidentStatus | None = None
    disposition: Disposition | None = None
    assignee_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID, description="User to assign")
    unassign: bool = Field(default=False, description="Remove the assignee")
    labels: list[Label] | None = Field(default=None, max_length=20, description="Replaces the labels")


class NoteCreate(ApiModel):
    text: str = Field(min_length=1, max_length=10_000)


class NoteRead(ApiModel):
    id: int
    incident_id: int
    author: str
    text: str
    created_at: dt.datetime


class NoteList(ApiModel):
    items: list[NoteRead]


class Timeline(ApiModel):
    items: list[TimelineEntry]


class MergeRequest(ApiModel):
    """Fold these incidents into the one in the URL (their alerts move; they are marked merged)."""

    incident_ids: list[BodyRowId] = Field(min_length=1, max_length=50)


class SplitRequest(ApiModel):
    """Move these alerts of the incident in the URL into a new incident."""

    alert_ids: list[BodyRowId] = Field(min_length=1, max_length=500)


class BulkUpdate(ApiModel):
    """The same status change (and disposition) on many incidents at once."""

    incident_ids: list[BodyRowId] = Field(min_length=1, max_length=500)
    status: IncidentStatus
    disposition: Disposition | None = None


class BulkFailure(ApiModel):
    id: int
    code: str
    message: str


class BulkResult(ApiModel):
    updated: list[int]
    failed: list[BulkFailure]


class IncidentExport(ApiModel):
    """Everything known about an incident, for a case file or a regulator, with a digest of its content."""

    format: Literal["finsecure.incident-evidence/1"] = "finsecure.incident-evidence/1"
    generated_at: dt.datetime
    generated_by: str
    incident: IncidentRead
    alerts: list[AlertRead]
    events: list[dict[str, Any]]
    notes: list[NoteRead]
    actions: list[dict[str, Any]]
    timeline: list[TimelineEntry]
    sha256: str = Field(description="SHA-256 of the bundle's JSON without this field (sorted keys)")


class TrainingLabelRead(ApiModel):
    event_id: str
    label: int = Field(description="1 = fraud or attack (true positive), 0 = not (false positive, benign)")
    disposition: Disposition
    entity_type: str | None
    entity_id: str | None
    rule_id: str | None
    domain: str
    incident_id: int
    alert_id: int
    labelled_at: dt.datetime


class TrainingLabelPage(ApiModel):
    items: list[TrainingLabelRead]
    total: int
    page: int
    size: int
