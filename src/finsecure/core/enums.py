"""Small vocabularies shared by several domains."""

from __future__ import annotations

import enum

from sqlalchemy import Enum


class Severity(enum.StrEnum):
    """How bad a finding is, in the order an analyst would triage it."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


def str_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    """A portable enum column: a short string with a CHECK constraint, not a native type."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=24,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


SeverityType = str_enum(Severity, "severity")
