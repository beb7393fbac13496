"""Registry metadata for ML model versions (artefacts live on disk as ONNX)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from finsecure.core.database import Base, utcnow
from finsecure.core.enums import str_enum


class ModelStage(enum.StrEnum):
    candidate = "candidate"
    production = "production"
    archived = "archived"


class ModelVersion(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    domain: Mapped[str] = mapped_column(String(16))
    stage: Mapped[ModelStage] = mapped_column(
        str_enum(ModelStage, "model_stage"), default=ModelStage.candidate
    )
    artefact_path: Mapped[str] = mapped_column(String(512))
    features: Mapped[list[Any]]
    metrics: Mapped[dict[str, Any]]
    threshold: Mapped[float] = mapped_column(Float, default=0.5)
    data_fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[dt.datetime | None]
