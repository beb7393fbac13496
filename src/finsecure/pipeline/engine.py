"""The micro-batch engine: a bounded queue in, one worker thread, named steps, then every sink.

Callers (HTTP ingest, file replay, the simulator, a bus consumer) :meth:`Pipeline.submit` canonical
rows of one domain. A worker thread keeps one buffer per ``(domain, source)`` and closes a batch when it
holds ``max_rows`` rows or when its oldest row is ``max_age_s`` old, so a batch's wait is bounded both
under load and when traffic is thin. Each batch runs through the steps in order, then goes to every sink.

Failure isolation: a step or sink that raises is counted and logged with its id and the batch number,
and the batch's rows go to the dead-letter sink; the worker carries on with the next batch.

Example
-------
>>> import polars as pl
>>> from finsecure.pipeline.batch import Batch, Step
>>> from finsecure.pipeline.testing import TestingSink, sample_frame
>>> class Big(Step):
...     step_id = "big"
...     def process(self, batch: Batch) -> Batch:
...         return batch.with_frame(batch.frame.with_columns(big=pl.col("amount") > 50.0))
>>> sink = TestingSink()
>>> with Pipeline([Big()], [sink], max_rows=4) as pipeline:
...     pipeline.submit("payment", sample_frame("payment", 10), source="doc")
>>> [len(batch) for batch in sink.batches], sink.concat().height
([4, 4, 2], 10)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from finsecure.event.schemas import ARROW_SCHEMAS, Domain, SchemaError
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA, MAX_RAW_CHARS
from finsecure.pipeline.batch import Batch, Sink, Step

__all__ = [
    "MANIFEST_NAME",
    "Backpressure",
    "LatencyRing",
    "Pipeline",
    "PipelineClosed",
    "PipelineStats",
    "SnapshotError",
    "canonical_polars_schema",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME: Final = "manifest.json"
"""Name of the snapshot manifest inside a snapshot directory; written last, so it marks a complete set."""

_MANIFEST_FORMAT: Final = 1
_STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
CloseReason = Literal["size", "age", "flush"]


class Backpressure(RuntimeError):
    """The pipeline's queue stayed full for the whole ``timeout``: the caller should retry later.

    The HTTP endpoint turns this into ``503 Service Unavailable`` with ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PipelineClosed(RuntimeError):
    """The pipeline is stopping or stopped and accepts no more rows."""


class SnapshotError(ValueError):
    """A snapshot directory is missing, incomplete or does not match the pipeline's steps."""


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


class LatencyRing:
    """The last ``capacity`` latencies (nanoseconds) in a ring buffer, with percentile accessors.

    Thread-safe and cheap to feed: one array store per value under a lock.

    Examples
    --------
    >>> ring = LatencyRing(capacity=4)
    >>> for ms in (1, 2, 3, 4, 100):
    ...     ring.add(ms * 1_000_000)
    >>> len(ring), ring.p50()
    (4, 3.5)
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._values = np.zeros(capacity, dtype=np.int64)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, value_ns: int) -> None:
        """Record one latency in nanoseconds (the oldest value drops out once the ring is full)."""
        with self._lock:
            self._values[self._count % self._values.shape[0]] = value_ns
            self._count += 1

    def __len__(self) -> int:
        return min(self._count, self._values.shape[0])

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of the recorded latencies, in milliseconds; ``None`` if empty."""
        with self._lock:
            filled = self._values[: len(self)].copy()
        if filled.size == 0:
            return None
        return float(np.percentile(filled, q)) / 1e6

    def p50(self) -> float | None:
        """Median latency in milliseconds."""
        return self.percentile(50.0)

    def p99(self) -> float | None:
        """99th-percentile latency in milliseconds."""
        return self.percentile(99.0)


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """A consistent copy of the pipeline's counters at one moment.

    Latencies are in milliseconds over the last few thousand batches (``None`` before the first batch):
    *batch latency* is the time steps and sinks took; *event latency* is now minus the arrival of the
    batch's oldest row, so it includes the wait in the queue and in the buffer.
    """

    running: bool
    events_in: dict[str, int]
    """Rows accepted by :meth:`Pipeline.submit`, per domain."""
    events_out: dict[str, int]
    """Rows handed to the sinks after the last step, per domain."""
    step_events_in: dict[str, int]
    step_events_out: dict[str, int]
    batches: int
    batches_closed_by: dict[str, int]
    """How batches were closed: ``size``, ``age`` or ``flush`` (stop, snapshot, explicit flush)."""
    batches_dropped: int
    """Batches a step returned ``None`` for."""
    errors: dict[str, int]
    """Failures per step or sink id (``dead_letter`` for the dead-letter sink itself)."""
    dead_letters: int
    """Rows sent to the dead-letter sink: failed batches plus forwarded rejects."""
    last_seq: int
    queue_depth: int
    queue_capacity: int
    buffered_rows: int
    batch_latency_p50_ms: float | None
    batch_latency_p99_ms: float | None
    event_latency_p50_ms: float | None
    event_latency_p99_ms: float | None
    submit_wait_p99_ms: float | None = None
    """How long :meth:`Pipeline.submit` calls blocked on a full queue (back-pressure), 99th percentile
    over the last few thousand calls; that wait is part of the event latency too."""


class _Metrics:
    """Counters the worker and submitters update under one lock (one acquisition per batch)."""

    def __init__(self, steps: Sequence[Step], ring_size: int) -> None:
        self.lock = threading.Lock()
        self.events_in: dict[str, int] = {domain.value: 0 for domain in Domain}
        self.events_out: dict[str, int] = {domain.value: 0 for domain in Domain}
        self.step_in: dict[str, int] = {step.step_id: 0 for step in steps}
        self.step_out: dict[str, int] = {step.step_id: 0 for step in steps}
        self.batches = 0
        self.closed_by: dict[str, int] = {"size": 0, "age": 0, "flush": 0}
        self.dropped = 0
        self.errors: dict[str, int] = {}
        self.dead_letters = 0
        self.buffered_rows = 0
        self.batch_latency = LatencyRing(ring_size)
        self.event_latency = LatencyRing(ring_size)
        self.submit_wait = LatencyRing(ring_size)

    def error(self, where: str) -> None:
        with self.lock:
            self.errors[where] = self.errors.get(where, 0) + 1


# --------------------------------------------------------------------------------------------
# Queue items
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Chunk:
    domain: Domain
    frame: pl.DataFrame
    source: str
    arrived_ns: int


@dataclass(slots=True)
class _Rejects:
    table: pa.Table


@dataclass(slots=True)
class _Control:
    kind: Literal["flush", "snapshot", "restore", "stop"]
    payload: Any = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Buffer:
    domain: Domain
    source: str
    frames: list[pl.DataFrame]
    rows: int
    arrived_ns: int


_QueueItem = _Chunk | _Rejects | _Control

_POLARS_SCHEMAS: dict[Domain, pl.Schema] = {}


def canonical_polars_schema(domain: Domain | str) -> pl.Schema:
    """The Polars schema of a domain's canonical columns (what :meth:`Pipeline.submit` expects).

    Examples
    --------
    >>> list(canonical_polars_schema("payment").items())[1]
    ('ts', Datetime(time_unit='us', time_zone='UTC'))
    """
    key = _as_domain(domain)
    schema = _POLARS_SCHEMAS.get(key)
    if schema is None:
        frame = pl.DataFrame(ARROW_SCHEMAS[key].empty_table())
        schema = _POLARS_SCHEMAS[key] = frame.schema
    return schema


def _as_domain(domain: Domain | str) -> Domain:
    try:
        return Domain(domain)
    except ValueError:
        valid = ", ".join(d.value for d in Domain)
        raise SchemaError(f"unknown domain {domain!r}; expected one of: {valid}") from None


def is_canonical_schema(domain: Domain, schema: pl.Schema) -> bool:
    """Whether ``schema`` is the domain's canonical columns, in order, optionally followed by the source
    record column ``raw`` (text) on cloud and auth events (:mod:`finsecure.ingest.source_record`).

    >>> with_raw = {d: pl.Schema({**canonical_polars_schema(d), "raw": pl.String}) for d in Domain}
    >>> is_canonical_schema(Domain.cloud, with_raw[Domain.cloud])
    True
    >>> is_canonical_schema(Domain.payment, with_raw[Domain.payment])
    False
    """
    expected = canonical_polars_schema(domain)
    if schema == expected:
        return True
    items = list(schema.items())
    return (
        domain in (Domain.cloud, Domain.auth)
        and len(items) == len(expected) + 1
        and items[-1] == ("raw", pl.String())
        and items[:-1] == list(expected.items())
    )


def _check_canonical(domain: Domain, frame: pl.DataFrame) -> None:
    expected = canonical_polars_schema(domain)
    actual = frame.schema
    if is_canonical_schema(domain, actual):
        return
    missing = [name for name in expected if name not in actual]
    extra = [name for name in actual if name not in expected]
    wrong = [
        f"{name} is {actual[name]}, expected {dtype}"
        for name, dtype in expected.items()
        if name in actual and actual[name] != dtype
    ]
    problems = []
    if missing:
        problems.append("missing column(s): " + ", ".join(missing[:5]))
    if extra:
        problems.append("unexpected column(s): " + ", ".join(extra[:5]))
    if wrong:
        problems.append("wrong type(s): " + "; ".join(wrong[:5]))
    if not problems:
        problems.append("columns are not in canonical order")
    raise SchemaError(
        f"{domain} rows must have exactly the canonical columns (see conform_batch): {'; '.join(problems)}"
    )


def _dead_letter_table(*, frame: pl.DataFrame, domain: Domain, source: str, reason: str) -> pa.Table:
    """One dead letter per row; ``raw`` is the row's canonical columns as JSON (vectorised)."""
    canonical = list(canonical_polars_schema(domain))
    rows = frame.height
    raw = frame.select(pl.struct(canonical).struct.json_encode().str.slice(0, MAX_RAW_CHARS).alias("raw"))
    now = pa.scalar(dt.datetime.now(dt.UTC), DEAD_LETTER_SCHEMA.field("ts").type)
    return pa.Table.from_arrays(
        [
            pa.repeat(now, rows),
            pa.repeat(pa.scalar(source, pa.string()), rows),
            pa.nulls(rows, pa.int64()),
            pa.repeat(pa.scalar(domain.value, pa.string()), rows),
            pa.repeat(pa.scalar(reason, pa.string()), rows),
            raw.to_series().to_arrow().cast(pa.string()),
        ],
        schema=DEAD_LETTER_SCHEMA,
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old or its new content, never a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


class Pipeline:
    """Named steps over micro-batches, fed through a bounded queue and run by one worker thread.

    Parameters
    ----------
    steps
        Run in order on every batch; ``step_id`` values must be unique and usable as file names.
    sinks
        Every batch that comes out of the last step is written to each sink, in order.
    max_rows
        A batch closes as soon as it holds this many rows; bigger chunks are sliced (zero-copy).
    max_age_s
        A batch also closes when its oldest row has waited this long, which bounds latency.
    queue_chunks
        Capacity of the submit queue, in chunks. When it is full :meth:`submit` blocks or raises
        :class:`Backpressure`.
    dead_letter_sink
        Receives dead-letter tables (:data:`finsecure.ingest.deadletter.DEAD_LETTER_SCHEMA`): rejects
        forwarded by :meth:`submit_rejects` and the rows of batches a step or sink failed on. It is only
        ever called from the worker thread, in submission order. Without one, dead letters are counted
        and dropped.
    latency_samples
        How many recent batches the latency percentiles cover.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        sinks: Sequence[Sink],
        *,
        max_rows: int = 10_000,
        max_age_s: float = 0.010,
        queue_chunks: int = 64,
        dead_letter_sink: Callable[[pa.Table], None] | None = None,
        latency_samples: int = 4096,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if max_age_s < 0:
            raise ValueError("max_age_s must not be negative")
        if queue_chunks < 1:
            raise ValueError("queue_chunks must be at least 1")
        self.steps: tuple[Step, ...] = tuple(steps)
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        _check_ids("step", [getattr(step, "step_id", None) for step in self.steps], file_safe=True)
        _check_ids("sink", [getattr(sink, "sink_id", None) for sink in self.sinks], file_safe=False)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.queue_chunks = queue_chunks
        self.dead_letter_sink = dead_letter_sink

        self._max_age_ns = int(max_age_s * 1e9)
        self._queue: queue.Queue[_QueueItem] = queue.Queue(maxsize=queue_chunks)
        self._metrics = _Metrics(self.steps, latency_samples)
        self.batch_observer: Callable[[str, int, int], None] | None = None
        """Called from the worker thread after each batch with (domain, processing ns, event latency ns)."""
        self._buffers: dict[tuple[Domain, str], _Buffer] = {}
        self._seq = 0
        self._abandon = False
        self._discarded = 0

        # Submitters register under the gate so stop() can wait for every in-flight put before it
        # queues its own marker: nothing submitted before stop() can land behind it and be lost.
        self._gate = threading.Condition()
        self._inflight = 0
        self._closing = False
        self._started = False
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._snapshot_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Start the worker thread. A pipeline runs once: it cannot be started again after :meth:`stop`."""
        with self._gate:
            if self._started:
                raise RuntimeError("the pipeline was already started (a pipeline runs once)")
            self._started = True
        self._thread = threading.Thread(target=self._run, name="finsecure-pipeline", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> PipelineStats:
        """Stop accepting rows, process (or, with ``drain=False``, discard) what is queued, and close.

        With ``drain=True`` every row submitted before the call goes through the steps and sinks before
        this returns; then sinks are flushed and steps and sinks closed. Calling it again is harmless.

        Raises
        ------
        TimeoutError
            If the worker has not finished within ``timeout`` seconds (it keeps going in the background).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._gate:
            first_call = not self._closing
            self._closing = True
            started = self._started
            while self._inflight:
                if not self._gate.wait(_remaining(deadline)):
                    raise TimeoutError(f"stop: submitters still blocked after {timeout} s")
        if not started:
            self.start()
        if first_call:
            self._abandon = not drain
            self._queue.put(_Control("stop"))
        if not self._stopped.wait(_remaining(deadline)):
            raise TimeoutError(
                f"the pipeline did not finish within {timeout} s "
                f"({self._queue.qsize()} chunk(s) still queued); it keeps draining in the background"
            )
        return self.stats()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(drain=True)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop`."""
        return self._started and not self._stopped.is_set()

    # -- input -------------------------------------------------------------------------------

    def submit(
        self,
        domain: Domain | str,
        frame: pl.DataFrame,
        *,
        source: str,
        arrived_ns: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue canonical rows of one domain. Thread-safe.

        Parameters
        ----------
        domain
            The domain of every row.
        frame
            Exactly the domain's canonical columns (:func:`canonical_polars_schema`), in order.
        source
            Where the rows came from (``http:<key prefix>``, ``replay:<file>``, ``sim``...).
        arrived_ns
            ``time.monotonic_ns()`` when the rows arrived; defaults to now.
        timeout
            ``None`` blocks while the queue is full (back-pressure); otherwise wait at most this many
            seconds and then raise :class:`Backpressure`.

        Raises
        ------
        SchemaError
            If the frame does not have the canonical columns of ``domain``.
        Backpressure
            If the queue stayed full for ``timeout`` seconds.
        PipelineClosed
            If the pipeline is stopping or stopped.
        """
        key = _as_domain(domain)
        if frame.height == 0:
            return
        _check_canonical(key, frame)
        called = time.monotonic_ns()
        arrived = called if arrived_ns is None else arrived_ns
        # Counted before the put, so a reader never sees more events out than in.
        self._count_in(key, frame.height)
        try:
            self._enqueue(_Chunk(key, frame, source, arrived), timeout)
        except BaseException:
            self._count_in(key, -frame.height)
            raise
        self._metrics.submit_wait.add(time.monotonic_ns() - called)

    def _count_in(self, domain: Domain, rows: int) -> None:
        with self._metrics.lock:
            self._metrics.events_in[domain.value] += rows

    def submit_rejects(self, table: pa.Table, *, timeout: float | None = None) -> None:
        """Queue dead letters (rows a source could not normalise) for the dead-letter sink.

        They travel through the same queue as rows, so the dead-letter sink sees them in submission order.
        """
        if table.num_rows == 0:
            return
        self._enqueue(_Rejects(table), timeout)

    def _enqueue(self, item: _QueueItem, timeout: float | None) -> None:
        with self._gate:
            if self._closing:
                raise PipelineClosed("the pipeline is stopping and accepts no more rows")
            self._inflight += 1
        try:
            if timeout is None:
                self._queue.put(item)
            else:
                try:
                    self._queue.put(item, timeout=max(timeout, 0.0))
                except queue.Full:
                    raise Backpressure(
                        f"the pipeline is busy: its queue of {self.queue_chunks} chunk(s) stayed full for "
                        f"{timeout} s; try again shortly",
                        retry_after_s=1.0,
                    ) from None
        finally:
            with self._gate:
                self._inflight -= 1
                if not self._inflight:
                    self._gate.notify_all()

    # -- control -----------------------------------------------------------------------------

    def flush(self, *, timeout: float | None = None) -> None:
        """Return once every row submitted before the call has been through the sinks and each sink flushed.

        A bus consumer calls this before acknowledging the messages it has submitted.
        """
        if self._worker_alive():
            self._call_in_worker("flush", None, timeout)
        else:
            self._flush_all()

    def snapshot(self, directory: str | os.PathLike[str], *, timeout: float | None = None) -> Path:
        """Write every stateful step's state to ``directory`` atomically and return the manifest path.

        While running, the worker first flushes its buffers (so the snapshot covers every row submitted
        before the call), then takes each step's :meth:`~Step.snapshot` between two batches, so the states
        are consistent with each other. Files are ``<step_id>.bin``, each written to a temporary file,
        fsynced and renamed; ``manifest.json`` (step ids, sizes, SHA-256, batch seq, created_at) is written
        last and marks a complete snapshot.
        """
        if self._worker_alive():
            seq, states = self._call_in_worker("snapshot", None, timeout)
        else:
            self._flush_all()
            seq, states = self._collect_states()
        path = Path(directory)
        with self._snapshot_lock:
            path.mkdir(parents=True, exist_ok=True)
            entries: list[dict[str, object]] = []
            stateless: list[str] = []
            for step_id, data in states:
                if data is None:
                    stateless.append(step_id)
                    continue
                name = f"{step_id}.bin"
                _write_atomic(path / name, data)
                entries.append(
                    {
                        "step_id": step_id,
                        "file": name,
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
            manifest = {
                "format": _MANIFEST_FORMAT,
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "batch_seq": seq,
                "steps": entries,
                "stateless_steps": stateless,
            }
            _write_atomic(path / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
            _fsync_dir(path)
        return path / MANIFEST_NAME

    def restore(self, directory: str | os.PathLike[str], *, timeout: float | None = None) -> int:
        """Load a snapshot written by :meth:`snapshot` into the steps; return its batch seq.

        Every file is checked against the manifest before any step is touched.

        Raises
        ------
        SnapshotError
            If the manifest is missing or unreadable, a file is missing or does not match its checksum,
            or the snapshot's stateful steps differ from this pipeline's.
        """
        path = Path(directory)
        seq, states = _read_snapshot(path)
        ours = {step.step_id for step in self.steps}
        unknown = sorted(set(states) - ours)
        if unknown:
            raise SnapshotError(f"snapshot {path} has state for step(s) this pipeline lacks: {unknown}")
        if self._worker_alive():
            self._call_in_worker("restore", (seq, states), timeout)
        else:
            self._load_states(seq, states)
        return seq

    def _worker_alive(self) -> bool:
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError("a step or sink cannot flush, snapshot or restore its own pipeline")
        if self._closing and self._thread is not None:
            self._thread.join()  # stop() in progress: let the worker finish, then work directly
            return False
        return self._thread is not None and self._thread.is_alive()

    def _call_in_worker(
        self, kind: Literal["flush", "snapshot", "restore"], payload: Any, timeout: float | None
    ) -> Any:
        control = _Control(kind, payload)
        self._enqueue(control, timeout)
        if not control.done.wait(timeout):
            raise TimeoutError(f"{kind} did not finish within {timeout} s")
        if control.error is not None:
            raise control.error
        return control.result

    # -- metrics -----------------------------------------------------------------------------

    @property
    def batch_latency(self) -> LatencyRing:
        """Per-batch processing time (steps + sinks)."""
        return self._metrics.batch_latency

    @property
    def event_latency(self) -> LatencyRing:
        """Per-batch event latency: batch end minus the arrival of its oldest row."""
        return self._metrics.event_latency

    @property
    def submit_wait(self) -> LatencyRing:
        """Per-:meth:`submit` time spent waiting for room in the queue (back-pressure)."""
        return self._metrics.submit_wait

    def stats(self) -> PipelineStats:
        """A consistent copy of every counter (cheap: safe to call from a metrics endpoint)."""
        m = self._metrics
        with m.lock:
            counters = (
                dict(m.events_in),
                dict(m.events_out),
                dict(m.step_in),
                dict(m.step_out),
                m.batches,
                dict(m.closed_by),
                m.dropped,
                dict(m.errors),
                m.dead_letters,
                self._seq,
                m.buffered_rows,
            )
        events_in, events_out, step_in, step_out, batches, closed_by, dropped, errors, dead, seq, buf = (
            counters
        )
        return PipelineStats(
            running=self.running,
            events_in=events_in,
            events_out=events_out,
            step_events_in=step_in,
            step_events_out=step_out,
            batches=batches,
            batches_closed_by=closed_by,
            batches_dropped=dropped,
            errors=errors,
            dead_letters=dead,
            last_seq=seq,
            queue_depth=self._queue.qsize(),
            queue_capacity=self.queue_chunks,
            buffered_rows=buf,
            batch_latency_p50_ms=m.batch_latency.p50(),
            batch_latency_p99_ms=m.batch_latency.p99(),
            event_latency_p50_ms=m.event_latency.p50(),
            event_latency_p99_ms=m.event_latency.p99(),
            submit_wait_p99_ms=m.submit_wait.p99(),
        )

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                item: _QueueItem | None
                try:
                    item = self._queue.get(timeout=self._wait_s())
                except queue.Empty:
                    item = None
                if isinstance(item, _Control) and item.kind == "stop":
                    self._guard("shutdown", "pipeline", self._shutdown)
                    item.done.set()
                    return
                if item is not None:
                    self._handle(item)
                self._guard("closing aged batches", "pipeline", self._close_aged)
        finally:
            self._stopped.set()

    def _wait_s(self) -> float | None:
        """How long the worker may block on the queue before the oldest buffer is due."""
        if not self._buffers:
            return None
        oldest = min(buffer.arrived_ns for buffer in self._buffers.values())
        return max(0.0, (oldest + self._max_age_ns - time.monotonic_ns()) / 1e9)

    def _handle(self, item: _QueueItem) -> None:
        if self._abandon:
            if isinstance(item, _Control):
                item.done.set()
            elif isinstance(item, _Chunk):
                self._discarded += item.frame.height
            return
        if isinstance(item, _Control):
            try:
                item.result = self._control(item)
            except Exception as exc:  # the caller re-raises it
                item.error = exc
            finally:
                item.done.set()
            return
        try:
            if isinstance(item, _Rejects):
                self._dead_letter(item.table)
            else:
                self._add(item)
        except Exception:
            # A bug here must not kill the worker (stop() would then hang): count it and go on.
            self._metrics.error("pipeline")
            logger.exception("pipeline: could not handle a queued %s", type(item).__name__)

    def _control(self, item: _Control) -> Any:
        if item.kind == "flush":
            self._flush_all()
            return None
        if item.kind == "snapshot":
            self._flush_all()
            return self._collect_states()
        if item.kind == "restore":
            seq, states = item.payload
            self._load_states(seq, states)
            return None
        raise AssertionError(f"unexpected control {item.kind}")

    def _shutdown(self) -> None:
        if self._abandon:
            dropped = self._discarded + sum(buffer.rows for buffer in self._buffers.values())
            while True:
                try:
                    leftover = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(leftover, _Chunk):
                    dropped += leftover.frame.height
                elif isinstance(leftover, _Control):
                    leftover.done.set()
            self._buffers.clear()
            if dropped:
                logger.warning("pipeline stopped without draining: %d row(s) discarded", dropped)
        else:
            self._close_buffers("flush")
        for sink in self.sinks:
            self._guard(f"sink {sink.sink_id} close", sink.sink_id, sink.close)
        for step in self.steps:
            self._guard(f"step {step.step_id} close", step.step_id, step.close)

    def _guard(self, what: str, where: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            self._metrics.error(where)
            logger.exception("pipeline: %s failed", what)

    def _flush_all(self) -> None:
        self._close_buffers("flush")
        for sink in self.sinks:
            sink.flush()

    def _collect_states(self) -> tuple[int, list[tuple[str, bytes | None]]]:
        return self._seq, [(step.step_id, step.snapshot()) for step in self.steps]

    def _load_states(self, seq: int, states: Mapping[str, bytes]) -> None:
        missing = [step.step_id for step in self.steps if _is_stateful(step) and step.step_id not in states]
        if missing:
            raise SnapshotError(f"snapshot has no state for stateful step(s): {missing}")
        for step in self.steps:
            if step.step_id in states:
                step.restore(states[step.step_id])
        self._seq = max(self._seq, seq)

    # -- batching ------------------------------------------------------------------------------

    def _add(self, chunk: _Chunk) -> None:
        key = (chunk.domain, chunk.source)
        frame = chunk.frame
        rows = frame.height
        max_rows = self.max_rows
        offset = 0
        buffer = self._buffers.get(key)
        if buffer is not None:
            need = max_rows - buffer.rows
            if rows < need:
                buffer.frames.append(frame)
                buffer.rows += rows
                buffer.arrived_ns = min(buffer.arrived_ns, chunk.arrived_ns)
                self._add_buffered(rows)
                return
            buffer.frames.append(frame.slice(0, need))
            offset = need
            del self._buffers[key]
            self._add_buffered(-buffer.rows)
            self._emit(
                chunk.domain, chunk.source, buffer.frames, min(buffer.arrived_ns, chunk.arrived_ns), "size"
            )
        # Whole batches straight out of the chunk: zero-copy slices, never buffered.
        while rows - offset >= max_rows:
            self._emit(chunk.domain, chunk.source, [frame.slice(offset, max_rows)], chunk.arrived_ns, "size")
            offset += max_rows
        if offset < rows:
            rest = frame.slice(offset) if offset else frame
            self._buffers[key] = _Buffer(chunk.domain, chunk.source, [rest], rest.height, chunk.arrived_ns)
            self._add_buffered(rest.height)

    def _add_buffered(self, rows: int) -> None:
        with self._metrics.lock:
            self._metrics.buffered_rows += rows

    def _close_aged(self) -> None:
        if not self._buffers:
            return
        due = time.monotonic_ns() - self._max_age_ns
        for key in [key for key, buffer in self._buffers.items() if buffer.arrived_ns <= due]:
            self._close_buffer(key, "age")

    def _close_buffers(self, reason: CloseReason) -> None:
        for key in list(self._buffers):
            self._close_buffer(key, reason)

    def _close_buffer(self, key: tuple[Domain, str], reason: CloseReason) -> None:
        buffer = self._buffers.pop(key)
        self._add_buffered(-buffer.rows)
        self._emit(buffer.domain, buffer.source, buffer.frames, buffer.arrived_ns, reason)

    def _emit(
        self, domain: Domain, source: str, frames: list[pl.DataFrame], arrived_ns: int, reason: CloseReason
    ) -> None:
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=False)
        self._seq += 1
        self._process(Batch(domain, frame, source, self._seq, arrived_ns), reason)

    def _process(self, batch: Batch, reason: CloseReason) -> None:
        started = time.perf_counter_ns()
        step_counts: list[tuple[str, int, int]] = []
        output: Batch | None = None
        current = batch
        failed = False
        for step in self.steps:
            rows_in = current.frame.height
            try:
                result = step.process(current)
            except Exception as exc:
                self._fail(batch, "step", step.step_id, exc)
                step_counts.append((step.step_id, rows_in, 0))
                failed = True
                break
            step_counts.append((step.step_id, rows_in, 0 if result is None else result.frame.height))
            if result is None:
                break
            current = result
        else:
            output = current
        if output is not None:
            for sink in self.sinks:
                try:
                    sink.write(output)
                except Exception as exc:
                    self._fail(batch, "sink", sink.sink_id, exc)
        finished = time.perf_counter_ns()
        m = self._metrics
        with m.lock:
            m.batches += 1
            m.closed_by[reason] += 1
            for step_id, rows_in, rows_out in step_counts:
                m.step_in[step_id] += rows_in
                m.step_out[step_id] += rows_out
            if output is not None:
                m.events_out[batch.domain.value] += output.frame.height
            elif not failed:
                m.dropped += 1
        m.batch_latency.add(finished - started)
        waited_ns = time.monotonic_ns() - batch.arrived_ns
        m.event_latency.add(waited_ns)
        observer = self.batch_observer
        if observer is not None:
            elapsed_ns = finished - started
            self._guard(
                "observing a batch",
                "batch_observer",
                lambda: observer(batch.domain.value, elapsed_ns, waited_ns),
            )

    def _fail(self, batch: Batch, kind: str, where: str, exc: Exception) -> None:
        self._metrics.error(where)
        logger.error(
            "%s %s failed on batch %d (%s, %d rows from %s): %s: %s",
            kind,
            where,
            batch.seq,
            batch.domain,
            len(batch),
            batch.source,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        reason = f"{kind} {where} failed: {type(exc).__name__}"
        try:
            table = _dead_letter_table(
                frame=batch.frame, domain=batch.domain, source=batch.source, reason=reason
            )
        except Exception:
            self._metrics.error("dead_letter")
            logger.exception("pipeline: could not build dead letters for batch %d", batch.seq)
            return
        self._dead_letter(table)

    def _dead_letter(self, table: pa.Table) -> None:
        with self._metrics.lock:
            self._metrics.dead_letters += table.num_rows
        if self.dead_letter_sink is None:
            return
        try:
            self.dead_letter_sink(table)
        except Exception:
            self._metrics.error("dead_letter")
            logger.exception("pipeline: the dead-letter sink failed on %d row(s)", table.num_rows)


def _is_stateful(step: Step) -> bool:
    """A step is stateful when its class overrides :meth:`Step.snapshot`."""
    return type(step).snapshot is not Step.snapshot


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _check_ids(kind: str, ids: Sequence[object], *, file_safe: bool) -> None:
    seen: set[str] = set()
    for index, item in enumerate(ids):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{kind} #{index} has no {kind}_id; give every {kind} a unique name")
        if file_safe and _STEP_ID.fullmatch(item) is None:
            raise ValueError(
                f"{kind}_id {item!r} must be 1-128 letters, digits, '_', '.' or '-' "
                "(it names a snapshot file)"
            )
        if item in seen:
            raise ValueError(f"{kind}_id {item!r} is used twice; {kind} ids must be unique")
        seen.add(item)


def _read_snapshot(path: Path) -> tuple[int, dict[str, bytes]]:
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_bytes())
        if manifest.get("format") != _MANIFEST_FORMAT:
            raise SnapshotError(f"{manifest_path}: unsupported snapshot format {manifest.get('format')!r}")
        seq = int(manifest["batch_seq"])
        entries = list(manifest["steps"])
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot in {path}: {MANIFEST_NAME} is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{manifest_path} is not a valid snapshot manifest: {exc}") from None
    states: dict[str, bytes] = {}
    for entry in entries:
        step_id, name = str(entry["step_id"]), str(entry["file"])
        if _STEP_ID.fullmatch(step_id) is None or name != f"{step_id}.bin":
            raise SnapshotError(f"{manifest_path}: bad entry for step {step_id!r}")
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {path} is incomplete: {name} is missing") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SnapshotError(f"snapshot {path} is inconsistent: {name} does not match the manifest")
        states[step_id] = data
    return seq, states
