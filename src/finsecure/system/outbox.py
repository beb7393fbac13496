"""Database writes that outlive a database outage.

The pipeline writes three things to the database: scored events, alerts (with their incidents) and dead
letters. When the database does not answer, :class:`DbOutbox` keeps those writes instead of losing them:
in memory up to a bound, then spilled to disk as Arrow IPC files, and a background thread retries them in
their original order until the database is back. Meanwhile the pipeline goes on accepting events into the
lake, and ``GET /api/health`` reports ``degraded`` with the number of rows waiting.

Only *unavailability* is retried (:func:`is_db_unavailable`: connection refused or lost, pool exhausted,
server shutting down). A write the database refuses for its content (a constraint, a type) would fail
again: it is logged and its rows are kept in ``<spill_dir>/failed/`` for a person to look at, never
retried forever and never silently dropped.

Files spilled by a process that stopped before the database came back are picked up by the next one
(:meth:`DbOutbox.start`), so a restart loses nothing either.

Example
-------
>>> import tempfile
>>> written = []
>>> with tempfile.TemporaryDirectory() as tmp:
...     outbox = DbOutbox(Path(tmp))
...     outbox.register("rows", lambda frame: written.append(frame.height))
...     outbox.submit("rows", pl.DataFrame({"a": [1, 2]}))
...     outbox.status().state, written
True
('ok', [2])
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import polars as pl
from sqlalchemy import exc as sa_exc

__all__ = ["DbOutbox", "OutboxFull", "OutboxStatus", "is_db_busy", "is_db_unavailable"]

logger = logging.getLogger(__name__)

Writer = Callable[[pl.DataFrame], object]

_SPILL_NAME = re.compile(r"^(\d{12})\.([a-z0-9_]+)\.arrow$")

#: SQLite's primary result codes for "another connection holds the lock": SQLITE_BUSY, SQLITE_LOCKED.
_SQLITE_BUSY_CODES = frozenset({5, 6})
#: PostgreSQL states for "waited on a lock or a time limit": lock_not_available, deadlock_detected,
#: serialization_failure, query_canceled (a statement or lock timeout).
_PG_BUSY_STATES = frozenset({"55P03", "40P01", "40001", "57014"})
#: Seconds between retries while the database is only busy.
_BUSY_RETRY_S = 0.2


class OutboxFull(RuntimeError):
    """The outbox holds as much as it may, in memory and on disk: the write is refused."""


def is_db_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (worth retrying), not that it refused
    the data.

    >>> is_db_unavailable(sa_exc.OperationalError("connect", {}, ConnectionRefusedError()))
    True
    >>> is_db_unavailable(sa_exc.IntegrityError("insert", {}, ValueError()))
    False
    """
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # OperationalError: refused or lost connections, server shutdown, SQLite "database is locked";
    # InterfaceError: a closed connection; TimeoutError: the pool had no connection to give.
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError)


def is_db_busy(exc: BaseException) -> bool:
    """Whether ``exc`` means the database answered but another transaction held a lock for too long
    (SQLite "database is locked", a PostgreSQL lock or statement timeout): busy for a moment, not down.

    >>> import sqlite3
    >>> locked = sqlite3.OperationalError("database is locked")
    >>> locked.sqlite_errorcode = 5
    >>> is_db_busy(sa_exc.OperationalError("INSERT", {}, locked))
    True
    >>> is_db_busy(sa_exc.OperationalError("connect", {}, ConnectionRefusedError()))
    False
    """
    if not isinstance(exc, sa_exc.DBAPIError) or exc.connection_invalidated:
        return False
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_BUSY_CODES  # extended codes (BUSY_SNAPSHOT...) keep the primary byte
    state = getattr(orig, "sqlstate", None)
    return isinstance(state, str) and state in _PG_BUSY_STATES


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What the outbox holds and whether the database was reachable at the last attempt."""

    state: Literal["ok", "degraded"]
    pending_rows: int
    pending_writes: int
    spilled_files: int
    delivered_rows: int
    failed_rows: int
    down_since: dt.datetime | None
    last_error: str | None
    busy: bool = False
    """The last failed write met a busy database (it answered, but a lock was held too long), not an
    unreachable one."""

    @property
    def detail(self) -> str:
        """The status in plain words, for the health page."""
        if self.state == "ok" and not self.failed_rows:
            return "every database write is done"
        parts = []
        if self.state == "degraded":
            since = f" since {self.down_since:%H:%M:%S} UTC" if self.down_since else ""
            if self.busy:
                parts.append(
                    f"the database is busy with other writes{since}: {self.pending_rows:,} row(s) wait and "
                    "are retried; events still go to the lake"
                )
            else:
                parts.append(
                    f"the database is not answering{since}: {self.pending_rows:,} row(s) wait to be "
                    f"written ({self.spilled_files} file(s) on disk); events still go to the lake"
                )
        if self.failed_rows:
            parts.append(f"{self.failed_rows:,} row(s) the database refused are kept for review")
        return "; ".join(parts)


@dataclass(slots=True)
class _Item:
    seq: int
    kind: str
    rows: int
    frame: pl.DataFrame | None = None
    path: Path | None = None
    size: int = 0


class DbOutbox:
    """Write frames to the database now, or keep them (bounded, spilled to disk) and retry in order.

    Parameters
    ----------
    spill_dir
        Where writes beyond ``max_memory_rows`` wait, and where refused ones are kept (``failed/``).
    max_memory_rows
        Rows kept in memory; later writes go to disk.
    max_spill_bytes
        Bytes kept on disk; beyond it :meth:`submit` raises :class:`OutboxFull`.
    retry_s
        Seconds between retries while the database is away.
    """

    def __init__(
        self,
        spill_dir: Path,
        *,
        max_memory_rows: int = 200_000,
        max_spill_bytes: int = 1 << 30,
        retry_s: float = 1.0,
    ) -> None:
        if max_memory_rows < 0 or max_spill_bytes < 0:
            raise ValueError("the outbox bounds must not be negative")
        self.spill_dir = Path(spill_dir)
        self.max_memory_rows = max_memory_rows
        self.max_spill_bytes = max_spill_bytes
        self.retry_s = retry_s
        self._writers: dict[str, Writer] = {}
        self._queue: collections.deque[_Item] = collections.deque()
        self._lock = threading.Lock()  # the queue and counters; held briefly
        self._write_lock = threading.Lock()  # one database write at a time, in order
        # numbered after any file an earlier process left, so that a new file never replaces an old one
        self._seq = itertools.count(_next_seq(self.spill_dir))
        self._memory_rows = 0
        self._spill_bytes = 0
        self._delivered = 0
        self._failed = 0
        self._down_since: dt.datetime | None = None
        self._last_error: str | None = None
        self._busy = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- set-up -------------------------------------------------------------------------------------

    def register(self, kind: str, write: Writer) -> None:
        """Name the function that writes frames of ``kind`` (lower-case letters, digits, ``_``)."""
        if not re.fullmatch(r"[a-z0-9_]+", kind):
            raise ValueError(f"outbox kinds are lower-case letters, digits and '_', not {kind!r}")
        self._writers[kind] = write

    def start(self) -> DbOutbox:
        """Pick up files a previous process spilled, and start the retry thread (idempotent)."""
        if self._thread is not None:
            return self
        self._recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="finsecure-outbox", daemon=True)
        self._thread.start()
        return self

    def close(self, *, timeout: float | None = 10.0) -> bool:
        """Try to write what is left (until ``timeout``), stop the thread; returns whether all was written.

        What could not be written stays: spilled files are found again by the next :meth:`start`, and
        rows still in memory are spilled now.
        """
        done = self.drain(timeout=timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if not done:
            with self._lock:
                for item in self._queue:
                    if item.frame is not None:
                        self._spill(item)
        return done

    def __enter__(self) -> DbOutbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------------------

    def submit(self, kind: str, frame: pl.DataFrame) -> bool:
        """Write ``frame`` now, or keep it when the database is away; True when written now.

        Raises
        ------
        KeyError
            If ``kind`` was never registered.
        OutboxFull
            If the database is away and the outbox is full (memory and disk).
        Exception
            Whatever the writer raised when the database refused the data itself (not retried).
        """
        write = self._writers[kind]
        if frame.height == 0:
            return True
        with self._lock:
            if self._queue or self._down_since is not None:
                self._enqueue(kind, frame)
                return False
        with self._write_lock:
            with self._lock:
                if self._queue:  # the retry thread queued or failed something meanwhile: keep the order
                    self._enqueue(kind, frame)
                    return False
            try:
                write(frame)
            except Exception as exc:
                if not is_db_unavailable(exc):
                    raise
                with self._lock:
                    self._went_down(exc)
                    self._enqueue(kind, frame)
                self._wake.set()
                return False
        with self._lock:
            self._delivered += frame.height
        return True

    def drain(self, *, timeout: float | None = None) -> bool:
        """Retry until everything is written or ``timeout`` passes; True when nothing is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._deliver_pending():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_s, 0.2))

    def status(self) -> OutboxStatus:
        """A consistent snapshot of the outbox."""
        with self._lock:
            return OutboxStatus(
                state="degraded" if self._queue or self._down_since is not None else "ok",
                pending_rows=sum(item.rows for item in self._queue),
                pending_writes=len(self._queue),
                spilled_files=sum(1 for item in self._queue if item.path is not None),
                delivered_rows=self._delivered,
                failed_rows=self._failed,
                down_since=self._down_since,
                last_error=self._last_error,
                busy=self._busy,
            )

    # -- internals ----------------------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        busy = is_db_busy(exc)
        if self._down_since is None:
            self._down_since = dt.datetime.now(dt.UTC)
            if busy:  # a lock held too long by another writer: it passes on its own
                logger.warning(
                    "the database is busy with other writes (%s): database writes are kept and retried",
                    type(exc).__name__,
                )
            else:
                logger.error(
                    "the database does not answer (%s): database writes are kept and retried every %.1f s",
                    type(exc).__name__,
                    self.retry_s,
                )
        self._last_error = type(exc).__name__
        self._busy = busy

    def _enqueue(self, kind: str, frame: pl.DataFrame) -> None:
        item = _Item(seq=next(self._seq), kind=kind, rows=frame.height, frame=frame)
        if self._memory_rows + frame.height > self.max_memory_rows:
            self._spill(item)
        else:
            self._memory_rows += frame.height
        self._queue.append(item)

    def _spill(self, item: _Item) -> None:
        """Move ``item`` to disk (called with the lock held)."""
        frame = item.frame
        if frame is None:
            return
        estimate = int(frame.estimated_size())
        if self._spill_bytes + estimate > self.max_spill_bytes:
            raise OutboxFull(
                f"the database has been away too long: {self._spill_bytes:,} bytes of writes wait on disk "
                f"(limit {self.max_spill_bytes:,}); this write of {item.rows} row(s) is refused"
            )
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{item.seq:012d}.{item.kind}.arrow"
        temp = path.with_name(f".{path.name}.tmp")
        frame.write_ipc(temp, compression="zstd")
        os.replace(temp, path)
        item.size = path.stat().st_size
        item.path, item.frame = path, None
        self._spill_bytes += item.size
        if item in self._queue:  # spilled at close: it was counted in memory
            self._memory_rows -= item.rows

    def _recover(self) -> None:
        if not self.spill_dir.is_dir():
            return
        with self._lock:
            mine = {item.path for item in self._queue if item.path is not None}
        found = []
        for path in self.spill_dir.iterdir():
            match = _SPILL_NAME.match(path.name)
            if match is None or path in mine:  # this process's own files are already queued
                continue
            kind = match.group(2)
            if kind not in self._writers:
                logger.warning("outbox file %s is of no registered kind; left as it is", path)
                continue
            found.append((int(match.group(1)), kind, path))
        if not found:
            return
        found.sort()
        with self._lock:
            recovered = []
            for seq, kind, path in found:
                rows = pl.scan_ipc(path).select(pl.len()).collect().item()
                size = path.stat().st_size
                recovered.append(_Item(seq=seq, kind=kind, rows=int(rows), path=path, size=size))
                self._spill_bytes += size
            self._queue.extendleft(reversed(recovered))
        logger.warning(
            "%d database write(s) left by an earlier run are retried (%d rows)",
            len(found),
            sum(item.rows for item in recovered),
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            # A busy database frees up in moments: retry sooner than after an outage.
            self._wake.wait(min(self.retry_s, _BUSY_RETRY_S) if self._busy else self.retry_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                idle = not self._queue and self._down_since is None
            if idle:
                continue
            try:
                self._deliver_pending()
            except Exception:  # never let the retry thread die
                logger.exception("outbox: retry round failed")

    def _deliver_pending(self) -> bool:
        """Write queued items in order until one meets an unavailable database; True when empty."""
        with self._write_lock:
            while True:
                with self._lock:
                    if not self._queue:
                        if self._down_since is not None:
                            logger.log(
                                logging.INFO if self._busy else logging.WARNING,
                                "the database is back: every kept write is done (%d rows so far)",
                                self._delivered,
                            )
                        self._down_since = None
                        self._busy = False
                        return True
                    item = self._queue[0]
                frame = item.frame if item.frame is not None else _load(item)
                delivered = True
                try:
                    self._writers[item.kind](frame)
                except Exception as exc:
                    if is_db_unavailable(exc):
                        with self._lock:
                            self._went_down(exc)
                        return False
                    self._quarantine(item, frame, exc)
                    delivered = False
                with self._lock:
                    self._queue.popleft()
                    if item.path is None:
                        self._memory_rows -= item.rows
                    else:
                        self._spill_bytes -= item.size
                    if delivered:
                        self._delivered += item.rows
                    else:
                        self._failed += item.rows
                if item.path is not None:
                    item.path.unlink(missing_ok=True)

    def _quarantine(self, item: _Item, frame: pl.DataFrame, exc: Exception) -> None:
        """Keep a write the database refused in ``failed/`` for a person to look at."""
        failed = self.spill_dir / "failed"
        failed.mkdir(parents=True, exist_ok=True)
        path = failed / f"{item.seq:012d}.{item.kind}.arrow"
        frame.write_ipc(path, compression="zstd")
        logger.error(
            "the database refused %d %s row(s) (%s); kept in %s",
            item.rows,
            item.kind,
            type(exc).__name__,
            path,
        )


def _next_seq(spill_dir: Path) -> int:
    if not spill_dir.is_dir():
        return 0
    seqs = [int(m.group(1)) for p in spill_dir.iterdir() if (m := _SPILL_NAME.match(p.name))]
    return max(seqs, default=-1) + 1


def _load(item: _Item) -> pl.DataFrame:
    if item.path is None:
        raise RuntimeError(f"outbox item {item.seq} has neither rows nor a file")
    return pl.read_ipc(item.path)
