"""Audit log bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any

from finsecure.core.schemas import ApiModel


class AuditRead(ApiModel):
    id: int
    ts: dt.datetime
    actor_user_id: int | None
    actor: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    ip: str | None


class AuditPage(ApiModel):
    items: list[AuditRead]
    total: int
    page: int
    size: int
