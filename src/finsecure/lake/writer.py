"""Appending batches to the event lake: Parquet files partitioned by domain and day.

Layout (Hive style, so DuckDB, Polars and Spark read it as is, locally or on object storage)::

    <root>/domain=payment/date=2024-05-01/part-1714564800123-000007-1f2e3d4c.parquet
    <root>/dead_letter/date=2024-05-01/part-...parquet

The day comes from each row's ``ts`` in UTC; a batch that spans midnight is split. Small batches are
buffered per partition and written as one file when the buffer reaches ``max_rows`` rows or ``max_age_s``
seconds, and on :meth:`LakeWriter.flush`. A file is written under a hidden temporary name and renamed
into place, so readers never see a partial file and a crash mid-write leaves earlier files untouched.

Example
-------
>>> import datetime as dt, tempfile
>>> import polars as pl
>>> frame = pl.DataFrame({
...     "event_id": ["a", "b"],
...     "ts": [dt.datetime(2024, 5, 1, 23, 59, tzinfo=dt.UTC), dt.datetime(2024, 5, 2, 0, 1, tzinfo=dt.UTC)],
... })
>>> with tempfile.TemporaryDirectory() as tmp:
...     with LakeWriter(Path(tmp)) as writer:
...         written_now = writer.write("payment", frame)
...     sorted(p.parent.name for p in Path(tmp).rglob("*.parquet"))
['date=2024-05-01', 'date=2024-05-02']
"""

from __future__ import annotations

import datetime as dt
import errno
import io
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import cast

import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA

logger = logging.getLogger(__name__)

#: The partition area of dead letters (beside the ``domain=<d>`` areas).
DEAD_LETTER_AREA = "dead_letter"

#: Suffix of files being written; readers glob ``*.parquet`` and never see them.
TEMP_SUFFIX = ".tmp"

_DAY_US = 86_400_000_000
_EPOCH = dt.date(1970, 1, 1)


class LakeWriteError(RuntimeError):
    """A lake file could not be written. Files written before are intact; the rows stay buffered.

    Attributes
    ----------
    path
        The file that could not be written.
    disk_full
        True when the device has no space left (``ENOSPC``) or the quota is exhausted (``EDQUOT``).
    """

    def __init__(self, message: str, *, path: Path, disk_full: bool) -> None:
        super().__init__(message)
        self.path = path
        self.disk_full = disk_full


@dataclass(slots=True)
class _Buffer:
    """Rows waiting for one partition's next file."""

    frames: list[pl.DataFrame] = field(default_factory=list)
    rows: int = 0
    started: float = 0.0


def _write_bytes(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
    """Write ``data`` to a new file at ``path`` (tests replace this to simulate a full disk)."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partition_dir(root: Path, area: str, day: str) -> Path:
    """The directory of one partition.

    Parameters
    ----------
    root
        The lake root.
    area
        A domain name, or :data:`DEAD_LETTER_AREA`.
    day
        ``YYYY-MM-DD`` (UTC).

    Examples
    --------
    >>> partition_dir(Path("/lake"), "auth", "2024-05-01").as_posix()
    '/lake/domain=auth/date=2024-05-01'
    >>> partition_dir(Path("/lake"), "dead_letter", "2024-05-01").as_posix()
    '/lake/dead_letter/date=2024-05-01'
    """
    top = area if area == DEAD_LETTER_AREA else f"domain={area}"
    return root / top / f"date={day}"


class LakeWriter:
    """Buffers batches per partition and writes them to the lake as zstd-compressed Parquet files.

    Parameters
    ----------
    root
        The lake directory (created on the first write).
    max_rows
        A partition's buffer is written as a file once it holds this many rows.
    max_age_s
        ... or once its oldest row has waited this long (checked on every write and by
        :meth:`flush_expired`, which a caller with no steady stream should call on a timer).
    compression_level
        zstd level (1 is fast, higher is smaller and slower).
    row_group_size
        Rows per Parquet row group: smaller groups let readers skip more by statistics.
    fsync
        Make each file and its directory entry durable before the write returns.
    background
        Encode and write files on a worker thread, so that :meth:`write` returns at once even when a
        partition rolls (a 250k-row file takes a few hundred milliseconds on two cores). Files then
        appear shortly after the call; :meth:`flush` waits for them. A failed background write is
        raised by the next :meth:`write` or :meth:`flush`, with its rows buffered again.
    max_pending_files
        In the background, at most this many files wait for the disk; beyond it :meth:`write`
        waits (back-pressure instead of unbounded memory).
    clock
        Seconds on a monotonic clock (tests pass a fake one).

    Notes
    -----
    Columns added by pipeline steps (features, scores) are kept, so files of one partition may have
    different columns; read them with DuckDB's ``union_by_name`` (see :mod:`finsecure.lake.query`).
    Safe to call from several threads; writes are serialised (one worker thread in the background).
    """

    def __init__(
        self,
        root: Path,
        *,
        max_rows: int = 250_000,
        max_age_s: float = 5.0,
        compression_level: int = 3,
        row_group_size: int = 64_000,
        fsync: bool = True,
        background: bool = False,
        max_pending_files: int = 2,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if max_age_s < 0:
            raise ValueError("max_age_s must not be negative")
        self.root = Path(root)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.compression_level = compression_level
        self.row_group_size = row_group_size
        self.fsync = fsync
        self.background = background
        self.max_pending_files = max(1, max_pending_files)
        self._clock = clock or time.monotonic
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: list[tuple[tuple[str, str], _Buffer, Future[list[Path]]]] = []
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._closed = False

    # -- public API --------------------------------------------------------------------------------

    def write(self, domain: Domain | str, data: pl.DataFrame | pa.Table | pa.RecordBatch) -> list[Path]:
        """Buffer the rows of one domain, writing any partition that is due.

        Parameters
        ----------
        domain
            The domain of every row (a :class:`~finsecure.event.schemas.Domain` or its name).
        data
            Canonical rows (a ``ts`` column, time-zone aware), possibly with extra columns.

        Returns
        -------
        list[pathlib.Path]
            Files written by this call (often none: the rows wait in a buffer); in the background,
            the files finished since the previous call.

        Raises
        ------
        ValueError
            If the domain is unknown or ``ts`` is missing, naive or null.
        LakeWriteError
            If a due file could not be written (e.g. the disk is full).
        """
        try:
            area = Domain(domain).value
        except ValueError:
            valid = ", ".join(d.value for d in Domain)
            raise ValueError(f"unknown domain {domain!r}; expected one of: {valid}") from None
        return self._add(area, data)

    def write_dead_letters(self, table: pa.Table | pl.DataFrame) -> list[Path]:
        """Buffer dead letters (rows of :data:`~finsecure.ingest.deadletter.DEAD_LETTER_SCHEMA`).

        Raises
        ------
        ValueError
            If the table does not have the dead-letter columns.
        LakeWriteError
            If a due file could not be written.
        """
        if isinstance(table, pa.Table):
            try:
                table = table.select(DEAD_LETTER_SCHEMA.names).cast(DEAD_LETTER_SCHEMA)
            except (KeyError, pa.ArrowInvalid, ValueError) as exc:
                raise ValueError(f"not a dead-letter table ({DEAD_LETTER_SCHEMA.names}): {exc}") from None
        return self._add(DEAD_LETTER_AREA, table)

    def flush(self) -> list[Path]:
        """Write every buffered partition now (and wait for background writes).

        Returns
        -------
        list[pathlib.Path]
            Files finished by this call (in the background: since the previous call).

        Raises
        ------
        LakeWriteError
            For the first partition that fails; the others are still attempted and the failed
            rows stay buffered for the next flush.
        """
        with self._lock:
            return self._write_due(list(self._buffers), wait=True)

    def flush_expired(self) -> list[Path]:
        """Write the partitions whose oldest buffered row is older than ``max_age_s``."""
        with self._lock:
            return self._write_due(self._expired())

    def close(self) -> None:
        """Flush and refuse further writes (idempotent)."""
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                if not self._buffers and not self._jobs:
                    self._closed = True
                    if self._executor is not None:
                        self._executor.shutdown(wait=True)
                        self._executor = None

    @property
    def pending_rows(self) -> int:
        """Rows buffered or being written, not yet in a file."""
        with self._lock:
            buffered = sum(buffer.rows for buffer in self._buffers.values())
            return buffered + sum(buffer.rows for _, buffer, _ in self._jobs)

    def sweep_temp_files(self, *, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by a writer that crashed mid-write; returns how many.

        Only files older than ``older_than_s`` are touched, so another live writer's file is safe.
        """
        if not self.root.exists():
            return 0
        deadline = time.time() - older_than_s
        removed = 0
        for path in self.root.rglob(f".part-*{TEMP_SUFFIX}"):
            try:
                if path.stat().st_mtime < deadline:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def __enter__(self) -> LakeWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _add(self, area: str, data: pl.DataFrame | pa.Table | pa.RecordBatch) -> list[Path]:
        frame = _to_frame(data)
        if frame.height == 0:
            return []
        frame = _utc_ts(area, frame)
        with self._lock:
            if self._closed:
                raise RuntimeError("this LakeWriter is closed")
            now = self._clock()
            due: list[tuple[str, str]] = []
            for day, part in _split_by_day(frame):
                key = (area, day)
                buffer = self._buffers.get(key)
                if buffer is None:
                    buffer = self._buffers[key] = _Buffer(started=now)
                buffer.frames.append(part)
                buffer.rows += part.height
                if buffer.rows >= self.max_rows:
                    due.append(key)
            due.extend(key for key in self._expired() if key not in due)
            return self._write_due(due)

    def _expired(self) -> list[tuple[str, str]]:
        now = self._clock()
        return [key for key, buffer in self._buffers.items() if now - buffer.started >= self.max_age_s]

    def _write_due(self, keys: list[tuple[str, str]], *, wait: bool = False) -> list[Path]:
        if self.background:
            return self._submit(keys, wait=wait)
        written: list[Path] = []
        first_error: LakeWriteError | None = None
        for key in keys:
            buffer = self._buffers.get(key)
            if buffer is None or buffer.rows == 0:
                self._buffers.pop(key, None)
                continue
            try:
                written.extend(self._write_buffer(key, buffer))
            except LakeWriteError as exc:
                first_error = first_error or exc
                continue
            del self._buffers[key]
        if first_error is not None:
            raise first_error
        return written

    def _submit(self, keys: list[tuple[str, str]], *, wait: bool) -> list[Path]:
        """Hand due buffers to the worker; collect finished files (all of them when ``wait``)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer")
        for key in keys:
            buffer = self._buffers.pop(key, None)
            if buffer is not None and buffer.rows:
                # The worker owns the buffer from here; it never takes the lock, so waiting for it
                # while holding the lock cannot deadlock.
                self._jobs.append((key, buffer, self._executor.submit(self._write_buffer, key, buffer)))
        return self._reap(keep=0 if wait else self.max_pending_files)

    def _reap(self, *, keep: int) -> list[Path]:
        """Collect finished jobs in order, waiting until at most ``keep`` are left; requeue failures."""
        written: list[Path] = []
        first_error: Exception | None = None
        while self._jobs and (len(self._jobs) > keep or self._jobs[0][2].done()):
            key, buffer, future = self._jobs.pop(0)
            try:
                written.extend(future.result())
            except Exception as exc:  # the rows go back to the buffer whatever went wrong
                first_error = first_error or exc
                if buffer.rows:
                    self._requeue(key, buffer)
        if first_error is not None:
            raise first_error
        return written

    def _requeue(self, key: tuple[str, str], failed: _Buffer) -> None:
        newer = self._buffers.get(key)
        if newer is None:
            self._buffers[key] = failed
            return
        self._buffers[key] = _Buffer(
            frames=[*failed.frames, *newer.frames],
            rows=failed.rows + newer.rows,
            started=min(failed.started, newer.started),
        )

    def _write_buffer(self, key: tuple[str, str], buffer: _Buffer) -> list[Path]:
        area, day = key
        directory = partition_dir(self.root, area, day)
        written: list[Path] = []
        # Frames whose columns cannot be reconciled (same name, incompatible types) go to separate
        # files; the reader unifies compatible differences with union_by_name.
        groups = _combine(buffer.frames)
        for index, frame in enumerate(groups):
            path = self._write_file(directory, frame, pending_rows=sum(f.height for f in groups[index:]))
            written.append(path)
            # Keep only what is still unwritten, so a failure later does not write these rows twice.
            buffer.frames = groups[index + 1 :]
            buffer.rows = sum(f.height for f in buffer.frames)
        return written

    def _write_file(self, directory: Path, frame: pl.DataFrame, *, pending_rows: int) -> Path:
        name = f"part-{time.time_ns() // 1_000_000:013d}-{next(self._seq):06d}-{uuid.uuid4().hex[:8]}.parquet"
        final = directory / name
        temp = directory / f".{name}{TEMP_SUFFIX}"
        try:
            sink = io.BytesIO()
            frame.write_parquet(
                sink,
                compression="zstd",
                compression_level=self.compression_level,
                statistics=True,
                row_group_size=self.row_group_size,
            )
            directory.mkdir(parents=True, exist_ok=True)
            _write_bytes(temp, sink.getbuffer(), fsync=self.fsync)
            os.replace(temp, final)
            if self.fsync:
                _fsync_dir(directory)
        except OSError as exc:
            _remove_quietly(temp)
            disk_full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = "the disk is full" if disk_full else (exc.strerror or str(exc))
            message = (
                f"could not write lake file {final}: {reason}. Files written before are intact; "
                f"{pending_rows} row(s) stay buffered and are retried on the next flush"
            )
            logger.error(message)
            raise LakeWriteError(message, path=final, disk_full=disk_full) from exc
        return final


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove temporary lake file %s", path)


def _to_frame(data: pl.DataFrame | pa.Table | pa.RecordBatch) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pa.RecordBatch | pa.Table):
        frame = pl.from_arrow(data)
        if isinstance(frame, pl.DataFrame):
            return frame
    raise TypeError(f"expected a Polars DataFrame or an Arrow table or batch, not {type(data).__name__}")


def _utc_ts(area: str, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``ts`` as UTC microseconds; refuses rows the lake could not place."""
    if "ts" not in frame.columns:
        raise ValueError(f"{area} rows have no 'ts' column; the lake partitions by it")
    dtype = frame.schema["ts"]
    if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
        raise ValueError(f"{area} column 'ts' must be a time-zone-aware datetime, not {dtype}")
    if frame.get_column("ts").null_count():
        raise ValueError(f"{area} column 'ts' has nulls; every row needs a time")
    if dtype.time_zone != "UTC" or dtype.time_unit != "us":
        ts = pl.col("ts").dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        frame = frame.with_columns(ts)
    return frame


def _split_by_day(frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """(``YYYY-MM-DD``, rows of that UTC day), vectorised; one day (the usual case) costs no copy."""
    days = frame.get_column("ts").dt.epoch("us") // _DAY_US
    first, last = cast("int", days.min()), cast("int", days.max())
    if first == last:
        return [(_day_name(first), frame)]
    parts = frame.with_columns(days.alias("__lake_day")).partition_by(
        "__lake_day", as_dict=True, include_key=False, maintain_order=True
    )
    return sorted((_day_name(cast("int", key[0])), part) for key, part in parts.items())


def _day_name(day: int) -> str:
    """``YYYY-MM-DD`` of a day number counted from 1970-01-01."""
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def _combine(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Concatenate buffered frames, widening columns; split where their types cannot be reconciled."""
    if len(frames) == 1:
        return frames
    if all(f.schema == frames[0].schema for f in frames[1:]):
        return [pl.concat(frames, how="vertical", rechunk=False)]
    try:
        return [pl.concat(frames, how="diagonal_relaxed", rechunk=False)]
    except (pl.exceptions.SchemaError, pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
        groups: list[list[pl.DataFrame]] = []
        for frame in frames:
            if groups and groups[-1][0].schema == frame.schema:
                groups[-1].append(frame)
            else:
                groups.append([frame])
        return [pl.concat(group, how="vertical", rechunk=False) for group in groups]
