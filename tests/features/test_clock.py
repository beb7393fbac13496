"""Effective times: late rows within the tolerance keep their time, later ones move, idle ones restart."""

from __future__ import annotations

import numpy as np

from finsecure.features._numba import NONE_TS
from finsecure.features.clock import effective_times


def _run(
    times: list[int], keys: list[int], *, tolerance: int = 10, ttl: int = 1_000
) -> tuple[list[int], list[int | None], list[bool], list[int]]:
    last_seen = np.full(2, NONE_TS, dtype=np.int64)
    late = np.zeros(len(times), dtype=np.bool_)
    order = np.argsort(np.array(times), kind="stable").astype(np.int64)
    te, prev = effective_times(
        order,
        np.array(keys, dtype=np.int64),
        np.array(times, dtype=np.int64),
        last_seen,
        tolerance_us=tolerance,
        ttl_us=ttl,
        late=late,
    )
    return (
        te.tolist(),
        [None if p == NONE_TS else p for p in prev.tolist()],
        late.tolist(),
        last_seen.tolist(),
    )


def test_effective_times__in_order_rows_keep_their_time() -> None:
    te, prev, late, last = _run([5, 7, 7], [0, 0, 1])
    assert te == [5, 7, 7]
    assert prev == [None, 5, None]
    assert late == [False, False, False]
    assert last == [7, 7]


def test_effective_times__late_rows_by_entity() -> None:
    # Sorted order is 0, 1, 2, 3 by time; per-entity lateness only arises across batches, so simulate
    # with two calls sharing last_seen.
    last_seen = np.full(1, NONE_TS, dtype=np.int64)
    order = np.arange(1, dtype=np.int64)
    zero = np.zeros(1, dtype=np.int64)
    effective_times(order, zero, np.array([100], np.int64), last_seen, tolerance_us=10, ttl_us=1_000)
    late = np.zeros(1, dtype=np.bool_)
    te, prev = effective_times(
        order, zero, np.array([95], np.int64), last_seen, tolerance_us=10, ttl_us=1_000, late=late
    )
    assert (te.tolist(), prev.tolist(), late.tolist()) == ([95], [100], [False])  # within tolerance
    te, prev = effective_times(
        order, zero, np.array([80], np.int64), last_seen, tolerance_us=10, ttl_us=1_000, late=late
    )
    assert (te.tolist(), late.tolist(), last_seen.tolist()) == ([100], [True], [100])  # moved to last seen


def test_effective_times__idle_past_ttl_restarts_and_null_keys_are_ignored() -> None:
    te, prev, _, last = _run([0, 2_000, 2_500], [0, 0, -1], ttl=1_000)
    assert prev == [None, None, None]
    assert te == [0, 2_000, 2_500]
    assert last == [2_000, NONE_TS]
