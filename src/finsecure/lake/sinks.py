"""Sinks that persist finished batches: the lake, the dead-letter store and the scored-events table.

* :class:`LakeSink` appends every batch to the Parquet lake (raw events and their features live there).
* :class:`DeadLetterSink` keeps rejected records both in the lake and in the ``dead_letters`` table.
* :class:`ScoredEventSink` keeps only events scored at or above a threshold in the ``events`` table, for
  triage; writing the same event twice (a replay after a crash) leaves one row.

Database writes are bulk: one INSERT statement per batch, never one per row. Given a
:class:`~finsecure.system.outbox.DbOutbox`, the two database sinks keep their writes while the database
is away and write them, in order, when it is back; the lake is written either way.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finsecure.event.models import StoredEvent
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA
from finsecure.ingest.models import DeadLetter
from finsecure.lake.writer import LakeWriteError, LakeWriter
from finsecure.pipeline.batch import Batch, Sink
from finsecure.system.outbox import DbOutbox

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]

#: Header columns that ``events`` stores as columns; every other column goes into ``payload``.
STORED_COLUMNS: tuple[str, ...] = (
    "event_id",
    "ts",
    "domain",
    "source",
    "tenant",
    "user_id",
    "account_id",
    "card_id",
    "device_id",
    "src_ip",
    "dst_ip",
    "merchant_id",
    "lat",
    "lon",
    "country",
    "score",
)

#: A column a scoring step may add with its explanation (a struct, map or JSON-like value).
EXPLANATION_COLUMN = "explanation"

# PostgreSQL cannot store NUL in text or JSONB; it is replaced rather than letting the whole batch fail.
_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _clean_text(array: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.replace_substring(array, _NUL, _REPLACEMENT)


class LakeSink(Sink):
    """Appends every batch to the lake through a :class:`~finsecure.lake.writer.LakeWriter`.

    When a file cannot be written (a full disk), the batch is still accepted: the writer keeps the rows
    buffered and retries them with its next file, files already written stay intact, and the error is
    logged once per outage and kept in :attr:`last_error` (the health check reports it). The batch is
    not failed, which would also copy its rows into the dead letters.
    """

    sink_id = "lake"

    def __init__(self, writer: LakeWriter) -> None:
        self.writer = writer
        self.last_error: str | None = None
        self.write_errors = 0

    def write(self, batch: Batch) -> None:
        try:
            written = self.writer.write(batch.domain, batch.frame)
        except LakeWriteError as exc:
            self._failed(exc)
            return
        if written:  # only a file on disk says the lake can write again
            self.last_error = None

    def _failed(self, exc: LakeWriteError) -> None:
        self.write_errors += 1
        if self.last_error is None:
            logger.error("the lake cannot write files: %s", exc)
        self.last_error = str(exc)

    def flush(self) -> None:
        try:
            self.writer.flush()
        except LakeWriteError as exc:
            self._failed(exc)
            raise
        self.last_error = None

    def close(self) -> None:
        self.writer.close()


class DeadLetterSink:
    """Writes dead-letter tables to the lake's ``dead_letter`` area AND the ``dead_letters`` table.

    Not a :class:`~finsecure.pipeline.batch.Sink`: dead letters are Arrow tables of
    :data:`~finsecure.ingest.deadletter.DEAD_LETTER_SCHEMA` (``SourceChunk.rejects``), not batches of a
    domain. The database row is committed before the lake file is due, so the table is the place to
    look first; the lake copy follows the writer's buffering (see :meth:`flush`).
    """

    sink_id = "dead_letters"

    def __init__(
        self, writer: LakeWriter, session_factory: SessionFactory, *, outbox: DbOutbox | None = None
    ) -> None:
        self.writer = writer
        self.session_factory = session_factory
        self.outbox = outbox
        if outbox is not None:
            outbox.register(self.sink_id, self._insert_frame)

    def write(self, table: pa.Table) -> int:
        """Store the dead letters of ``table``; returns how many rows were stored.

        Raises
        ------
        ValueError
            If ``table`` lacks the dead-letter columns.
        """
        if table.num_rows == 0:
            return 0
        try:
            table = table.select(DEAD_LETTER_SCHEMA.names).cast(DEAD_LETTER_SCHEMA)
        except (KeyError, pa.ArrowInvalid, ValueError) as exc:
            raise ValueError(f"not a dead-letter table ({DEAD_LETTER_SCHEMA.names}): {exc}") from None
        if self.outbox is not None:
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)  # noqa: S101 - a Table gives a DataFrame
            self.outbox.submit(self.sink_id, frame)
        else:
            self._insert(table)
        self.writer.write_dead_letters(table)
        return int(table.num_rows)

    def _insert(self, table: pa.Table) -> None:
        rows = _dead_letter_rows(table)
        with self.session_factory() as session, session.begin():
            session.execute(insert(DeadLetter).execution_options(render_nulls=True), rows)

    def _insert_frame(self, frame: pl.DataFrame) -> None:
        self._insert(frame.to_arrow().select(DEAD_LETTER_SCHEMA.names).cast(DEAD_LETTER_SCHEMA))

    def flush(self) -> None:
        """Write the buffered lake files now."""
        self.writer.flush()

    def close(self) -> None:
        self.flush()


def _dead_letter_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows fit for the ``dead_letters`` columns (text capped at the column sizes, no NUL)."""
    columns = {
        "ts": table.column("ts"),
        "source": pc.utf8_slice_codeunits(_clean_text(table.column("source")), 0, 128),
        "offset": table.column("offset"),
        "domain": pc.utf8_slice_codeunits(_clean_text(table.column("domain")), 0, 16),
        "reason": _clean_text(table.column("reason")),
        "raw": _clean_text(table.column("raw")),
    }
    rows: list[dict[str, Any]] = pa.table(columns).to_pylist()
    return rows


class ScoredEventSink(Sink):
    """Inserts events whose ``score`` is at least ``threshold`` into the ``events`` table.

    Parameters
    ----------
    session_factory
        Makes a database session (e.g. ``AppContext.session_factory``).
    threshold
        Minimum score kept; events without a ``score`` column or with a null or NaN score are skipped.
    outbox
        Keeps the inserts while the database is away (see :mod:`finsecure.system.outbox`).

    Notes
    -----
    Idempotent on ``event_id``: INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL, so a batch
    replayed after a crash adds nothing twice. Header columns become table columns; the remaining ones
    (domain fields, features, labels) go into the JSON ``payload``, with times as ISO 8601 text and
    non-finite numbers as null. An ``explanation`` column, when a step adds one, fills ``explanation``.
    """

    sink_id = "scored_events"

    def __init__(
        self, session_factory: SessionFactory, threshold: float, *, outbox: DbOutbox | None = None
    ) -> None:
        self.session_factory = session_factory
        self.threshold = threshold
        self.outbox = outbox
        if outbox is not None:
            outbox.register(self.sink_id, self._insert)

    def write(self, batch: Batch) -> None:
        self.write_frame(batch.frame)

    def write_frame(self, frame: pl.DataFrame) -> int:
        """Insert the qualifying rows of ``frame``; returns how many rows were offered to the database
        (rows already stored are silently skipped by the database)."""
        if "score" not in frame.columns or frame.height == 0:
            return 0
        score = pl.col("score").cast(pl.Float64, strict=False)
        # Polars orders NaN above every number, so a NaN score would pass any threshold: drop it first.
        kept = frame.filter(score.is_not_null() & score.is_not_nan() & (score >= self.threshold))
        if kept.height == 0:
            return 0
        kept = kept.unique(subset="event_id", keep="first", maintain_order=True)
        if self.outbox is not None:
            self.outbox.submit(self.sink_id, kept)
            return kept.height
        return self._insert(kept)

    def _insert(self, kept: pl.DataFrame) -> int:
        rows = _event_rows(kept)
        with self.session_factory() as session, session.begin():
            dialect = session.get_bind().dialect.name
            if dialect == "postgresql":
                stmt: Any = postgresql.insert(StoredEvent).on_conflict_do_nothing(index_elements=["event_id"])
            elif dialect == "sqlite":
                stmt = sqlite.insert(StoredEvent).on_conflict_do_nothing(index_elements=["event_id"])
            else:  # pragma: no cover - only the two supported databases
                raise RuntimeError(f"scored events need SQLite or PostgreSQL, not {dialect}")
            # render_nulls: rows with and without nulls share one statement instead of one per null pattern
            session.execute(stmt.execution_options(render_nulls=True), rows)
        return len(rows)


def _event_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows for ``events``: header columns as they are, the rest as a JSON-ready ``payload`` dict."""
    present = [c for c in STORED_COLUMNS if c in frame.columns]
    extra = [c for c in frame.columns if c not in STORED_COLUMNS and c != EXPLANATION_COLUMN]
    cleaned = frame.with_columns(
        [_json_ready(c, t) for c, t in frame.schema.items() if c in extra or t == pl.String]
    )
    selected: list[str | pl.Expr] = [*present]
    if extra:
        selected.append(pl.struct(extra).alias("payload"))
    explanation = frame.schema.get(EXPLANATION_COLUMN)
    if explanation is not None:
        selected.append(EXPLANATION_COLUMN)
    rows: list[dict[str, Any]] = cleaned.select(selected).to_dicts()
    nested = [c for c in extra if frame.schema[c].is_nested()]
    for row in rows:  # one dict per stored event: these are the few events above the threshold
        payload = row.setdefault("payload", {})
        for name in nested:
            payload[name] = _jsonable(payload[name])
        if explanation is not None:
            value = row[EXPLANATION_COLUMN]
            if value is not None and not isinstance(value, dict):
                value = {"text": str(value)}
            row[EXPLANATION_COLUMN] = _jsonable(value)
    return rows


def _json_ready(name: str, dtype: pl.DataType) -> pl.Expr:
    """An expression turning a top-level column into values JSON (and PostgreSQL) can hold."""
    column = pl.col(name)
    if dtype == pl.String:
        return column.str.replace_all(_NUL, _REPLACEMENT, literal=True)
    if dtype.is_float():
        return pl.when(column.is_finite()).then(column).otherwise(None).alias(name)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone:
            return column.dt.convert_time_zone("UTC").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ").alias(name)
        return column.dt.to_string("%Y-%m-%dT%H:%M:%S%.6f").alias(name)
    if isinstance(dtype, pl.Duration):
        return (column.dt.total_microseconds() / 1_000_000).alias(name)  # seconds
    if dtype.is_temporal() or isinstance(dtype, pl.Categorical | pl.Enum | pl.Decimal):
        return column.cast(pl.String)
    if dtype == pl.Binary:
        return column.bin.encode("hex")
    return column


def _jsonable(value: Any) -> Any:
    """A nested value with non-finite floats as null, NUL replaced and other scalars as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
