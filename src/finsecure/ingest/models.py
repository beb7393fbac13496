"""Dead letters kept in the database: raw records that could not be normalised, with the reason."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, BigIntPK, utcnow


class DeadLetter(Base):
    """One rejected record (see :mod:`finsecure.ingest.deadletter`); the lake keeps a copy too."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(128))
    offset: Mapped[int | None] = mapped_column(BigInteger)
    """Line, row or message number in the source, when the source has one."""
    domain: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    """The record as received, truncated (see ``MAX_RAW_CHARS``)."""
