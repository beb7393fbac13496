"""Response bodies: actions, block list entries and playbooks."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, model_validator

from finsecure.core.schemas import MAX_ROW_ID, ApiModel
from finsecure.response.models import ActionStatus

#: Entity types a block can name (the event columns enforcement points and the pipeline know).
BlockableType = Literal[
    "user_id", "account_id", "card_id", "device_id", "src_ip", "merchant_id", "terminal_id", "payee_id"
]
#: Actions a person may start by hand. Notifications go only to endpoints that admins put in playbooks,
#: so that the API cannot be used to make the server call arbitrary addresses.
ManualActionType = Literal["block", "open_incident", "attach_incident"]


class ActionRead(ApiModel):
    id: int
    idempotency_key: str
    action_type: str
    target_type: str
    target_id: str
    status: ActionStatus
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    playbook_id: str | None
    attempts: int
    next_attempt_at: dt.datetime | None
    approved_by: str | None
    approved_at: dt.datetime | None
    incident_id: int | None
    alert_id: int | None
    created_at: dt.datetime
    completed_at: dt.datetime | None


class ActionPage(ApiModel):
    items: list[ActionRead]
    total: int
    page: int
    size: int


class ActionCreate(ApiModel):
    """Start an action by hand on an alert, an incident or an entity."""

    action_type: ManualActionType
    alert_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID)
    incident_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID)
    entity_type: BlockableType | None = None
    entity_id: str | None = Field(default=None, min_length=1, max_length=128)
    ttl_hours: float = Field(default=24.0, gt=0, le=24 * 365, description="For block: how long")
    reason: str = Field(default="", max_length=2000)
    dry_run: bool = Field(default=False, description="Describe what would happen instead of doing it")

    @model_validator(mode="after")
    def _one_target(self) -> ActionCreate:
        if self.action_type == "block" and (self.entity_type is None or self.entity_id is None):
            raise ValueError("block needs entity_type and entity_id")
        if self.action_type != "block" and self.alert_id is None:
            raise ValueError(f"{self.action_type} needs an alert_id")
        if self.action_type == "attach_incident" and self.incident_id is None:
            raise ValueError("attach_incident needs an incident_id")
        return self


class BlockCreate(ApiModel):
    entity_type: BlockableType
    entity_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=3, max_length=2000)
    ttl_hours: float | None = Field(default=24.0, gt=0, le=24 * 365, description="null: until removed")


class BlockRead(ApiModel):
    id: int
    entity_type: str
    entity_id: str
    reason: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    action_id: int | None


class BlockPage(ApiModel):
    items: list[BlockRead]
    total: int
    page: int
    size: int


class PlaybookRead(ApiModel):
    id: str
    title: str
    description: str
    enabled: bool
    dry_run: bool
    on: str
    actions: list[str]
    source: str


class PlaybookList(ApiModel):
    items: list[PlaybookRead]
    errors: list[str] = Field(description="Files that could not be loaded, with the reason")
