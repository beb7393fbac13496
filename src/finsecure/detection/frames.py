"""The columns a rule may read (canonical schema + feature columns) and frames built from sample events."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features.columns import domain_columns
from finsecure.features.config import FeatureConfig

__all__ = ["SAMPLE_TS", "domain_schema", "sample_frame"]

SAMPLE_TS = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
"""Time given to a sample event that has no ``ts`` (samples are relative to this moment)."""


@functools.cache
def domain_schema(domain: Domain) -> pl.Schema:
    """Canonical columns of ``domain`` followed by the feature columns the feature step adds.

    >>> domain_schema(Domain.payment)["card_id__count_1h"]
    Int32
    """
    columns: dict[str, pl.DataType] = dict(pl.DataFrame(arrow_schema(domain).empty_table()).schema)
    for info in domain_columns(domain, FeatureConfig()):
        columns.setdefault(info.name, info.dtype)
    return pl.Schema(columns)


def _value(name: str, dtype: pl.DataType, value: object) -> object:
    if value is None:
        return None
    if isinstance(dtype, pl.Datetime):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return SAMPLE_TS + dt.timedelta(seconds=value)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        if isinstance(value, dt.datetime):
            return value
        raise ValueError(f"{name}: expected a time or seconds after the sample start")
    return value


def sample_frame(
    domain: Domain, events: Sequence[Mapping[str, Any]], extra: Mapping[str, pl.DataType] | None = None
) -> pl.DataFrame:
    """A batch frame from sample events: missing columns are null, ``ts`` may be seconds after
    :data:`SAMPLE_TS`, ``event_id``/``source`` get defaults. ``extra`` adds columns beyond the schema
    (e.g. a model score).

    Raises
    ------
    ValueError
        For a key that is not a column of the domain, or a value of the wrong type.

    >>> sample_frame(Domain.auth, [{"user_id": "u1", "ts": 60}]).select("event_id", "ts").row(0)
    ('sample-0', datetime.datetime(2024, 5, 1, 12, 1, tzinfo=zoneinfo.ZoneInfo(key='UTC')))
    """
    schema = dict(domain_schema(domain))
    schema.update(extra or {})
    for index, event in enumerate(events):
        unknown = sorted(set(event) - set(schema))
        if unknown:
            raise ValueError(f"[{index}]: {', '.join(unknown)} is not a column of {domain.value} events")
    data: dict[str, list[object]] = {}
    for name, dtype in schema.items():
        data[name] = [_value(name, dtype, event.get(name)) for event in events]
    data["event_id"] = [event.get("event_id", f"sample-{i}") for i, event in enumerate(events)]
    data["ts"] = [value if value is not None else SAMPLE_TS for value in data["ts"]]
    data["domain"] = [domain.value] * len(events)
    data["source"] = [event.get("source", "sample") for event in events]
    data["tenant"] = [event.get("tenant", "default") for event in events]
    try:
        return pl.DataFrame(data, schema=schema)
    except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"sample values do not fit the {domain.value} columns: {exc}") from None
