"""Incident bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from finsecure.alert.schemas import AlertRead
from finsecure.core.enums import Severity
from finsecure.core.schemas import MAX_ROW_ID, ApiModel
from finsecure.incident.models import Disposition, IncidentStatus

#: How a list of incidents may be ordered (a leading ``-`` means newest/highest first).
IncidentSort = Literal["-last_seen", "last_seen", "-created_at", "created_at", "-risk", "risk"]


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
    """One moment in an incident's life: an alert seen, or an analyst's change."""

    ts: dt.datetime
    kind: Literal["alert", "change"]
    text: str
    alert_id: int | None = None
    actor: str | None = None


class IncidentDetail(IncidentRead):
    alerts: list[AlertRead]
    timeline: list[TimelineEntry]


class IncidentUpdate(ApiModel):
    """Assign, move along the workflow (open → investigating → contained → resolved or closed), and say
    what it was. Resolving or closing needs a disposition."""

    status: IncidentStatus | None = None
    disposition: Disposition | None = None
    assignee_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID, description="User to assign")
    unassign: bool = Field(default=False, description="Remove the assignee")
