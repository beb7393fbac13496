"""Sliding-window counters for login throttling.

The embedded implementation keeps counts in this process; a shared implementation (Redis) for several
API processes plugs in behind the same :class:`RateLimiter` interface.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable


class RateLimiter(ABC):
    """Counts events per key within a sliding window of ``window_s`` seconds."""

    @abstractmethod
    def hit(self, key: str, window_s: float) -> int:
        """Record one event for ``key`` and return the number of events in the window."""

    @abstractmethod
    def count(self, key: str, window_s: float) -> int:
        """Events recorded for ``key`` within the window."""

    @abstractmethod
    def retry_after(self, key: str, window_s: float) -> float:
        """Seconds until the oldest event of ``key`` leaves the window (0 when empty)."""

    @abstractmethod
    def reset(self, key: str) -> None:
        """Forget every event of ``key``."""


class InMemoryRateLimiter(RateLimiter):
    """Thread-safe, bounded in memory: the least recently touched keys are dropped past ``max_keys``.

    Examples
    --------
    >>> clock = iter([0.0, 1.0, 2.0, 2.0, 70.0]).__next__
    >>> limiter = InMemoryRateLimiter(clock=clock)
    >>> limiter.hit("alice", 60), limiter.hit("alice", 60), limiter.hit("alice", 60)
    (1, 2, 3)
    >>> limiter.count("alice", 60)
    3
    >>> limiter.count("alice", 60)  # at t=70 the hits at 0, 1 and 2 have left the window
    0
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._clock = clock

    def _window(self, key: str, window_s: float, now: float, *, create: bool = True) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if not create:
                # Only hits store keys: looking up an unknown key must not evict a known one.
                return deque()
            events = deque()
            self._events[key] = events
            while len(self._events) > self._max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        while events and events[0] <= now - window_s:
            events.popleft()
        return events

    def hit(self, key: str, window_s: float) -> int:
        with self._lock:
            now = self._clock()
            events = self._window(key, window_s, now)
            events.append(now)
            return len(events)

    def count(self, key: str, window_s: float) -> int:
        with self._lock:
            return len(self._window(key, window_s, self._clock(), create=False))

    def retry_after(self, key: str, window_s: float) -> float:
        with self._lock:
            now = self._clock()
            events = self._window(key, window_s, now, create=False)
            return max(0.0, events[0] + window_s - now) if events else 0.0

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)
