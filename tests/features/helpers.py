"""Shared helpers for feature tests: compare the step with the reference, build small frames."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import polars as pl

from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features.config import FeatureConfig
from finsecure.features.reference import ReferenceFeatures
from finsecure.features.step import FeatureStep
from finsecure.pipeline.batch import Batch

EPOCH = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
FLOAT_TOLERANCE = 1e-9


def close(a: float, b: float) -> bool:
    """Within 1e-9, relative for values above 1 (sums of large amounts round differently per order)."""
    return abs(a - b) <= FLOAT_TOLERANCE * max(1.0, abs(a), abs(b))


def canonical_frame(domain: Domain, rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """A frame with the domain's canonical columns (all present, typed) holding ``rows``."""
    schema = pl.DataFrame(arrow_schema(domain).empty_table()).schema
    data = {name: [row.get(name) for row in rows] for name in schema}
    for index, row in enumerate(rows):
        data["event_id"][index] = row.get("event_id", f"e{index}")
        data["domain"][index] = domain.value
        data["source"][index] = "test"
        data["tenant"][index] = "default"
    return pl.DataFrame(data, schema=schema)


def assert_frames_match(got: pl.DataFrame, want: pl.DataFrame, context: str = "") -> None:
    """Same columns and types; counts and flags equal; floats equal within :data:`FLOAT_TOLERANCE`."""
    assert got.columns == want.columns, context
    assert got.schema == want.schema, context
    for name in got.columns:
        left, right = got[name].to_list(), want[name].to_list()
        for row, (a, b) in enumerate(zip(left, right, strict=True)):
            ok = close(a, b) if isinstance(a, float) and isinstance(b, float) else a == b
            assert ok, f"{context} column {name} row {row}: step {a!r} != reference {b!r}"
            if isinstance(a, float):
                assert not math.isnan(a), f"{context} column {name} row {row} is NaN (should be null)"


def run_both(
    config: FeatureConfig,
    domain: Domain,
    batches: Sequence[pl.DataFrame],
    *,
    restore_at: int | None = None,
    threads: int = 1,
) -> FeatureStep:
    """Feed ``batches`` to a step and to the reference and check every batch matches.

    With ``restore_at``, the step is snapshotted before that batch and replaced by a fresh step
    restored from the snapshot."""
    step = FeatureStep(config, threads=threads)
    reference = ReferenceFeatures(config)
    for number, frame in enumerate(batches):
        if number == restore_at:
            data = step.snapshot()
            step = FeatureStep(config, threads=threads)
            step.restore(data)
        out = step.process(Batch(domain, frame, source="test", seq=number)).frame
        assert out.select(frame.columns).equals(frame), "canonical columns changed"
        got = out.select(step.columns(domain))
        want = reference.process(domain, frame)
        assert_frames_match(got, want, f"batch {number}")
    return step
