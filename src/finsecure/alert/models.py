"""The alerts table."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow
from finsecure.core.enums import Severity, SeverityType, str_enum


class AlertStatus(enum.StrEnum):
    new = "new"
    acknowledged = "acknowledged"
    closed = "closed"


class Alert(Base):
    """A finding. ``alert_key`` makes writes idempotent: the same finding updates, never duplicates."""

    __tablename__ = "alerts"
    __table_args__ = (Index(None, "entity_type", "entity_id"), Index(None, "status", "severity"))

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    alert_key: Mapped[str] = mapped_column(String(128), unique=True)
    rule_id: Mapped[str | None] = mapped_column(String(128), index=True)
    model_name: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    severity: Mapped[Severity] = mapped_column(SeverityType)
    status: Mapped[AlertStatus] = mapped_column(
        str_enum(AlertStatus, "alert_status"), default=AlertStatus.new
    )
    score: Mapped[float] = mapped_column(Float, default=0.0)
    domain: Mapped[str] = mapped_column(String(16))
    entity_type: Mapped[str | None] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(128))
    event_ids: Mapped[list[Any]]
    explanation: Mapped[dict[str, Any]]
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[dt.datetime] = mapped_column(index=True)
    last_seen: Mapped[dt.datetime]
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
