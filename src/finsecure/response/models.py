"""The response_actions and blocklist tables."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow
from finsecure.core.enums import str_enum


class ActionStatus(enum.StrEnum):
    """Where an action is. ``pending`` waits for the worker (or its next retry); ``awaiting_approval``
    waits for a person; ``dry_run`` was only described; ``dead_letter`` failed every attempt."""

    pending = "pending"
    awaiting_approval = "awaiting_approval"
    succeeded = "succeeded"
    failed = "failed"
    dead_letter = "dead_letter"
    dry_run = "dry_run"
    cancelled = "cancelled"


#: Statuses an action never leaves.
FINAL_STATUSES = frozenset(
    {
        ActionStatus.succeeded,
        ActionStatus.failed,
        ActionStatus.dead_letter,
        ActionStatus.dry_run,
        ActionStatus.cancelled,
    }
)


class ResponseAction(Base):
    __tablename__ = "response_actions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    action_type: Mapped[str] = mapped_column(String(32))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[ActionStatus] = mapped_column(
        str_enum(ActionStatus, "action_status"), default=ActionStatus.pending, index=True
    )
    params: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    incident_id: Mapped[int | None] = mapped_column(
        ForeignKey("incidents.id", ondelete="SET NULL"), index=True
    )
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None]
    playbook_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None]
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[dt.datetime | None]


class BlockEntry(Base):
    """An entity that enforcement points should refuse until ``expires_at`` (never, when null)."""

    __tablename__ = "blocklist"
    __table_args__ = (UniqueConstraint("entity_type", "entity_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    action_id: Mapped[int | None] = mapped_column(ForeignKey("response_actions.id", ondelete="SET NULL"))
