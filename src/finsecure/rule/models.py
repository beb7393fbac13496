"""The rules table."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, utcnow
from finsecure.core.enums import Severity, SeverityType, str_enum


class RuleKind(enum.StrEnum):
    match = "match"
    threshold = "threshold"
    sequence = "sequence"
    model = "model"


class Rule(Base):
    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(128), unique=True)
    title: Mapped[str] = mapped_column(String(256), unique=True)
    kind: Mapped[RuleKind] = mapped_column(str_enum(RuleKind, "rule_kind"))
    domain: Mapped[str] = mapped_column(String(16))
    severity: Mapped[Severity] = mapped_column(SeverityType)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="stable")
    version: Mapped[int] = mapped_column(Integer, default=1)
    source_path: Mapped[str | None] = mapped_column(String(512))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
