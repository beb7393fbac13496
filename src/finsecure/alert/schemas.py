"""Alert bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field

from finsecure.alert.models import AlertStatus
from finsecure.core.enums import Severity
from finsecure.core.schemas import ApiModel

#: How a list of alerts may be ordered (a leading ``-`` means newest/highest first).
AlertSort = Literal["-last_seen", "last_seen", "-first_seen", "first_seen", "-severity", "severity", "-count"]


class AlertRead(ApiModel):
    id: int
    alert_key: str
    rule_id: str | None
    title: str
    description: str
    severity: Severity
    status: AlertStatus
    score: float
    domain: str
    entity_type: str | None
    entity_id: str | None
    event_ids: list[Any]
    explanation: dict[str, Any]
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    assignee_id: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


class AlertPage(ApiModel):
    items: list[AlertRead]
    total: int
    page: int
    size: int


class AlertUpdate(ApiModel):
    """An analyst's decision on an alert: acknowledge it (looking at it) or close it (done)."""

    status: Literal["acknowledged", "closed"] = Field(
        description="acknowledged or closed; a closed alert stays closed"
    )
