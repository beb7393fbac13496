"""Read-only SQL over the event lake with DuckDB, and the parameterised event search behind the API.

Each domain is a view named after it (``network``, ``cloud``, ``auth``, ``payment``) plus ``dead_letter``,
reading every Parquet file of its area with ``hive_partitioning`` (so ``date`` is a column and a filter on
it skips whole days) and ``union_by_name`` (files written before a step added a column read as null in
that column). A domain with no files yet is an empty view with the canonical columns.

Two fences keep hunting queries read-only: only one statement of the SELECT family is accepted (SELECT,
WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE), and, once the views exist, DuckDB's external access is
switched off and its configuration locked, so no file outside the lake can be read and nothing can be
installed, attached or copied out. Every query has a row limit and a timeout.

Example
-------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp, LakeQuery(Path(tmp)) as lake:
...     lake.sql("SELECT count(*) AS n FROM payment").table.to_pylist()
[{'n': 0}]
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from finsecure.event.schemas import ARROW_SCHEMAS, ENTITY_KEYS, Domain
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA
from finsecure.lake.writer import DEAD_LETTER_AREA

logger = logging.getLogger(__name__)

#: View names, in the order ``SHOW TABLES`` lists them.
VIEWS: tuple[str, ...] = (*(d.value for d in Domain), DEAD_LETTER_AREA)

#: The most rows one query may return, whatever the caller asks for.
MAX_ROWS = 100_000

#: Up to this many matches on a page's days are sorted whole; above it the search sorts times first.
_SMALL_SORT = 20_000

#: Search filters on entity keys (exact match).
ENTITY_FILTERS: tuple[str, ...] = ENTITY_KEYS

SortOrder = Literal["asc", "desc"]

_DUCKDB_TYPES: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.float64(): "DOUBLE",
    pa.int8(): "TINYINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}


class QueryRefused(ValueError):
    """The SQL is not a single read-only query over the lake."""


class LakeQueryError(RuntimeError):
    """DuckDB could not run the query (bad SQL, unknown column, unreadable file...)."""


class LakeQueryTimeout(LakeQueryError):
    """The query ran longer than its time limit and was stopped."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Rows of a query, at most the limit; ``truncated`` when the query had more."""

    table: pa.Table
    truncated: bool


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One page of events, newest first by default.

    Attributes
    ----------
    rows
        The events as plain dicts (non-finite numbers as ``None``), without the ``date`` partition column.
    total
        Number of events matching the filters (exact).
    has_more
        Whether a later page has events.
    """

    rows: list[dict[str, Any]]
    total: int
    has_more: bool


def _sql_string(value: str) -> str:
    """A SQL string literal (used only for the lake's own paths, never for user values)."""
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _area_dir(root: Path, view: str) -> Path:
    return root / (view if view == DEAD_LETTER_AREA else f"domain={view}")


def _canonical_schema(view: str) -> pa.Schema:
    return DEAD_LETTER_SCHEMA if view == DEAD_LETTER_AREA else ARROW_SCHEMAS[Domain(view)]


def _empty_view_sql(view: str) -> str:
    columns = [f"CAST(NULL AS {_DUCKDB_TYPES[f.type]}) AS {_ident(f.name)}" for f in _canonical_schema(view)]
    columns.append('CAST(NULL AS DATE) AS "date"')
    return f"SELECT * FROM (SELECT {', '.join(columns)}) WHERE false"  # noqa: S608 - fixed names and types


def _files_view_sql(root: Path, view: str) -> str:
    pattern = (_area_dir(root, view) / "**" / "*.parquet").as_posix()
    return (
        f"SELECT * FROM read_parquet({_sql_string(pattern)}, hive_partitioning = true, "  # noqa: S608 - our own path
        "union_by_name = true, hive_types = {'date': DATE})"
    )


def _has_files(root: Path, view: str) -> bool:
    return next(_area_dir(root, view).glob("date=*/*.parquet"), None) is not None


def _finite_or_null(table: pa.Table) -> pa.Table:
    """Non-finite floats become nulls (JSON has no NaN or infinity)."""
    for index, column in enumerate(table.columns):
        if pa.types.is_floating(column.type) and column.null_count < len(column):
            table = table.set_column(
                index,
                table.field(index),
                pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type)),
            )
    return table


class LakeQuery:
    """Read-only DuckDB queries over the lake at ``root``.

    Parameters
    ----------
    root
        The lake directory (as written by :class:`~finsecure.lake.writer.LakeWriter`); it may not exist yet.
    max_rows
        Default row limit of :meth:`sql` (capped at :data:`MAX_ROWS`).
    timeout_s
        Default time limit of a query, in seconds.
    memory_limit
        DuckDB memory limit, e.g. ``"1GB"``; a query needing more fails instead of spilling to disk.
    threads
        DuckDB worker threads (default: DuckDB's choice, one per core).

    Notes
    -----
    The DuckDB database opens on first use. Several threads may query at once (each query runs on its
    own cursor). New files are seen by the next query; a domain whose first file appears after opening
    gets its real view on the next query too.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_rows: int = 10_000,
        timeout_s: float = 30.0,
        memory_limit: str = "1GB",
        threads: int | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.max_rows = min(max_rows, MAX_ROWS)
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self.threads = threads
        self._con: duckdb.DuckDBPyConnection | None = None
        self._empty: set[str] = set()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            try:
                if self._con is None:
                    self._con = self._open()
                elif self._empty:
                    self._refresh_empty_views(self._con)
            except duckdb.Error as exc:
                # Binding a view reads every file's footer: an unreadable file stops its whole domain.
                raise LakeQueryError(f"the lake at {self.root} could not be read: {exc}") from None
            return self._con

    def _open(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET allowed_directories = $dirs", {"dirs": [self.root.as_posix() + "/"]})
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET temp_directory = ''")  # no spilling: a too-big query fails, it never writes
            con.execute("SET autoinstall_known_extensions = false")
            con.execute("SET autoload_known_extensions = false")
            con.execute("SET memory_limit = $limit", {"limit": self.memory_limit})
            # Lake files are never changed once written: keep their footers instead of reading every
            # file's metadata again on each query (the dashboard polls; a live lake has many small files).
            con.execute("SET parquet_metadata_cache = true")
            if self.threads is not None:
                con.execute("SET threads = $threads", {"threads": self.threads})
            for view in VIEWS:
                self._create_view(con, view)
            # From here on no file outside the lake can be read and no setting can be changed back.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        return con

    def _create_view(self, con: duckdb.DuckDBPyConnection, view: str) -> None:
        if _has_files(self.root, view):
            con.execute(f"CREATE OR REPLACE VIEW {_ident(view)} AS {_files_view_sql(self.root, view)}")
            self._empty.discard(view)
        else:
            con.execute(f"CREATE OR REPLACE VIEW {_ident(view)} AS {_empty_view_sql(view)}")
            self._empty.add(view)

    def _refresh_empty_views(self, con: duckdb.DuckDBPyConnection) -> None:
        for view in sorted(self._empty):
            if _has_files(self.root, view):
                self._create_view(con, view)

    def close(self) -> None:
        """Close the DuckDB database (a later query opens it again)."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
                self._empty.clear()

    def __enter__(self) -> LakeQuery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- free SQL ----------------------------------------------------------------------------------

    def sql(self, query: str, *, limit: int | None = None, timeout_s: float | None = None) -> QueryResult:
        """Run one read-only query over the views.

        Parameters
        ----------
        query
            A single SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW or SUMMARIZE statement.
        limit
            Return at most this many rows (default ``max_rows``; never more than :data:`MAX_ROWS`).
        timeout_s
            Stop the query after this many seconds (default ``timeout_s``).

        Raises
        ------
        QueryRefused
            If the SQL is anything else (COPY, ATTACH, INSTALL, SET, several statements...) or reads
            a file outside the lake.
        LakeQueryTimeout
            If it runs too long.
        LakeQueryError
            If DuckDB cannot run it.
        """
        row_limit = min(self.max_rows if limit is None else limit, MAX_ROWS)
        if row_limit < 0:
            raise ValueError("limit must not be negative")
        cursor = self._connection().cursor()
        try:
            self._check_read_only(cursor, query)
            with self._deadline(cursor, timeout_s):
                reader = cursor.sql(query).to_arrow_reader(min(max(row_limit, 1), 10_000) + 1)
                batches: list[pa.RecordBatch] = []
                rows = 0
                for batch in reader:
                    batches.append(batch)
                    rows += batch.num_rows
                    if rows > row_limit:
                        break
                reader.close()
            table = pa.Table.from_batches(batches, schema=reader.schema)
            return QueryResult(table=table.slice(0, row_limit), truncated=rows > row_limit)
        finally:
            cursor.close()

    @staticmethod
    def _check_read_only(cursor: duckdb.DuckDBPyConnection, query: str) -> None:
        try:
            statements = cursor.extract_statements(query)
        except duckdb.Error as exc:
            raise LakeQueryError(f"the SQL could not be read: {exc}") from None
        if len(statements) != 1:
            raise QueryRefused(f"send exactly one SQL statement, not {len(statements)}")
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise QueryRefused(
                f"only read-only queries are allowed (SELECT, WITH, DESCRIBE, SHOW), not {kind.name}"
            )

    def _deadline(self, cursor: duckdb.DuckDBPyConnection, timeout_s: float | None) -> _Deadline:
        return _Deadline(cursor, self.timeout_s if timeout_s is None else timeout_s)

    # -- event search ------------------------------------------------------------------------------

    def columns(self, view: str) -> dict[str, str]:
        """Column name -> DuckDB type of a view (files' columns unified, plus ``date``)."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; expected one of: {', '.join(VIEWS)}")
        cursor = self._connection().cursor()
        try:
            with self._deadline(cursor, None):
                rows = cursor.sql(f"DESCRIBE {_ident(view)}").fetchall()
        finally:
            cursor.close()
        return {str(row[0]): str(row[1]) for row in rows}

    def search(
        self,
        domain: Domain | str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        user_id: str | None = None,
        account_id: str | None = None,
        card_id: str | None = None,
        device_id: str | None = None,
        src_ip: str | None = None,
        dst_ip: str | None = None,
        merchant_id: str | None = None,
        min_score: float | None = None,
        text: str | None = None,
        order: SortOrder = "desc",
        limit: int = 50,
        offset: int = 0,
        timeout_s: float | None = None,
    ) -> SearchResult:
        """Events of one domain matching every given filter, ordered by time.

        Parameters
        ----------
        domain
            Which domain's events.
        since, until
            Time range ``[since, until)``; naive datetimes are read as UTC. Days outside it are not read.
        user_id, account_id, card_id, device_id, src_ip, dst_ip, merchant_id
            Exact entity keys.
        min_score
            Only events whose ``score`` column is at least this (none match before a scoring step ran).
        text
            Case-insensitive substring looked for in every text column.
        order
            ``"desc"`` (newest first) or ``"asc"``; ties are broken by ``event_id``.
        limit, offset
            The page.
        timeout_s
            Time limit for the whole search.

        Raises
        ------
        ValueError
            For an unknown domain or order, a negative page, a non-finite ``min_score`` or ``since`` not
            before ``until``.
        LakeQueryTimeout, LakeQueryError
            As for :meth:`sql`.
        """
        view = Domain(domain).value
        if order not in ("asc", "desc"):
            raise ValueError("order must be 'asc' or 'desc'")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if min_score is not None and not math.isfinite(min_score):
            raise ValueError("min_score must be a finite number")
        since, until = _as_utc(since), _as_utc(until)
        if since is not None and until is not None and since >= until:
            raise ValueError("'since' must be before 'until'")

        columns = self.columns(view)
        where: list[str] = []
        params: dict[str, Any] = {}
        if since is not None:
            # The day filter lets DuckDB skip whole partitions; the ts filter is exact.
            where += ['"date" >= $since_day', "ts >= $since"]
            params |= {"since_day": since.date(), "since": since}
        if until is not None:
            where += ['"date" <= $until_day', "ts < $until"]
            params |= {"until_day": (until - dt.timedelta(microseconds=1)).date(), "until": until}
        entities = {
            "user_id": user_id,
            "account_id": account_id,
            "card_id": card_id,
            "device_id": device_id,
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "merchant_id": merchant_id,
        }
        for name, value in entities.items():
            if value is not None:
                where.append(f"{_ident(name)} = ${name}")
                params[name] = value
        if min_score is not None:
            if "score" not in columns:
                return SearchResult(rows=[], total=0, has_more=False)
            where.append("score >= $min_score")
            params["min_score"] = min_score
        if text:
            text_columns = [n for n, t in columns.items() if t == "VARCHAR" and n != "domain"]
            where.append(
                "(" + " OR ".join(f"contains(lower({_ident(n)}), $text)" for n in text_columns) + ")"
                if text_columns
                else "false"
            )
            params["text"] = text.lower()
        condition = " AND ".join(where) or "true"
        table: pa.Table | None = None
        cursor = self._connection().cursor()
        try:
            with self._deadline(cursor, timeout_s):
                # Matches per day first: it gives the exact total cheaply, and tells which one or two
                # days hold the requested page, so only those are sorted.
                counts = cursor.sql(
                    f'SELECT "date", count(*) FROM {_ident(view)} WHERE {condition} GROUP BY "date"',  # noqa: S608
                    params=params or None,
                ).fetchall()
                counts.sort(reverse=order == "desc")
                total = sum(int(n) for _, n in counts)
                days, local_offset = _page_days(counts, offset=offset, limit=limit)
                if days:
                    matches = sum(int(n) for day, n in counts if day in days)
                    table = self._page(
                        cursor,
                        view,
                        condition,
                        params,
                        days,
                        local_offset,
                        limit,
                        order,
                        matches > _SMALL_SORT,
                    )
        finally:
            cursor.close()
        rows = [] if table is None else _finite_or_null(table).to_pylist()
        return SearchResult(rows=rows, total=total, has_more=offset + limit < total)

    @staticmethod
    def _page(
        cursor: duckdb.DuckDBPyConnection,
        view: str,
        condition: str,
        params: dict[str, Any],
        days: list[dt.date],
        offset: int,
        limit: int,
        order: SortOrder,
        two_steps: bool,
    ) -> pa.Table:
        """Rows ``offset .. offset+limit`` of the matches on ``days``, sorted by (ts, event_id)."""
        direction, cmp = ("DESC", ">=") if order == "desc" else ("ASC", "<=")
        condition += ' AND "date" BETWEEN $first_day AND $last_day'
        params = {**params, "first_day": min(days), "last_day": max(days)}
        # Only quoted column names and fixed fragments are pasted into the SQL; values are $parameters.
        # With many matches, two steps: the time of the page's last row, from the ts column alone, then
        # whole rows only up to that time, which lets DuckDB skip row groups by their statistics instead
        # of decoding every column of those days to sort them.
        if not two_steps:
            edge: list[tuple[Any, ...]] = []
        else:
            edge = cursor.sql(
                f"SELECT ts FROM {_ident(view)} WHERE {condition} "  # noqa: S608
                f"ORDER BY ts {direction} LIMIT 1 OFFSET $edge",
                params={**params, "edge": offset + limit - 1},
            ).fetchall()
        if edge:
            condition += f" AND ts {cmp} $edge_ts"
            params["edge_ts"] = edge[0][0]
        page: pa.Table = cursor.sql(
            f'SELECT * EXCLUDE ("date") FROM {_ident(view)} WHERE {condition} '  # noqa: S608
            f"ORDER BY ts {direction}, event_id {direction} LIMIT $limit OFFSET $offset",
            params={**params, "limit": limit, "offset": offset},
        ).to_arrow_table()
        return page


def _page_days(counts: list[tuple[Any, ...]], *, offset: int, limit: int) -> tuple[list[dt.date], int]:
    """The days (in reading order) holding matches ``offset .. offset+limit-1``, and the offset within them.

    Examples
    --------
    >>> d = [dt.date(2024, 5, i) for i in (3, 2, 1)]
    >>> _page_days([(d[0], 10), (d[1], 10), (d[2], 10)], offset=15, limit=10)
    ([datetime.date(2024, 5, 2), datetime.date(2024, 5, 1)], 5)
    >>> _page_days([(d[0], 10)], offset=10, limit=5)
    ([], 0)
    """
    days: list[dt.date] = []
    seen = local_offset = 0
    if limit <= 0:
        return days, local_offset
    for day, matches in counts:
        if seen + matches <= offset:
            seen += matches
            continue
        if not days:
            local_offset = offset - seen
        days.append(day)
        seen += matches
        if seen >= offset + limit:
            break
    return days, local_offset


class _Deadline:
    """Interrupts a cursor's query after ``timeout_s``; maps DuckDB errors to the lake's errors."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, timeout_s: float) -> None:
        self.cursor = cursor
        self.timeout_s = timeout_s
        self.fired = threading.Event()
        self._timer: threading.Timer | None = None

    def _interrupt(self) -> None:
        self.fired.set()
        self.cursor.interrupt()

    def __enter__(self) -> _Deadline:
        self._timer = threading.Timer(self.timeout_s, self._interrupt)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if exc is None:
            return
        if isinstance(exc, duckdb.InterruptException) or (
            self.fired.is_set() and isinstance(exc, duckdb.Error)
        ):
            raise LakeQueryTimeout(
                f"the query took longer than {self.timeout_s:g} s and was stopped; "
                "narrow the time range or add filters"
            ) from None
        if isinstance(exc, duckdb.PermissionException):
            raise QueryRefused(
                "queries may read only the lake's views (network, cloud, auth, payment, dead_letter); "
                f"files outside the lake and extensions are off limits ({exc})"
            ) from None
        if isinstance(exc, duckdb.Error):
            raise LakeQueryError(str(exc)) from None


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
