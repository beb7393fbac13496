"""A small cache for answers that are costly to compute and fine to show a few seconds old.

The dashboard polls the map and the event search every few seconds, and each answer reads the lake, whose
files arrive every few seconds anyway. :class:`RefreshingCache` keeps an answer for ``fresh_s``; after
that, until ``stale_s``, it still answers at once with the kept value and computes a new one on a
background thread (one at a time per key), so a poller never waits for the lake. Past ``stale_s``, or for
a key it never saw, the caller computes (callers asking for the same key at once share one computation).
Errors are never cached.

Example
-------
>>> clock = [0.0]
>>> cache = RefreshingCache[str, int](fresh_s=5, stale_s=30, clock=lambda: clock[0], background=False)
>>> cache.get("k", lambda: 1)
1
>>> cache.get("k", lambda: 2)  # still fresh
1
>>> clock[0] = 10.0
>>> cache.get("k", lambda: 3)  # stale: the kept answer now, a new one computed for next time
1
>>> cache.get("k", lambda: 4)
3
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    lock: threading.Lock = field(default_factory=threading.Lock)
    value: V | None = None
    at: float | None = None
    refreshing: bool = False


class RefreshingCache(Generic[K, V]):
    """Answers kept ``fresh_s`` seconds, served while refreshed in the background until ``stale_s``.

    Parameters
    ----------
    fresh_s
        Age under which a kept answer is returned as it is (0 turns the cache off).
    stale_s
        Age under which a kept answer is still returned, while a new one is computed in the background.
    max_entries
        Keys kept; the least recently used goes first.
    clock
        Seconds on a monotonic clock (tests pass a fake one).
    background
        Refresh on a daemon thread (``False``: in the caller, after taking the kept answer; for tests).
    """

    def __init__(
        self,
        *,
        fresh_s: float,
        stale_s: float,
        max_entries: int = 64,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        if fresh_s < 0 or stale_s < fresh_s or max_entries < 1:
            raise ValueError("need 0 <= fresh_s <= stale_s and max_entries >= 1")
        self.fresh_s = fresh_s
        self.stale_s = stale_s
        self.max_entries = max_entries
        self.clock = clock
        self.background = background
        self.hits = self.stale_hits = self.misses = 0
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, key: K) -> _Entry[V]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return entry

    def get(self, key: K, compute: Callable[[], V], refresh: Callable[[], V] | None = None) -> V:
        """The answer for ``key``: kept, or computed now with ``compute``.

        ``refresh`` computes it in the background (default ``compute``); give one that does not use the
        caller's request-bound resources (its database session), which are gone by then.
        """
        if self.fresh_s <= 0:
            return compute()
        entry = self._entry(key)
        start_refresh = False
        with entry.lock:
            age = None if entry.at is None else self.clock() - entry.at
            if age is not None and age < self.fresh_s:
                self.hits += 1
                return entry.value  # type: ignore[return-value]  # set together with ``at``
            if age is not None and age < self.stale_s:
                self.stale_hits += 1
                value = entry.value
                if not entry.refreshing:
                    entry.refreshing = start_refresh = True
            else:
                self.misses += 1
                value = compute()  # under the entry's lock: callers of the same key wait and share it
                entry.value, entry.at = value, self.clock()
                return value
        if start_refresh:
            job = refresh or compute
            if self.background:
                threading.Thread(target=self._refresh, args=(entry, job), daemon=True).start()
            else:
                self._refresh(entry, job)
        return value  # type: ignore[return-value]  # a stale hit: ``value`` was set with ``at``

    def _refresh(self, entry: _Entry[V], job: Callable[[], V]) -> None:
        try:
            value = job()
        except Exception:  # the kept answer stays until stale_s; the next caller tries again
            logger.warning("background refresh of a cached answer failed", exc_info=True)
            with entry.lock:
                entry.refreshing = False
            return
        with entry.lock:
            entry.value, entry.at, entry.refreshing = value, self.clock(), False

    def clear(self) -> None:
        """Forget every kept answer."""
        with self._lock:
            self._entries.clear()
