"""Driving sources: as fast as possible, rate-capped, and replayed at a speed-up (checked on a fake clock)."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pytest

from finsecure.event.schemas import Domain
from finsecure.ingest.deadletter import dead_letters
from finsecure.pipeline.batch import SourceChunk
from finsecure.pipeline.drive import DriveProgress, drive
from finsecure.pipeline.engine import Pipeline
from finsecure.pipeline.testing import TestingSink, TestingSource, sample_frame


@dataclass
class FakeClock:
    """Time that only moves when someone sleeps."""

    now: float = 1_000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Recorder:
    """Stands in for a pipeline: records when (on the fake clock) each slice was submitted."""

    clock: FakeClock
    submits: list[tuple[float, pl.DataFrame]] = field(default_factory=list)
    rejects: list[pa.Table] = field(default_factory=list)

    def submit(
        self,
        domain: Domain | str,
        frame: pl.DataFrame,
        *,
        source: str,
        arrived_ns: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.submits.append((self.clock(), frame))

    def submit_rejects(self, table: pa.Table, *, timeout: float | None = None) -> None:
        self.rejects.append(table)


def test_drive__without_pacing_submits_whole_chunks():
    frames = [sample_frame("payment", 100), sample_frame("auth", 50)]
    rejects = dead_letters(source="f", reasons=["bad"], offsets=[4], raws=["x"])
    chunks = [SourceChunk(Domain.payment, frames[0], rejects=rejects), SourceChunk(Domain.auth, frames[1])]
    seen: list[DriveProgress] = []
    clock = FakeClock()
    recorder = Recorder(clock)
    progress = drive(TestingSource(chunks), recorder, on_progress=seen.append, clock=clock, sleep=clock.sleep)
    assert [frame.height for _, frame in recorder.submits] == [100, 50]
    assert recorder.rejects == [rejects]
    assert [(p.events, p.rejects, p.chunks) for p in seen] == [(100, 1, 1), (150, 1, 2)]
    assert (progress.events, progress.rejects, progress.slices) == (150, 1, 2)
    assert clock.sleeps == []


def test_drive__rate_caps_events_per_second_in_slices():
    clock = FakeClock()
    recorder = Recorder(clock)
    rate, tick = 1_000.0, 0.01  # slices of at most 10 rows
    progress = drive(
        TestingSource([sample_frame("network", 95), sample_frame("network", 105)]),
        recorder,
        rate=rate,
        tick_s=tick,
        clock=clock,
        sleep=clock.sleep,
    )
    sizes = [frame.height for _, frame in recorder.submits]
    assert sum(sizes) == 200
    assert max(sizes) == 10
    start = 1_000.0
    sent = 0
    for when, frame in recorder.submits:
        sent += frame.height
        # Token bucket: never more than one burst ahead of the average rate.
        assert sent <= 10 + (when - start) * rate + 1e-6
    assert progress.elapsed_s == pytest.approx((200 - 10) / rate)
    assert progress.events_per_s == pytest.approx(200 / progress.elapsed_s)


def test_drive__speedup_replays_at_a_multiple_of_event_time():
    start = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    frame = sample_frame("auth", 20, start=start, interval_s=1.0)  # events 1 s apart
    clock = FakeClock()
    recorder = Recorder(clock)
    progress = drive(TestingSource([frame]), recorder, speedup=10.0, clock=clock, sleep=clock.sleep)
    assert [f.height for _, f in recorder.submits] == [1] * 20  # 0.1 s apart: one per 10 ms tick
    for index, (when, submitted) in enumerate(recorder.submits):
        assert submitted["event_id"][0] == f"auth-{index}"
        assert when - 1_000.0 == pytest.approx(index * 0.1)
    assert progress.elapsed_s == pytest.approx(1.9)


def test_drive__speedup_groups_events_of_one_tick_and_spans_chunks():
    start = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    frame = sample_frame("network", 100, start=start, interval_s=0.001)  # 1 ms apart
    clock = FakeClock()
    recorder = Recorder(clock)
    drive(
        TestingSource([frame.slice(0, 45), frame.slice(45)]),
        recorder,
        speedup=1.0,
        tick_s=0.01,
        clock=clock,
        sleep=clock.sleep,
    )
    sizes = [f.height for _, f in recorder.submits]
    assert sum(sizes) == 100
    assert max(sizes) == 10
    assert sizes[:5] == [10, 10, 10, 10, 5]  # the first chunk ends mid-tick
    assert clock.now - 1_000.0 == pytest.approx(0.09)


def test_drive__late_events_never_move_time_backwards():
    start = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    frame = sample_frame("auth", 3, start=start, interval_s=1.0)
    shuffled = frame[[0, 2, 1]]  # the third event arrives late
    clock = FakeClock()
    recorder = Recorder(clock)
    drive(TestingSource([shuffled]), recorder, speedup=1.0, clock=clock, sleep=clock.sleep)
    assert [f["event_id"].to_list() for _, f in recorder.submits] == [["auth-0"], ["auth-2", "auth-1"]]


def test_drive__refuses_rate_and_speedup_together():
    with pytest.raises(ValueError, match="not both"):
        drive(TestingSource([]), Recorder(FakeClock()), rate=1.0, speedup=1.0)
    with pytest.raises(ValueError, match="positive"):
        drive(TestingSource([]), Recorder(FakeClock()), rate=0)


def test_drive__stops_when_asked():
    stop = threading.Event()
    recorder = Recorder(FakeClock())
    frames = [sample_frame("auth", 5), sample_frame("auth", 5)]

    def stop_after_first(progress: DriveProgress) -> None:
        stop.set()

    progress = drive(TestingSource(frames), recorder, on_progress=stop_after_first, stop=stop)
    assert progress.events == 5


def test_drive__feeds_a_real_pipeline():
    sink = TestingSink()
    with Pipeline([], [sink], max_rows=64) as pipeline:
        progress = drive(TestingSource([sample_frame("cloud", 300)]), pipeline, rate=1e6)
    assert progress.events == sink.rows == 300
    assert sink.concat()["event_id"].to_list() == [f"cloud-{i}" for i in range(300)]
