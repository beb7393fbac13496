"""Feed a :class:`~finsecure.pipeline.batch.Source` into a pipeline: as fast as possible, at a capped
rate, or replayed at a multiple of the events' own pace.

Pacing works on slices of chunks, never per event: a rate cap is a token bucket refilled ``rate``
times a second and spent one slice (at most ``rate * tick_s`` rows) at a time; a replay slices each
chunk where the events' timestamps cross a ``tick_s`` boundary of replay time and submits each slice
when its first event is due.

Example
-------
>>> from finsecure.pipeline.testing import TestingSink, TestingSource, sample_frame
>>> sink = TestingSink()
>>> with Pipeline([], [sink]) as pipeline:
...     progress = drive(TestingSource([sample_frame("network", 1_000)]), pipeline)
>>> progress.events, progress.chunks
(1000, 1)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Source
from finsecure.pipeline.engine import Pipeline

__all__ = ["DriveProgress", "Submitter", "drive"]


@dataclass(frozen=True, slots=True)
class DriveProgress:
    """How far :func:`drive` has got."""

    events: int
    """Canonical rows submitted."""
    rejects: int
    """Dead letters forwarded."""
    chunks: int
    """Chunks read from the source."""
    slices: int
    """Submissions made (a paced chunk is submitted in several slices)."""
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        """Average submission rate so far."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Submitter(Protocol):
    """What :func:`drive` needs from a pipeline (a :class:`Pipeline`, or a recorder in tests)."""

    def submit(
        self,
        domain: Domain | str,
        frame: pl.DataFrame,
        *,
        source: str,
        arrived_ns: int | None = None,
        timeout: float | None = None,
    ) -> None: ...

    def submit_rejects(self, table: pa.Table, *, timeout: float | None = None) -> None: ...


class _Pacer:
    """Clock and sleep in one place, so tests can pass a fake clock and assert on pacing decisions."""

    def __init__(
        self, clock: Callable[[], float], sleep: Callable[[float], None], stop: threading.Event | None
    ) -> None:
        self.clock = clock
        self._sleep = sleep
        self._stop = stop

    def stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._stop is not None:
            self._stop.wait(seconds)
        else:
            self._sleep(seconds)


class _TokenBucket:
    """Allows ``rate`` rows a second on average, in bursts of at most ``burst`` rows."""

    def __init__(self, rate: float, burst: int, pacer: _Pacer) -> None:
        self.rate = rate
        self.burst = burst
        self._pacer = pacer
        self._tokens = float(burst)
        self._last = pacer.clock()

    def _refill(self) -> None:
        now = self._pacer.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, rows: int) -> None:
        self._refill()
        if self._tokens < rows:
            self._pacer.wait((rows - self._tokens) / self.rate)
            self._refill()
        self._tokens -= rows


class _Replay:
    """Maps event time to wall time: an event ``d`` s after the first is due ``d / speedup`` s later."""

    def __init__(self, speedup: float, tick_s: float, pacer: _Pacer) -> None:
        self.speedup = speedup
        self.tick_s = tick_s
        self._pacer = pacer
        self._t0_us: int | None = None
        self._wall0 = 0.0
        self._high_us = np.iinfo(np.int64).min

    def slices(self, frame: pl.DataFrame) -> list[tuple[int, int, float]]:
        """``(offset, length, due)`` per slice; ``due`` is seconds after the replay started."""
        ts = frame["ts"].dt.epoch("us").to_numpy()
        if self._t0_us is None:
            self._t0_us = int(ts[0])
            self._wall0 = self._pacer.clock()
        # A late (out-of-order) event goes out with the slice that is current, so time never runs back.
        ts = np.maximum.accumulate(np.maximum(ts, self._high_us))
        self._high_us = int(ts[-1])
        due = (ts - self._t0_us) / 1e6 / self.speedup
        tick = np.floor(due / self.tick_s).astype(np.int64)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(tick)) + 1))
        ends = np.append(starts[1:], len(ts))
        return [(int(s), int(e - s), float(due[s])) for s, e in zip(starts, ends, strict=True)]

    def wait_until(self, due: float) -> None:
        self._pacer.wait(due - (self._pacer.clock() - self._wall0))


def drive(
    source: Source,
    pipeline: Pipeline | Submitter,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    on_progress: Callable[[DriveProgress], None] | None = None,
    stop: threading.Event | None = None,
    tick_s: float = 0.01,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DriveProgress:
    """Read ``source`` to its end (or until ``stop`` is set) and submit everything to ``pipeline``.

    Parameters
    ----------
    source
        Any source; it is not closed here (its owner closes it).
    pipeline
        Where rows go (``submit``) and where the source's rejects go (``submit_rejects``). Submitting
        blocks while the pipeline's queue is full, so a slow pipeline slows the source down.
    rate
        Cap in events per second (a token bucket spent one slice of at most ``rate * tick_s`` rows at a time).
    speedup
        Replay at this multiple of the pace of the events' ``ts`` (``1.0`` = real time).
    on_progress
        Called after every chunk with the totals so far.
    stop
        Set it from another thread to stop driving (also interrupts pacing waits).
    tick_s
        Pacing granularity in seconds.
    clock, sleep
        Time functions; tests pass fakes to check pacing without waiting.

    Returns
    -------
    DriveProgress
        The final totals.
    """
    if rate is not None and speedup is not None:
        raise ValueError("give rate or speedup, not both")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be a positive number of events per second")
    if speedup is not None and speedup <= 0:
        raise ValueError("speedup must be a positive factor")
    if tick_s <= 0:
        raise ValueError("tick_s must be positive")
    pacer = _Pacer(clock, sleep, stop)
    bucket = _TokenBucket(rate, max(1, int(rate * tick_s)), pacer) if rate is not None else None
    replay = _Replay(speedup, tick_s, pacer) if speedup is not None else None
    source_id = source.source_id
    max_slice = max(1, int(getattr(pipeline, "max_rows", 0) or 1 << 62))
    started = clock()
    events = rejects = chunks = slices = 0

    def progress() -> DriveProgress:
        return DriveProgress(events, rejects, chunks, slices, clock() - started)

    for chunk in source.chunks():
        if pacer.stopped():
            break
        chunks += 1
        if chunk.rejects is not None and chunk.rejects.num_rows:
            pipeline.submit_rejects(chunk.rejects)
            rejects += chunk.rejects.num_rows
        frame = chunk.frame
        if frame.height:
            if bucket is not None:
                for offset in range(0, frame.height, bucket.burst):
                    part = frame.slice(offset, bucket.burst)
                    bucket.take(part.height)
                    if pacer.stopped():
                        break
                    pipeline.submit(chunk.domain, part, source=source_id)
                    events += part.height
                    slices += 1
            elif replay is not None:
                for offset, length, due in replay.slices(frame):
                    replay.wait_until(due)
                    if pacer.stopped():
                        break
                    pipeline.submit(chunk.domain, frame.slice(offset, length), source=source_id)
                    events += length
                    slices += 1
            else:
                # Submit at most one batch worth of rows at a time: a whole 100k-row chunk queued at once
                # would sit in the queue behind others and inflate event latency for no gain.
                for offset in range(0, frame.height, max_slice):
                    part = frame.slice(offset, max_slice)
                    pipeline.submit(chunk.domain, part, source=source_id)
                    events += part.height
                    slices += 1
        if on_progress is not None:
            on_progress(progress())
    return progress()
