"""The audit log table."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow


class AuditEntry(Base):
    """One state change: who (user or API key), what (action, target), when, before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "target_type", "target_id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    ip: Mapped[str | None] = mapped_column(String(64))
