"""Time series of platform metrics (throughput, lag, dead letters) kept for the dashboard."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow


class SystemMetric(Base):
    __tablename__ = "system_metrics"
    __table_args__ = (Index(None, "name", "ts"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(default=utcnow)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    labels: Mapped[dict[str, Any]]
