"""The NumPy/numba threshold evaluator against a brute force that follows the documented semantics to the
letter: retention of ``window + late`` behind the newest counted time (dropped in steps of a twentieth of
the window), no value for entities whose kept and new events cannot reach the threshold."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from finsecure.detection.rule import ThresholdSpec
from finsecure.detection.threshold import ThresholdEvaluator

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
Event = tuple[str | None, int, int | None, str | None]  # key, seconds, amount, value
EVENT = st.tuples(
    st.sampled_from(["a", "b", "c", None]),
    st.integers(0, 400),
    st.one_of(st.none(), st.integers(-3, 9)),
    st.sampled_from(["x", "y", "z", None]),
)


def _brute_force(batches: list[list[Event]], spec: ThresholdSpec, late_s: int) -> list[list[float | None]]:
    kept: list[Event] = []
    watermark: int | None = None
    evicted: int | None = None
    out: list[list[float | None]] = []
    for batch in batches:
        new = [e for e in batch if e[0] is not None and (spec.agg != "sum" or e[2] is not None)]
        if not new:
            out.append([None] * len(batch))
            continue
        kept += new
        negative = spec.agg == "sum" and any((e[2] or 0) < 0 for e in kept)
        values: list[float | None] = []
        for event in batch:
            key, ts, _, _ = event
            if event not in new:
                values.append(None)
                continue
            mine = [e for e in kept if e[0] == key]
            bound = sum(e[2] or 0 for e in mine) if spec.agg == "sum" else len(mine)
            if not negative and bound < spec.gte:
                values.append(None)
                continue
            window = [e for e in mine if ts - spec.window_s < e[1] <= ts]
            if spec.agg == "count":
                values.append(float(len(window)))
            elif spec.agg == "sum":
                values.append(float(sum(e[2] or 0 for e in window)))
            else:
                values.append(float(len({e[3] for e in window if e[3] is not None})))
        out.append(values)
        latest = max(e[1] for e in new)
        watermark = latest if watermark is None else max(watermark, latest)
        if evicted is None or watermark >= evicted + max(1, spec.window_s // 20):
            evicted = watermark
            kept = [e for e in kept if e[1] > watermark - spec.window_s - late_s]
    return out


def _frame(batch: list[Event]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "k": [e[0] for e in batch],
            "ts": [T0 + dt.timedelta(seconds=e[1]) for e in batch],
            "n": [e[2] for e in batch],
            "v": [e[3] for e in batch],
        },
        schema={"k": pl.String, "ts": pl.Datetime("us", "UTC"), "n": pl.Int64, "v": pl.String},
    )


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(EVENT, max_size=10), min_size=1, max_size=6),
    agg=st.sampled_from(["count", "sum", "distinct"]),
    gte=st.integers(1, 6),
    window_s=st.sampled_from([20, 60, 200]),
    late_s=st.sampled_from([0, 30, 10_000]),
    snapshot_at=st.integers(0, 6),
)
def test_threshold_evaluator__matches_brute_force_with_eviction_and_bounds(
    batches: list[list[Event]], agg: str, gte: int, window_s: int, late_s: int, snapshot_at: int
) -> None:
    field = {"count": None, "sum": "n", "distinct": "v"}[agg]
    spec = ThresholdSpec("k", window_s, agg, float(gte), field)  # type: ignore[arg-type]
    evaluator = ThresholdEvaluator(spec, late_s=late_s)
    expected = _brute_force(batches, spec, late_s)
    for number, (batch, want) in enumerate(zip(batches, expected, strict=True)):
        if number == snapshot_at:  # a restored evaluator carries on exactly (eviction steps aside)
            restored = ThresholdEvaluator(spec, late_s=late_s)
            restored.restore(evaluator.snapshot())
            assert restored.snapshot() == evaluator.snapshot()
        assert evaluator.evaluate(_frame(batch)).to_list() == want


def test_threshold_evaluator__condition_limits_counted_rows() -> None:
    spec = ThresholdSpec("k", 60, "count", 2.0)
    evaluator = ThresholdEvaluator(spec, pl.col("v") == "x")
    frame = _frame([("a", 1, None, "x"), ("a", 2, None, "y"), ("a", 3, None, "x"), ("b", 4, None, "x")])
    assert evaluator.evaluate(frame).to_list() == [1.0, None, 2.0, None]


def test_threshold_evaluator__many_entities_some_below_threshold_each_row_gets_its_own_count() -> None:
    # thirteen interleaved entities, some too small to reach the threshold: each counted row's value is
    # its own entity's count (a grouped rolling window once handed rows the values of other rows)
    rng = random.Random(1)
    times = sorted((rng.uniform(0, 3600), f"k{rng.randrange(13)}") for _ in range(277))
    events: list[Event] = [(key, 0, None, None) for _, key in times]
    frame = _frame(events).with_columns(
        ts=pl.Series([T0 + dt.timedelta(seconds=t) for t, _ in times], dtype=pl.Datetime("us", "UTC"))
    )
    spec = ThresholdSpec("k", 900, "count", 10.0)
    totals = Counter(key for _, key in times)
    expected = [
        float(sum(1 for t2, k2 in times if k2 == key and t - 900 < t2 <= t)) if totals[key] >= 10 else None
        for t, key in times
    ]
    assert ThresholdEvaluator(spec).evaluate(frame).to_list() == expected
