"""RefreshingCache: fresh, stale-while-refreshing, expired, errors never kept, bounded."""

from __future__ import annotations

import functools
import threading

import pytest

from finsecure.core.cache import RefreshingCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_get__fresh_then_stale_then_expired() -> None:
    clock = Clock()
    cache = RefreshingCache[str, int](fresh_s=5, stale_s=30, clock=clock, background=False)
    assert cache.get("k", lambda: 1) == 1
    clock.now = 4.9
    assert cache.get("k", lambda: 2) == 1
    clock.now = 6.0  # stale: the kept answer, and the refresh runs (here in the caller)
    assert cache.get("k", lambda: 3, refresh=lambda: 30) == 1
    assert cache.get("k", lambda: 4) == 30
    clock.now = 100.0  # too old to serve: computed now
    assert cache.get("k", lambda: 5) == 5
    assert (cache.hits, cache.stale_hits, cache.misses) == (2, 1, 2)


def test_get__errors_are_not_kept() -> None:
    cache = RefreshingCache[str, int](fresh_s=5, stale_s=30, background=False)

    def broken() -> int:
        raise ValueError("lake unreadable")

    with pytest.raises(ValueError, match="lake unreadable"):
        cache.get("k", broken)
    assert cache.get("k", lambda: 7) == 7


def test_get__failed_refresh_keeps_the_stale_answer() -> None:
    clock = Clock()
    cache = RefreshingCache[str, int](fresh_s=5, stale_s=30, clock=clock, background=False)
    cache.get("k", lambda: 1)
    clock.now = 10.0

    def broken() -> int:
        raise RuntimeError("boom")

    assert cache.get("k", lambda: 2, refresh=broken) == 1
    assert cache.get("k", lambda: 3, refresh=lambda: 9) == 1  # a new refresh is tried
    assert cache.get("k", lambda: 4) == 9


def test_get__background_refresh_runs_once_per_key() -> None:
    clock = Clock()
    cache = RefreshingCache[str, int](fresh_s=5, stale_s=30, clock=clock)
    cache.get("k", lambda: 1)
    clock.now = 10.0
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        started.set()
        release.wait(5)
        return 2

    assert cache.get("k", lambda: 0, refresh=slow) == 1
    assert started.wait(5)
    assert cache.get("k", lambda: 0, refresh=slow) == 1  # still stale, refresh already under way
    release.set()
    for _ in range(500):
        if cache.get("k", lambda: 0) == 2:
            break
        threading.Event().wait(0.01)
    assert cache.get("k", lambda: 0) == 2
    assert len(calls) == 1


def test_get__zero_fresh_turns_it_off_and_entries_are_bounded() -> None:
    off = RefreshingCache[str, int](fresh_s=0, stale_s=0)
    assert [off.get("k", lambda: 1), off.get("k", lambda: 2)] == [1, 2]
    small = RefreshingCache[int, int](fresh_s=5, stale_s=5, max_entries=2, background=False)
    for key in range(3):
        small.get(key, functools.partial(int, key))
    assert small.get(0, lambda: 99) == 99  # the oldest key was let go


def test_init__refuses_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="fresh_s"):
        RefreshingCache[str, int](fresh_s=10, stale_s=5)
