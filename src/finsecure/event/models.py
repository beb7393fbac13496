"""Scored events kept in the database (raw events live in the Parquet lake)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow


class StoredEvent(Base):
    """A scored event: the canonical header as columns for filtering, the rest as JSON."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "domain", "ts"),
        Index(None, "user_id", "ts"),
        Index(None, "account_id", "ts"),
        Index(None, "card_id", "ts"),
        Index(None, "src_ip", "ts"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    ts: Mapped[dt.datetime] = mapped_column(index=True)
    domain: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    user_id: Mapped[str | None] = mapped_column(String(128))
    account_id: Mapped[str | None] = mapped_column(String(128))
    card_id: Mapped[str | None] = mapped_column(String(128))
    device_id: Mapped[str | None] = mapped_column(String(128))
    src_ip: Mapped[str | None] = mapped_column(String(64))
    dst_ip: Mapped[str | None] = mapped_column(String(64))
    merchant_id: Mapped[str | None] = mapped_column(String(128))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    country: Mapped[str | None] = mapped_column(String(2))
    score: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    explanation: Mapped[dict[str, Any] | None]
    payload: Mapped[dict[str, Any]]
    ingested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
