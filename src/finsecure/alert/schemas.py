"""Alert bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, model_validator

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


#: Longest an analyst suppression may last: suppressions must come back up for review.
MAX_SUPPRESSION_HOURS = 90 * 24


class SuppressionCreate(ApiModel):
    """Stop alerting on a rule, an entity, or a rule for one entity, until it expires."""

    rule_id: str | None = Field(default=None, min_length=1, max_length=128)
    entity_type: str | None = Field(default=None, min_length=1, max_length=32)
    entity_id: str | None = Field(default=None, min_length=1, max_length=128)
    reason: str = Field(min_length=3, max_length=2000, description="Why, in plain words")
    expires_in_hours: float = Field(default=24.0, gt=0, le=MAX_SUPPRESSION_HOURS)

    @model_validator(mode="after")
    def _names_something(self) -> SuppressionCreate:
        if self.rule_id is None and self.entity_id is None:
            raise ValueError("name a rule_id, an entity_id or both")
        if self.entity_type is not None and self.entity_id is None:
            raise ValueError("entity_type needs an entity_id")
        return self


class SuppressionRead(ApiModel):
    id: int
    rule_id: str | None
    entity_type: str | None
    entity_id: str | None
    reason: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    hits: int
    last_hit_at: dt.datetime | None


class SuppressionPage(ApiModel):
    items: list[SuppressionRead]
    total: int
    page: int
    size: int


class SuppressionSuggestion(ApiModel):
    """A rule and entity that analysts keep marking as false positive."""

    rule_id: str
    entity_type: str | None
    entity_id: str | None
    false_positive_incidents: int
    alerts: int
    last_seen: dt.datetime
    text: str


class SuppressionSuggestionList(ApiModel):
    items: list[SuppressionSuggestion]


class MatchedEvent(ApiModel):
    """One event behind an alert, as stored with its score (raw events stay in the lake)."""

    event_id: str
    ts: dt.datetime
    domain: str
    source: str
    score: float
    model_explanation: dict[str, Any] | None = Field(description="What the models said, when they scored it")
    features: dict[str, Any] = Field(description="The per-entity feature values computed for this event")
    fields: dict[str, Any] = Field(description="The event's other fields (amount, country, action...)")


class AlertExplanation(ApiModel):
    """Why an alert fired: the rule's words, how often, about whom, and the events with their features
    and model contributions."""

    alert_id: int
    rule_id: str | None
    title: str
    severity: Severity
    summary: str
    rule_hits: int
    first_text: str | None
    latest_text: str | None
    entities: dict[str, Any]
    matched_events: list[MatchedEvent]
    events_not_stored: int = Field(description="Listed events below the storing threshold (in the lake only)")
