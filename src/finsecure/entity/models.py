"""Graph nodes and edges as stored in the database."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow


class Entity(Base):
    __tablename__ = "entities"
    __table_args__ = (UniqueConstraint("entity_type", "key"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str | None] = mapped_column(String(256))
    risk: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    blocked: Mapped[bool] = mapped_column(default=False)
    attributes: Mapped[dict[str, Any]]
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class Edge(Base):
    """A link seen in events: card used at terminal, user logged in from device, ..."""

    __tablename__ = "edges"
    __table_args__ = (UniqueConstraint("src_id", "dst_id", "relation"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    src_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    dst_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), index=True)
    relation: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, default=1)
    amount_sum: Mapped[float] = mapped_column(Float, default=0.0)
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
