"""The sequence history must equal a slow one-event-at-a-time reference, across batches, disorder,
time-to-live, eviction and snapshot/restore."""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finsecure.event.schemas import Domain
from finsecure.features.history import (
    HistorySpec,
    HistoryStep,
    SequenceHistory,
    history_sequences,
    pop_sequences,
)
from finsecure.pipeline.batch import Batch

EPOCH = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def _frame(rows: list[tuple[str | None, int, float | None, bool | None]], domain: str) -> pl.DataFrame:
    """``(key, second, amount, flag)`` rows; auth batches have no ``amount`` column at all."""
    data: dict[str, Any] = {
        "ts": pl.Series(
            [EPOCH + dt.timedelta(seconds=s) for _, s, _, _ in rows], dtype=pl.Datetime("us", "UTC")
        ),
        "user_id": pl.Series([k for k, _, _, _ in rows], dtype=pl.String),
        "mfa_used": pl.Series([f for _, _, _, f in rows], dtype=pl.Boolean),
    }
    if domain == "payment":
        data["amount"] = pl.Series([a for _, _, a, _ in rows], dtype=pl.Float64)
    return pl.DataFrame(data)


def _reference(batches: list[tuple[str, pl.DataFrame]], spec: HistorySpec) -> list[np.ndarray]:
    """The rules of :mod:`finsecure.features.history`, literally, one event at a time, never evicting."""
    width = spec.steps - 1
    histories: dict[str, deque[list[float]]] = {}
    last: dict[str, int] = {}
    watermark: int | None = None
    results = []
    for domain, frame in batches:
        rows = frame.to_dicts()
        ts = [int((r["ts"] - EPOCH).total_seconds() * 1_000_000) for r in rows]
        floor = None if watermark is None else watermark - spec.max_delay_s * 1_000_000
        out = np.zeros((len(rows), spec.steps, len(spec.feature_names)), dtype=np.float32)
        for i in sorted(range(len(rows)), key=lambda i: ts[i]):
            vector = []
            for name in spec.features:
                value = rows[i].get(name)
                value = math.nan if value is None else float(value)
                if name in spec.log_features:
                    value = math.log1p(max(value, 0.0))
                vector.append(value)
            vector += [1.0 if domain == d else 0.0 for d in spec.domains] if spec.domain_flags else []
            out[i, -1] = vector
            key = rows[i][spec.key]
            if key is None or width == 0:
                continue
            t = ts[i] if floor is None else max(ts[i], floor)
            seen = last.get(key)
            if seen is None or t - seen > spec.ttl_s * 1_000_000:
                histories[key] = deque(maxlen=width)
            previous = list(histories[key])
            if previous:
                out[i, width - len(previous) : width] = previous
            histories[key].append(vector)
            if seen is None or t > seen:
                last[key] = t
        if ts:
            watermark = max(ts) if watermark is None else max(watermark, max(ts))
        results.append(out)
    return results


_ROW = st.tuples(
    st.sampled_from(["a", "b", "c", None]),
    st.integers(0, 400),
    st.one_of(st.none(), st.floats(-50, 5_000, width=32)),
    st.one_of(st.none(), st.booleans()),
)
_BATCHES = st.lists(
    st.tuples(st.sampled_from(["payment", "auth"]), st.lists(_ROW, max_size=12)), min_size=1, max_size=5
)


def _spec(steps: int, ttl_s: int, max_delay_s: int) -> HistorySpec:
    return HistorySpec(
        key="user_id",
        features=("amount", "mfa_used"),
        steps=steps,
        domains=("payment", "auth"),
        domain_flags=True,
        log_features=("amount",),
        ttl_s=ttl_s,
        max_delay_s=max_delay_s,
        evict_every_s=1,  # evict at every batch: eviction must never change a result
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=_BATCHES,
    steps=st.integers(1, 5),
    ttl_s=st.sampled_from([30, 10_000]),
    max_delay_s=st.sampled_from([0, 60]),
    split=st.integers(0, 5),
)
def test_update__equals_the_reference(
    batches: list[tuple[str, list[Any]]], steps: int, ttl_s: int, max_delay_s: int, split: int
) -> None:
    spec = _spec(steps, ttl_s, max_delay_s)
    frames = [(domain, _frame(rows, domain)) for domain, rows in batches]
    expected = _reference(frames, spec)
    history = SequenceHistory(spec)
    got = []
    for n, (domain, frame) in enumerate(frames):
        if n == split:  # a restart in the middle of the stream
            restored = SequenceHistory(spec)
            restored.restore(history.snapshot())
            history = restored
        got.append(history.update(frame, domain))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_update__a_late_event_is_appended_not_reinserted() -> None:
    spec = HistorySpec(key="user_id", features=("amount",), steps=3)
    first = _frame([("a", 100, 1.0, None), ("a", 200, 2.0, None)], "payment")
    late = _frame([("a", 150, 3.0, None), ("a", 300, 4.0, None)], "payment")
    history = SequenceHistory(spec)
    history.update(first)
    out = history.update(late)
    assert out[:, :, 0].tolist() == [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]


def test_update__an_idle_entity_starts_afresh_and_is_evicted() -> None:
    spec = HistorySpec(key="user_id", features=("amount",), steps=3, ttl_s=60, max_delay_s=0, evict_every_s=1)
    history = SequenceHistory(spec)
    history.update(_frame([("a", 0, 1.0, None), ("b", 0, 2.0, None)], "payment"))
    history.update(_frame([("b", 50, 3.0, None)], "payment"))
    assert len(history) == 2
    out = history.update(_frame([("a", 100, 5.0, None)], "payment"))
    assert out[0, :, 0].tolist() == [0.0, 0.0, 5.0]
    history.update(_frame([("a", 200, 6.0, None)], "payment"))
    assert len(history) == 2  # cut-off: watermark 100 - ttl 60 = 40; "b" was seen at 50
    history.update(_frame([("a", 210, 7.0, None)], "payment"))
    assert len(history) == 1  # cut-off 200 - 60 = 140: "b" is gone


def test_restore__refuses_another_spec_and_junk() -> None:
    history = SequenceHistory(HistorySpec(key="user_id", features=("amount",), steps=3))
    data = history.snapshot()
    other = SequenceHistory(HistorySpec(key="user_id", features=("amount",), steps=4))
    with pytest.raises(ValueError, match="different history spec"):
        other.restore(data)
    with pytest.raises(ValueError, match="not a history snapshot"):
        other.restore(b"junk")


def test_history_spec__refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="steps"):
        HistorySpec(key="k", features=("a",), steps=0)
    with pytest.raises(ValueError, match="log_features"):
        HistorySpec(key="k", features=("a",), log_features=("b",))
    with pytest.raises(ValueError, match="no features"):
        HistorySpec(key="k", features=())
    with pytest.raises(ValueError, match="not a valid Domain"):
        HistorySpec(key="k", features=("a",), domains=("payments",))


def test_process__appends_the_sequences_and_skips_other_domains() -> None:
    spec = HistorySpec(key="user_id", features=("amount",), steps=2, domains=("payment",))
    step = HistoryStep(spec)
    frame = _frame([("a", 0, 1.0, None), ("a", 5, 2.0, None)], "payment")
    out = step.process(Batch(Domain.payment, frame, "test"))
    assert out.frame.columns == [*frame.columns, "user_id__history"]
    batch, sequences = pop_sequences(out, spec)
    assert batch.frame.columns == frame.columns
    assert sequences[:, :, 0].tolist() == [[0.0, 1.0], [1.0, 2.0]]
    auth = Batch(Domain.auth, _frame([("a", 9, None, True)], "auth"), "test")
    assert step.process(auth) is auth
    with pytest.raises(KeyError, match="no history column"):
        pop_sequences(auth, spec)
    restored = HistoryStep(spec)
    restored.restore(step.snapshot())
    again = restored.process(Batch(Domain.payment, _frame([("a", 10, 3.0, None)], "payment"), "test"))
    assert pop_sequences(again, spec)[1][:, :, 0].tolist() == [[2.0, 3.0]]


def test_history_sequences__feeds_batches_in_order_like_the_step() -> None:
    spec = HistorySpec(key="user_id", features=("amount",), steps=2)
    frames = [
        ("payment", _frame([("a", 0, 1.0, None)], "payment")),
        ("payment", _frame([("a", 1, 2.0, None)], "payment")),
    ]
    second = history_sequences(frames, spec)[1]
    assert second[:, :, 0].tolist() == [[1.0, 2.0]]
