"""One partition of the bus, owned by one worker: its own pipeline, feature state, lake staging and
checkpoint.

Delivery guarantees (at-least-once delivery, effectively-once results)
-----------------------------------------------------------------------
Messages of ``events.*.<partition>`` are read from the durable consumer ``finsecure-p<partition>``. Every
``commit_every_s`` seconds (or ``commit_every_messages`` messages) the partition *commits*:

1. the pipeline is flushed: alerts and scored events are in the database (idempotent on the alert key and
   ``event_id``), and lake files are written to ``staging/e<epoch>/`` (not yet in the lake);
2. the feature state is snapshotted to ``snap-<epoch>/``;
3. ``checkpoint.json`` (epoch, the stream sequences of the messages done in this epoch, snapshot) is
   replaced atomically: **this is the commit point**;
4. the epoch's staged files are moved into the lake, and only then
5. the messages are acknowledged on the bus.

After a crash, recovery reads the checkpoint, finishes moving the files of committed epochs, deletes the
staging of the epoch that never committed, restores the snapshot, and lets the bus redeliver what was
not acknowledged (after the consumer's ack wait, for messages the dead owner held): messages listed as
done in the checkpoint (their acknowledgement was lost) are acknowledged without processing, the rest
are processed again from the restored state. A message delivered twice to the same runner (an ack wait
that ran out during a slow commit) is recognised by its sequence and processed once. Every event
therefore reaches the lake exactly once, and database writes are upserts.

When a database write of the epoch (alerts, scored events, dead letters) fails because the database is
away, the epoch is not committed: the commit raises :class:`DatabaseAway`, the runner stops, the worker
starts the partition again from its checkpoint, and the epoch's messages are processed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import nats.js.errors
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from finsecure.bus.base import Bus, BusLoop, BusSource, Message
from finsecure.bus.nats import NatsBus
from finsecure.core.logging import correlation_id
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA
from finsecure.lake.sinks import DeadLetterSink, ScoredEventSink
from finsecure.lake.writer import TEMP_SUFFIX, LakeWriter
from finsecure.ops.metrics import Metrics
from finsecure.pipeline.batch import Batch, Sink, SourceChunk, Step
from finsecure.pipeline.engine import Pipeline
from finsecure.worker.publish import PUBLISHED_NS_HEADER

__all__ = [
    "Checkpoint",
    "DatabaseAway",
    "PartitionLock",
    "PartitionRunner",
    "StagedLakeSink",
    "database_away",
    "durable_name",
    "subject_of",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.json"

#: How many recently taken stream sequences a runner remembers to recognise a second delivery.
RECENT_SEQUENCES = 100_000


def durable_name(partition: int) -> str:
    """The bus consumer of one partition (shared by whichever worker owns it)."""
    return f"finsecure-p{partition}"


def subject_of(partition: int, prefix: str = "events") -> str:
    """Every domain's messages of one partition.

    >>> subject_of(3)
    'events.*.3'
    """
    return f"{prefix}.*.{partition}"


class DatabaseAway(RuntimeError):
    """A database write of the current epoch failed because the database could not be reached: the
    epoch is not committed, and its messages are processed again from the last checkpoint."""


def database_away(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is unreachable or restarting (worth redoing the epoch), rather
    than a bad row (which goes to the dead letters as in the embedded pipeline)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def commit_spread(partition: int) -> float:
    """A fixed factor of 1 to 1.25 on each partition's commit interval, so that the partitions of a worker,
    started together, drift apart and do not all flush and snapshot at the same moment.

    >>> [round(commit_spread(p), 3) for p in range(4)]
    [1.0, 1.155, 1.059, 1.214]
    """
    return 1.0 + 0.25 * ((partition * 0.6180339887) % 1.0)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Checkpoint:
    """What a partition has made durable."""

    epoch: int = 0
    """Commits so far; lake files staged under a later epoch were never committed."""
    seq: int = 0
    """Highest stream sequence whose results are durable (for people; recovery uses :attr:`done`)."""
    done: tuple[int, ...] = ()
    """Stream sequences done but perhaps not acknowledged: the last epoch's messages, plus those of an
    earlier crash not seen again yet. Every other message the bus redelivers is processed."""
    snapshot: str | None = None
    """Directory (under the partition's) of the feature state at ``seq``."""

    @classmethod
    def load(cls, directory: Path) -> Checkpoint:
        """The partition's checkpoint (the empty one when it has never committed)."""
        path = directory / CHECKPOINT_NAME
        if not path.exists():
            return cls()
        data: dict[str, Any] = json.loads(path.read_text())
        return cls(
            epoch=int(data["epoch"]),
            seq=int(data["seq"]),
            done=tuple(int(seq) for seq in data.get("done", ())),
            snapshot=data.get("snapshot"),
        )

    def save(self, directory: Path) -> None:
        """Replace the checkpoint atomically and durably (temp file, fsync, rename, fsync dir)."""
        temp = directory / f".{CHECKPOINT_NAME}.tmp"
        with temp.open("w") as handle:
            json.dump(asdict(self), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, directory / CHECKPOINT_NAME)
        _fsync_dir(directory)


class PartitionLock:
    """An exclusive, advisory lock on a partition's directory: one owner at a time.

    The kernel releases it when the owning process dies, even by ``kill -9``, so another worker can take
    the partition over at once (on one host, or on a shared volume that supports ``flock``).
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "owner.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; ``False`` when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _staged_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*.parquet")):
        if not path.name.startswith(".") and not path.name.endswith(TEMP_SUFFIX):
            yield path


def publish_staged(staging: Path, lake: Path) -> int:
    """Move one epoch's finished files into the lake (same relative paths); idempotent; returns how many."""
    if not staging.is_dir():
        return 0
    moved = 0
    directories: set[Path] = set()
    for path in _staged_files(staging):
        target = lake / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        directories.add(target.parent)
        moved += 1
    for directory in directories:
        _fsync_dir(directory)
    shutil.rmtree(staging, ignore_errors=True)
    return moved


class StagedLakeSink(Sink):
    """Writes a partition's batches to ``<staging>/e<epoch>/``; :meth:`roll` starts the next epoch."""

    sink_id = "lake"

    def __init__(self, staging_root: Path, epoch: int) -> None:
        self.staging_root = staging_root
        self._lock = threading.Lock()
        self.epoch = epoch
        self.writer = self._writer(epoch)

    def staging(self, epoch: int) -> Path:
        return self.staging_root / f"e{epoch:010d}"

    def _writer(self, epoch: int) -> LakeWriter:
        # Files are written at commit (flush) or when 250k rows of a day pile up, never by age.
        return LakeWriter(self.staging(epoch), max_age_s=24 * 3600.0)

    def write(self, batch: Batch) -> None:
        with self._lock:
            self.writer.write(batch.domain, batch.frame)

    def write_dead_letters(self, table: Any) -> None:
        with self._lock:
            self.writer.write_dead_letters(table)

    def flush(self) -> None:
        with self._lock:
            self.writer.flush()

    def roll(self, epoch: int) -> None:
        """Close the current epoch's writer (everything written) and open the next one's."""
        with self._lock:
            self.writer.close()
            self.epoch = epoch
            self.writer = self._writer(epoch)

    def close(self) -> None:
        with self._lock:
            self.writer.close()


class _StagedDeadLetters(DeadLetterSink):
    """Dead letters to the database and to the partition's staged lake files."""

    def __init__(
        self,
        lake: StagedLakeSink,
        session_factory: Callable[[], Session],
        on_database_away: Callable[[BaseException], None],
    ) -> None:
        super().__init__(lake.writer, session_factory)
        self.lake = lake
        self.on_database_away = on_database_away

    def write(self, table: Any) -> int:
        self.writer = self.lake.writer
        try:
            return super().write(table)
        except Exception as exc:
            if not database_away(exc):
                raise
            self.on_database_away(exc)  # the epoch is redone: these rows come again
            return 0


class _ScoredEvents(ScoredEventSink):
    """Scored events to the database; when the database is away the epoch is marked for redoing (the
    pipeline would otherwise turn the batch into dead letters and the commit would go ahead)."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        threshold: float,
        on_database_away: Callable[[BaseException], None],
    ) -> None:
        super().__init__(session_factory, threshold)
        self.on_database_away = on_database_away

    def write(self, batch: Batch) -> None:
        try:
            super().write(batch)
        except Exception as exc:
            if not database_away(exc):
                raise
            self.on_database_away(exc)


class _PartitionSource(BusSource):
    """A bus source that remembers when ingest published each message and each of its events (for the
    ingest-to-alert latency: the worker looks the events of its rule hits up in :attr:`event_published_ns`,
    which the runner empties at every commit, when every event taken so far has been through detection).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.event_published_ns: dict[str, int] = {}

    def _to_chunk(self, message: Message) -> SourceChunk:
        stamp = message.headers.get(PUBLISHED_NS_HEADER)
        chunk = super()._to_chunk(message)
        if stamp is not None and stamp.isdigit():
            published = int(stamp)
            if chunk.frame.height and "event_id" in chunk.frame.columns:
                self.event_published_ns.update(dict.fromkeys(chunk.frame["event_id"].to_list(), published))
        return chunk


class PartitionRunner:
    """Consumes one partition into its own pipeline; see the module docstring for the commit protocol.

    Parameters
    ----------
    partition
        Which partition.
    bus, loop
        The bus (shared by the worker's partitions) and the loop it runs on.
    directory
        The partition's state directory (checkpoint, snapshots, staging); the caller holds its lock.
    lake_dir
        The shared lake.
    steps
        The partition's own steps (feature state is per partition).
    session_factory
        For scored events and dead letters.
    """

    def __init__(
        self,
        *,
        partition: int,
        bus: Bus,
        loop: BusLoop,
        directory: Path,
        lake_dir: Path,
        steps: Sequence[Step],
        session_factory: Callable[[], Session],
        store_score_threshold: float = 0.5,
        metrics: Metrics | None = None,
        commit_every_s: float = 1.0,
        commit_every_messages: int = 256,
        ack_wait_s: float = 60.0,
        max_rows: int = 10_000,
        max_age_s: float = 0.05,
        subject_prefix: str = "events",
    ) -> None:
        self.partition = partition
        self.bus = bus
        self.loop = loop
        self.directory = directory
        self.lake_dir = lake_dir
        self.metrics = metrics
        self.label = str(partition)
        self.commit_every_s = commit_every_s
        self.commit_every_messages = commit_every_messages
        self.ack_wait_s = ack_wait_s
        self.subject_prefix = subject_prefix
        self.checkpoint = Checkpoint.load(directory)
        self.lake = StagedLakeSink(directory / "staging", self.checkpoint.epoch + 1)
        self.dead_letters = _StagedDeadLetters(self.lake, session_factory, self.database_failed)
        self._database_error: BaseException | None = None
        self.pipeline = Pipeline(
            steps,
            [self.lake, _ScoredEvents(session_factory, store_score_threshold, self.database_failed)],
            max_rows=max_rows,
            max_age_s=max_age_s,
            queue_chunks=8,
            dead_letter_sink=self._write_dead_letters,
        )
        self.source: _PartitionSource | None = None
        self.processed_messages = 0
        self.skipped_messages = 0
        self.commits = 0
        self._max_seq = self.checkpoint.seq
        self._done_before = set(self.checkpoint.done)  # what a crashed owner finished but did not ack
        self._this_epoch: set[int] = set()
        # Sequences this runner has taken lately: a message whose ack wait ran out while it waited in the
        # prefetch buffer or a slow commit comes a second time, and must not be processed twice.
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._since_commit = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _write_dead_letters(self, table: Any) -> None:
        if table.num_rows:
            self.dead_letters.write(table.select(DEAD_LETTER_SCHEMA.names))

    def database_failed(self, exc: BaseException) -> None:
        """A result of this epoch could not reach the database: the next commit fails instead of
        acknowledging, and the partition restarts from its checkpoint (called from any thread)."""
        if self._database_error is None:
            logger.warning(
                "partition %d: the database is away (%s); this epoch will be redone", self.partition, exc
            )
            self._database_error = exc

    def published_at(self, event_ids: Sequence[str]) -> list[int | None]:
        """When ingest published each event (wall-clock ns), for events taken since the last commit."""
        source = self.source
        if source is None:
            return [None] * len(event_ids)
        known = source.event_published_ns
        return [known.get(event_id) for event_id in event_ids]

    # -- lifecycle ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo what a crashed owner left, and restore the feature state."""
        staging = self.directory / "staging"
        if staging.is_dir():
            for epoch_dir in sorted(staging.iterdir()):
                epoch = int(epoch_dir.name.removeprefix("e")) if epoch_dir.name[1:].isdigit() else -1
                if 0 < epoch <= self.checkpoint.epoch:
                    moved = publish_staged(epoch_dir, self.lake_dir)
                    logger.info(
                        "partition %d: published %d file(s) of epoch %d", self.partition, moved, epoch
                    )
                else:  # never committed (the crashed owner's last epoch): its events come again
                    shutil.rmtree(epoch_dir, ignore_errors=True)
                    logger.info("partition %d: dropped uncommitted %s", self.partition, epoch_dir.name)
        if self.checkpoint.snapshot:
            self.pipeline.restore(self.directory / self.checkpoint.snapshot)
        for old in self.directory.glob("snap-*"):
            if old.name != self.checkpoint.snapshot:
                shutil.rmtree(old, ignore_errors=True)

    def _forget_acknowledged(self) -> None:
        """Drop from the done-list what the bus has acknowledged for sure (it never comes again)."""
        bus = self.bus
        if not isinstance(bus, NatsBus) or not self._done_before:
            return

        async def ack_floor() -> int:
            js = await bus.connect()
            try:
                info = await js.consumer_info(bus.stream, durable_name(self.partition))
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0

        floor = self.loop.run(ack_floor(), 30)
        self._done_before = {seq for seq in self._done_before if seq > floor}

    def start(self) -> PartitionRunner:
        """Recover, then consume on a thread of its own."""
        self.recover()
        self._forget_acknowledged()
        self.pipeline.start()
        if self.metrics is not None:
            self.metrics.watch_pipeline(self.pipeline, f"p{self.partition}")
        self.source = _PartitionSource(
            self.bus,
            subject_of(self.partition, self.subject_prefix),
            durable_name(self.partition),
            loop=self.loop,
            idle_timeout_s=0.5,
            ack_wait_s=self.ack_wait_s,
            source_id=f"bus:p{self.partition}",
            commit_to=self,
            commit_every_s=self.commit_every_s * commit_spread(self.partition),
            commit_every_messages=self.commit_every_messages,
            prefetch=16,
        )
        self._thread = threading.Thread(target=self._run, name=f"finsecure-p{self.partition}", daemon=True)
        self._thread.start()
        logger.info(
            "partition %d: started at epoch %d, stream sequence %d",
            self.partition,
            self.checkpoint.epoch,
            self.checkpoint.seq,
        )
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        source = self.source
        assert source is not None  # noqa: S101 - set by start()
        correlation_id.set(f"p{self.partition}")
        try:
            while not self._stop.is_set():
                for chunk in source.chunks():
                    if self._stop.is_set():
                        break  # not submitted, not acknowledged: delivered again to the next owner
                    self._submit(source, chunk)
        except BaseException as exc:
            self.error = exc
            logger.exception("partition %d stopped after an error", self.partition)

    def _submit(self, source: _PartitionSource, chunk: SourceChunk) -> None:
        seq = chunk.offset_end or 0
        seen = seq in self._recent
        self._recent[seq] = None
        while len(self._recent) > RECENT_SEQUENCES:
            self._recent.popitem(last=False)
        self._this_epoch.add(seq)
        if seq in self._done_before or seen:
            # Committed before a crash lost the acknowledgement, or a second delivery of a message this
            # runner holds: acknowledge only (at the next commit, with the results of the first copy).
            self._done_before.discard(seq)
            self.skipped_messages += 1
            self._since_commit += 1
            if self.metrics is not None:
                self.metrics.redelivered.labels(self.label).inc()
            return
        if chunk.frame.height:
            # A batch closes ``max_age_s`` after its first rows reached this worker, not after they were
            # published: when the worker is behind, rows come in already old, and closing a batch per
            # message then would multiply the fixed cost of a batch just when time is short. Messages
            # waiting in a backlog thus gather into larger batches. (Ingest-to-alert latency is timed
            # from publication, per rule hit: see Worker.write_hits.)
            source_id = f"bus:p{self.partition}"
            self.pipeline.submit(chunk.domain, chunk.frame, source=source_id)
        if chunk.rejects is not None and chunk.rejects.num_rows:
            self.pipeline.submit_rejects(chunk.rejects)
        self.processed_messages += 1
        self._since_commit += 1
        self._max_seq = max(self._max_seq, seq)

    # -- committing (called by the source, on this partition's thread) ------------------------

    def flush(self, *, timeout: float | None = None) -> None:
        """Make everything submitted so far durable and move the checkpoint (steps 1-4 above)."""
        started = time.perf_counter()
        self.pipeline.flush(timeout=timeout)
        if self._database_error is not None:
            error, self._database_error = self._database_error, None
            raise DatabaseAway(
                f"partition {self.partition}: a database write failed ({type(error).__name__}); "
                "the epoch is redone from the last checkpoint"
            ) from error
        if self.source is not None:
            self.source.event_published_ns.clear()  # every event taken so far is through detection
        epoch = self.lake.epoch
        snapshot = f"snap-{epoch:010d}"
        self.pipeline.snapshot(self.directory / snapshot, timeout=timeout)
        previous = self.checkpoint
        self.lake.roll(epoch + 1)  # closes the epoch's writer: every staged file is on disk
        done = tuple(sorted(self._this_epoch | self._done_before))
        self.checkpoint = Checkpoint(epoch=epoch, seq=self._max_seq, done=done, snapshot=snapshot)
        self.checkpoint.save(self.directory)
        publish_staged(self.lake.staging(epoch), self.lake_dir)
        if previous.snapshot and previous.snapshot != snapshot:
            shutil.rmtree(self.directory / previous.snapshot, ignore_errors=True)
        self.commits += 1
        if self.metrics is not None:
            self.metrics.commits.labels(self.label).inc()
            self.metrics.bus_acked.labels(self.label).inc(self._since_commit)
            self.metrics.commit_seconds.labels(self.label).observe(time.perf_counter() - started)
        self._this_epoch = set()
        self._since_commit = 0

    def stop(self, *, timeout: float = 30.0) -> None:
        """Commit what was processed, acknowledge it, and release the bus subscription and pipeline."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        source = self.source
        if source is not None:
            if self.error is None:
                with contextlib.suppress(Exception):
                    mark = source.mark()
                    self.flush(timeout=timeout)
                    source.ack_through(mark)
            source.close()
        self.pipeline.stop(drain=False, timeout=timeout)
        self.lake.close()
        logger.info(
            "partition %d: stopped after %d message(s) processed, %d second deliveries acknowledged only",
            self.partition,
            self.processed_messages,
            self.skipped_messages,
        )
        if self.metrics is not None:
            self.metrics.forget_pipeline(f"p{self.partition}")
