"""The micro-batch engine: batching, back-pressure, drain, failure isolation, metrics, snapshots."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from finsecure.event.schemas import SchemaError, conform_batch
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA, dead_letters
from finsecure.pipeline.batch import Batch, Sink, Step
from finsecure.pipeline.engine import (
    Backpressure,
    LatencyRing,
    Pipeline,
    PipelineClosed,
    SnapshotError,
    canonical_polars_schema,
)
from finsecure.pipeline.testing import TestingSink, run_pipeline, sample_frame

LONG = 60.0  # a max_age that never fires during a test: batches then close on size or flush only


class CountRows(Step):
    """A stateful step: counts rows per domain; state is 4 little-endian int64s."""

    step_id = "count"

    def __init__(self) -> None:
        self.rows = 0
        self.batches = 0

    def process(self, batch: Batch) -> Batch:
        self.rows += len(batch)
        self.batches += 1
        return batch.with_frame(batch.frame.with_columns(running=pl.lit(self.rows)))

    def snapshot(self) -> bytes:
        return struct.pack("<qq", self.rows, self.batches)

    def restore(self, data: bytes) -> None:
        self.rows, self.batches = struct.unpack("<qq", data)


class FailOn(Step):
    """Raises on any batch that holds the given event id."""

    def __init__(self, event_id: str, step_id: str = "boom") -> None:
        self.step_id = step_id
        self.event_id = event_id

    def process(self, batch: Batch) -> Batch:
        if batch.frame["event_id"].is_in([self.event_id]).any():
            raise ValueError("a planted failure")
        return batch


class BlockingSink(Sink):
    """Blocks in write() until released, to fill the queue behind it."""

    sink_id = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.rows = 0

    def write(self, batch: Batch) -> None:
        self.entered.set()
        assert self.release.wait(10), "the test never released the sink"
        self.rows += len(batch)


def test_submit__closes_batches_by_size():
    sink = TestingSink()
    with Pipeline([], [sink], max_rows=100, max_age_s=LONG) as pipeline:
        frame = sample_frame("payment", 250)
        for offset in range(0, 250, 30):
            pipeline.submit("payment", frame.slice(offset, 30), source="t")
        assert sink.wait_for(batches=2, timeout=10)
        assert [len(batch) for batch in sink.batches] == [100, 100]  # 50 rows wait for more
    stats = pipeline.stats()
    assert [len(batch) for batch in sink.batches] == [100, 100, 50]
    assert stats.batches_closed_by == {"size": 2, "age": 0, "flush": 1}
    assert sink.concat()["event_id"].equals(frame["event_id"])
    assert [batch.seq for batch in sink.batches] == [1, 2, 3]


def test_submit__slices_large_chunks_without_copying():
    sink = TestingSink()
    frame = sample_frame("network", 2_500)
    with Pipeline([], [sink], max_rows=1_000, max_age_s=LONG) as pipeline:
        pipeline.submit("network", frame, source="t")
    assert [len(batch) for batch in sink.batches] == [1_000, 1_000, 500]
    original = frame["bytes_out"].to_numpy()
    for batch in sink.batches:
        assert np.shares_memory(batch.frame["bytes_out"].to_numpy(), original)
    assert sink.concat().equals(frame)


def test_submit__tops_up_a_partial_batch_then_slices_the_rest():
    sink = TestingSink()
    frame = sample_frame("auth", 2_600)
    with Pipeline([], [sink], max_rows=1_000, max_age_s=LONG) as pipeline:
        pipeline.submit("auth", frame.slice(0, 300), source="t")
        pipeline.submit("auth", frame.slice(300), source="t")
    assert [len(batch) for batch in sink.batches] == [1_000, 1_000, 600]
    assert sink.concat().equals(frame)


def test_submit__closes_batches_by_age():
    sink = TestingSink()
    with Pipeline([], [sink], max_rows=1_000, max_age_s=0.02) as pipeline:
        pipeline.submit("auth", sample_frame("auth", 5), source="t")
        assert sink.wait_for(rows=5, timeout=10)  # closed while running, not by stop()
        assert pipeline.stats().batches_closed_by["age"] == 1


def test_submit__old_rows_close_at_once():
    # Age counts from arrived_ns, so rows that already waited upstream do not wait again.
    sink = TestingSink()
    with Pipeline([], [sink], max_rows=1_000, max_age_s=LONG) as pipeline:
        long_ago = time.monotonic_ns() - 2 * int(LONG * 1e9)
        pipeline.submit("auth", sample_frame("auth", 5), source="t", arrived_ns=long_ago)
        assert sink.wait_for(rows=5, timeout=10)
        stats = pipeline.stats()
    assert stats.batches_closed_by == {"size": 0, "age": 1, "flush": 0}
    assert stats.event_latency_p50_ms is not None
    assert stats.event_latency_p50_ms >= 2 * LONG * 1000


def test_submit__buffers_each_domain_separately():
    sink = TestingSink()
    payment = sample_frame("payment", 60)
    with Pipeline([], [sink], max_rows=50, max_age_s=LONG) as pipeline:
        pipeline.submit("payment", payment.slice(0, 30), source="t")
        pipeline.submit("auth", sample_frame("auth", 20), source="t")
        pipeline.submit("payment", payment.slice(30, 30), source="t")
    shapes = [(batch.domain.value, len(batch)) for batch in sink.batches]
    assert shapes[0] == ("payment", 50)
    assert sorted(shapes[1:]) == [("auth", 20), ("payment", 10)]
    for batch in sink.batches:
        assert batch.frame["domain"].unique().to_list() == [batch.domain.value]
    paid = pl.concat([b.frame for b in sink.batches if b.domain == "payment"])
    assert paid["event_id"].equals(payment["event_id"])


def test_submit__refuses_rows_that_are_not_canonical():
    pipeline = Pipeline([], [TestingSink()])
    frame = sample_frame("payment", 3)
    with pytest.raises(SchemaError, match="missing column"):
        pipeline.submit("payment", frame.drop("amount"), source="t")
    with pytest.raises(SchemaError, match="wrong type"):
        pipeline.submit("payment", frame.with_columns(pl.col("amount").cast(pl.Float32)), source="t")
    with pytest.raises(SchemaError, match="unknown domain"):
        pipeline.submit("mainframe", frame, source="t")
    with pytest.raises(SchemaError, match="missing column"):
        pipeline.submit("auth", frame, source="t")  # payment rows submitted as auth
    pipeline.stop()


def test_submit__raises_backpressure_when_the_queue_stays_full():
    sink = BlockingSink()
    pipeline = Pipeline([], [sink], max_rows=1, max_age_s=LONG, queue_chunks=1).start()
    rows = sample_frame("payment", 4)
    pipeline.submit("payment", rows.slice(0, 1), source="t")
    assert sink.entered.wait(10)  # the worker is stuck in the sink with row 0
    pipeline.submit("payment", rows.slice(1, 1), source="t")  # fills the queue
    with pytest.raises(Backpressure, match="busy") as raised:
        pipeline.submit("payment", rows.slice(2, 1), source="t", timeout=0.05)
    assert raised.value.retry_after_s > 0
    assert pipeline.stats().queue_depth == 1
    sink.release.set()
    pipeline.submit("payment", rows.slice(3, 1), source="t", timeout=10)
    stats = pipeline.stop(timeout=10)
    assert sink.rows == 3  # rows 0, 1, 3: only the refused one is missing
    assert stats.events_in["payment"] == stats.events_out["payment"] == 3


def test_submit__records_how_long_a_full_queue_held_it():
    sink = BlockingSink()
    pipeline = Pipeline([], [sink], max_rows=1, max_age_s=LONG, queue_chunks=1).start()
    assert pipeline.stats().submit_wait_p99_ms is None
    rows = sample_frame("payment", 3)
    pipeline.submit("payment", rows.slice(0, 1), source="t")
    assert sink.entered.wait(10)  # the worker is stuck in the sink with row 0
    pipeline.submit("payment", rows.slice(1, 1), source="t")  # fills the queue
    blocked = threading.Thread(
        target=pipeline.submit, args=("payment", rows.slice(2, 1)), kwargs={"source": "t"}
    )
    blocked.start()
    deadline = time.monotonic() + 10
    while pipeline._inflight == 0 and time.monotonic() < deadline:  # until it waits for room
        time.sleep(0.001)
    time.sleep(0.05)  # the third submit can only return once the sink lets go
    sink.release.set()
    blocked.join(10)
    stats = pipeline.stop(timeout=10)
    assert len(pipeline.submit_wait) == 3
    assert stats.submit_wait_p99_ms is not None
    assert pipeline.submit_wait.percentile(100) >= 50  # the blocked one waited for the release


def test_stop__drains_everything_submitted_before_it():
    class SlowSink(TestingSink):
        def write(self, batch: Batch) -> None:
            time.sleep(0.001)
            super().write(batch)

    sink = SlowSink()
    pipeline = Pipeline([], [sink], max_rows=10, max_age_s=LONG, queue_chunks=4).start()
    frame = sample_frame("cloud", 1_000)
    for offset in range(0, 1_000, 7):
        pipeline.submit("cloud", frame.slice(offset, 7), source="t")
    stats = pipeline.stop(timeout=30)
    assert sink.rows == 1_000
    assert sink.closed
    assert sink.flushes >= 1
    assert sink.concat()["event_id"].equals(frame["event_id"])
    assert stats.queue_depth == 0
    assert stats.buffered_rows == 0
    assert not stats.running
    with pytest.raises(PipelineClosed):
        pipeline.submit("cloud", frame, source="t")
    assert pipeline.stop() == pipeline.stats()  # a second stop is harmless


def test_stop__without_drain_discards_what_is_queued():
    sink = BlockingSink()
    pipeline = Pipeline([], [sink], max_rows=1, max_age_s=LONG, queue_chunks=8).start()
    rows = sample_frame("payment", 5)
    for index in range(5):
        pipeline.submit("payment", rows.slice(index, 1), source="t")
    assert sink.entered.wait(10)
    stopper = threading.Thread(target=pipeline.stop, kwargs={"drain": False, "timeout": 10})
    stopper.start()
    time.sleep(0.01)  # let stop() mark the pipeline as abandoning before the sink is released
    sink.release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert sink.rows < 5


def test_process__isolates_a_failing_step():
    frame = sample_frame("payment", 50)
    sink = run_pipeline([CountRows(), FailOn("payment-23")], [frame], max_rows=10, max_age_s=LONG)
    assert [len(batch) for batch in sink.batches] == [10, 10, 10, 10]  # rows 20-29 are dead letters
    letters = sink.dead_letter_table()
    assert letters.schema == DEAD_LETTER_SCHEMA
    assert letters.num_rows == 10
    assert set(letters["reason"].to_pylist()) == {"step boom failed: ValueError"}
    assert set(letters["domain"].to_pylist()) == {"payment"}
    raws = [json.loads(raw) for raw in letters["raw"].to_pylist()]
    assert [raw["event_id"] for raw in raws] == [f"payment-{i}" for i in range(20, 30)]
    assert "running" not in raws[0]  # dead letters hold the canonical row, replayable as is


def test_process__isolates_a_failing_sink_and_keeps_the_others():
    class Broken(Sink):
        sink_id = "broken"

        def write(self, batch: Batch) -> None:
            raise RuntimeError("disk full")

    good, letters = TestingSink(), TestingSink("letters")
    with Pipeline([], [Broken(), good], max_rows=10, dead_letter_sink=letters.reject) as pipeline:
        pipeline.submit("auth", sample_frame("auth", 20), source="t")
    stats = pipeline.stats()
    assert good.rows == 20
    assert stats.errors == {"broken": 2}
    assert set(letters.dead_letter_table()["reason"].to_pylist()) == {"sink broken failed: RuntimeError"}
    assert stats.dead_letters == 20


def test_process__a_step_returning_none_drops_the_batch():
    class DropAuth(Step):
        step_id = "drop-auth"

        def process(self, batch: Batch) -> Batch | None:
            return None if batch.domain == "auth" else batch

    sink = run_pipeline([DropAuth(), CountRows()], [sample_frame("auth", 5), sample_frame("cloud", 7)])
    assert [batch.domain.value for batch in sink.batches] == ["cloud"]


def test_submit_rejects__reach_the_dead_letter_sink_in_order():
    letters = TestingSink()
    first = dead_letters(source="f", reasons=["bad json"], offsets=[3], raws=["{"])
    second = dead_letters(source="f", reasons=["no ts"], offsets=[9], raws=["{}"])
    with Pipeline([], [TestingSink()], dead_letter_sink=letters.reject) as pipeline:
        pipeline.submit_rejects(first)
        pipeline.submit("auth", sample_frame("auth", 1), source="f")
        pipeline.submit_rejects(second)
        pipeline.submit_rejects(dead_letters(source="f", reasons=[], offsets=[], raws=[]))
    assert letters.dead_letter_table()["offset"].to_pylist() == [3, 9]
    assert pipeline.stats().dead_letters == 2


def test_stats__counts_events_per_step_and_domain():
    class KeepEuros(Step):
        step_id = "euros"

        def process(self, batch: Batch) -> Batch:
            if batch.domain != "payment":
                return batch
            return batch.with_frame(batch.frame.filter(pl.col("currency") == "EUR"))

    with Pipeline([CountRows(), KeepEuros()], [TestingSink()], max_rows=50) as pipeline:
        pipeline.submit("payment", sample_frame("payment", 100), source="t")
        pipeline.submit("auth", sample_frame("auth", 30), source="t")
    stats = pipeline.stats()
    assert stats.events_in == {"network": 0, "cloud": 0, "auth": 30, "payment": 100}
    assert stats.step_events_in == {"count": 130, "euros": 130}
    assert stats.step_events_out == {"count": 130, "euros": 120}  # every 10th payment is in GBP
    assert stats.events_out["payment"] == 90
    assert stats.batches == 3
    assert stats.last_seq == 3
    assert stats.batch_latency_p50_ms is not None
    assert stats.batch_latency_p99_ms is not None
    assert 0 <= stats.batch_latency_p50_ms <= stats.batch_latency_p99_ms
    assert pipeline.batch_latency.p99() == stats.batch_latency_p99_ms


def test_latency_ring__percentiles_over_the_last_values():
    ring = LatencyRing(capacity=100)
    assert ring.p50() is None
    for value_ms in range(1, 201):  # the ring keeps 101..200
        ring.add(value_ms * 1_000_000)
    assert len(ring) == 100
    assert ring.p50() == pytest.approx(150.5)
    assert ring.p99() == pytest.approx(np.percentile(np.arange(101, 201), 99))


def test_snapshot__round_trips_a_stateful_step(tmp_path: Path):
    frame = sample_frame("payment", 250)
    counter = CountRows()
    with Pipeline([counter, FailOn("never")], [TestingSink()], max_rows=100, max_age_s=LONG) as pipeline:
        pipeline.submit("payment", frame, source="t")
        manifest_path = pipeline.snapshot(tmp_path / "snap")  # while running: buffers flushed first
        pipeline.submit("payment", frame, source="t")
    assert counter.rows == 500
    manifest = json.loads(manifest_path.read_text())
    assert manifest["batch_seq"] == 3
    assert manifest["stateless_steps"] == ["boom"]
    assert [entry["step_id"] for entry in manifest["steps"]] == ["count"]
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == ["count.bin", "manifest.json"]

    restored = CountRows()
    fresh = Pipeline([restored, FailOn("never")], [TestingSink()])
    assert fresh.restore(tmp_path / "snap") == 3
    assert (restored.rows, restored.batches) == (250, 3)
    sink = TestingSink()
    fresh.sinks = (sink,)
    with fresh:
        fresh.submit("payment", frame.slice(0, 10), source="t")
    assert sink.batches[0].seq == 4  # numbering carries on after the snapshot
    assert restored.rows == 260


def test_restore__while_running_applies_between_batches(tmp_path: Path):
    counter = CountRows()
    counter.rows, counter.batches = 7, 1
    Pipeline([counter], []).snapshot(tmp_path)
    target = CountRows()
    sink = TestingSink()
    with Pipeline([target], [sink], max_rows=10) as pipeline:
        pipeline.restore(tmp_path)
        pipeline.submit("auth", sample_frame("auth", 10), source="t")
    assert sink.batches[0].frame["running"][0] == 17


def test_restore__refuses_broken_snapshots(tmp_path: Path):
    pipeline = Pipeline([CountRows()], [])
    with pytest.raises(SnapshotError, match=r"manifest\.json is missing"):
        pipeline.restore(tmp_path)
    pipeline.snapshot(tmp_path)
    (tmp_path / "count.bin").write_bytes(b"\x01" * 16)
    with pytest.raises(SnapshotError, match=r"count\.bin does not match the manifest"):
        pipeline.restore(tmp_path)
    (tmp_path / "count.bin").unlink()
    with pytest.raises(SnapshotError, match=r"incomplete: count\.bin is missing"):
        pipeline.restore(tmp_path)
    pipeline.snapshot(tmp_path)
    with pytest.raises(SnapshotError, match="lacks"):
        Pipeline([FailOn("x", step_id="other")], []).restore(tmp_path)

    class Other(CountRows):
        step_id = "other"

    with pytest.raises(SnapshotError, match="no state for stateful step"):
        Pipeline([CountRows(), Other()], []).restore(tmp_path)


def test_pipeline__refuses_bad_step_ids():
    with pytest.raises(ValueError, match="used twice"):
        Pipeline([CountRows(), CountRows()], [])
    with pytest.raises(ValueError, match="names a snapshot file"):
        Pipeline([FailOn("x", step_id="../etc")], [])
    with pytest.raises(ValueError, match="max_rows"):
        Pipeline([], [], max_rows=0)


def test_flush__returns_once_everything_is_through_the_sinks():
    sink = TestingSink()
    with Pipeline([], [sink], max_rows=1_000, max_age_s=LONG) as pipeline:
        pipeline.submit("network", sample_frame("network", 10), source="t")
        pipeline.flush(timeout=10)
        assert sink.rows == 10
        assert sink.flushes == 1


def test_canonical_polars_schema__matches_conformed_rows():
    for domain in ("network", "cloud", "auth", "payment"):
        conformed = pl.DataFrame(conform_batch(domain, sample_frame(domain, 3).to_arrow()))
        assert conformed.schema == canonical_polars_schema(domain)


def test_dead_letter_sink__failure_is_counted_not_fatal():
    def broken(table: pa.Table) -> None:
        raise OSError("no space")

    sink = TestingSink()
    with Pipeline([FailOn("auth-1")], [sink], max_rows=2, dead_letter_sink=broken) as pipeline:
        pipeline.submit("auth", sample_frame("auth", 6), source="t")
    assert sink.rows == 4
    assert pipeline.stats().errors == {"boom": 1, "dead_letter": 1}
