"""Incidents and their links to alerts."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow
from finsecure.core.enums import Severity, SeverityType, str_enum


class IncidentStatus(enum.StrEnum):
    """The workflow: new → triaged → investigating → resolved (with a :class:`Disposition`).

    ``open`` and ``closed`` are aliases of ``new`` and ``resolved`` kept for code written before the
    workflow was renamed (migration 0003 moved the stored values the same way).

    >>> IncidentStatus.open is IncidentStatus.new
    True
    >>> [s.value for s in IncidentStatus]
    ['new', 'triaged', 'investigating', 'resolved']
    """

    new = "new"
    triaged = "triaged"
    investigating = "investigating"
    resolved = "resolved"
    open = "new"  # an alias, not a member
    closed = "resolved"  # an alias, not a member


class Disposition(enum.StrEnum):
    true_positive = "true_positive"
    false_positive = "false_positive"
    benign = "benign"


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    correlation_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    title: Mapped[str] = mapped_column(String(256))
    summary: Mapped[str] = mapped_column(Text, default="")
    severity: Mapped[Severity] = mapped_column(SeverityType)
    status: Mapped[IncidentStatus] = mapped_column(
        str_enum(IncidentStatus, "incident_status"), default=IncidentStatus.new, index=True
    )
    disposition: Mapped[Disposition | None] = mapped_column(str_enum(Disposition, "disposition"))
    risk: Mapped[float] = mapped_column(Float, default=0.0)
    domains: Mapped[list[Any]]
    labels: Mapped[list[Any]]
    evidence: Mapped[dict[str, Any]]
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id", ondelete="SET NULL"))
    first_seen: Mapped[dt.datetime]
    last_seen: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    closed_at: Mapped[dt.datetime | None]


class IncidentAlert(Base):
    """Which alerts make up which incident."""

    __tablename__ = "incident_alerts"

    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True)
    alert_id: Mapped[int] = mapped_column(
        ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IncidentNote(Base):
    """An analyst's note on an incident (append-only: notes are evidence)."""

    __tablename__ = "incident_notes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
