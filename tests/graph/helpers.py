"""Small canonical frames for graph tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from finsecure.pipeline.engine import canonical_polars_schema

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A frame from dicts, every row with a ``ts`` (default T0)."""
    filled = [{"ts": T0, **row} for row in rows]
    columns = sorted({k for row in filled for k in row})
    data = {c: [row.get(c) for row in filled] for c in columns}
    schema = {c: (pl.Datetime("us", "UTC") if c == "ts" else None) for c in columns}
    return pl.DataFrame(data, schema_overrides={c: t for c, t in schema.items() if t is not None})


def canonical(domain: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows as a canonical frame of ``domain`` (every canonical column, in order; the rest null)."""
    schema = canonical_polars_schema(domain)
    filled = [
        {"event_id": f"e{i}", "source": "test", "tenant": "default", "domain": domain, "ts": T0, **row}
        for i, row in enumerate(rows)
    ]
    return pl.DataFrame([{c: row.get(c) for c in schema} for row in filled], schema=schema)
