"""LakeQuery: domain views, the read-only SQL fence, limits, timeouts and the event search."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from finsecure.event.schemas import arrow_schema
from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA, dead_letters
from finsecure.lake import query as query_module
from finsecure.lake.query import VIEWS, LakeQuery, LakeQueryError, LakeQueryTimeout, QueryRefused
from finsecure.lake.writer import LakeWriter
from tests.lake import T0, canonical_frame

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def lake(lake_root: Path) -> Iterator[LakeQuery]:
    with LakeQuery(lake_root, timeout_s=20) as query:
        yield query


def write(root: Path, domain: str, frame: pl.DataFrame) -> None:
    with LakeWriter(root) as writer:
        writer.write(domain, frame)


@pytest.fixture
def payments(lake_root: Path) -> pl.DataFrame:
    """30 payments one hour apart from May 1 22:00 UTC (3 days), scored 0.00..0.29, in two files."""
    frame = canonical_frame(
        "payment",
        30,
        step=HOUR,
        amount=[float(i) for i in range(30)],
        merchant_id=[f"m{i % 2}" for i in range(30)],
        decline_reason=["Card Blocked" if i == 7 else None for i in range(30)],
    )
    write(lake_root, "payment", frame.head(10))  # written before any scoring step existed
    write(
        lake_root, "payment", frame.tail(20).with_columns(score=pl.Series([i / 100 for i in range(10, 30)]))
    )
    return frame


# --- views -----------------------------------------------------------------------------------------


def test_views__one_per_domain_and_dead_letters(lake: LakeQuery) -> None:
    names = lake.sql("SHOW TABLES").table.column("name").to_pylist()
    assert sorted(names) == sorted(VIEWS)


def test_views__an_empty_domain_has_the_canonical_columns(lake: LakeQuery) -> None:
    columns = lake.columns("network")
    assert list(columns) == [*arrow_schema("network").names, "date"]
    assert columns["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert columns["bytes_out"] == "BIGINT"
    assert list(lake.columns("dead_letter")) == [*DEAD_LETTER_SCHEMA.names, "date"]
    assert lake.sql("SELECT count(*) AS n FROM network").table.to_pylist() == [{"n": 0}]


def test_views__read_files_of_different_widths(lake: LakeQuery, payments: pl.DataFrame) -> None:
    result = lake.sql(
        "SELECT count(*) AS n, count(score) AS scored, min(date) AS first, max(date) AS last FROM payment"
    )
    assert result.table.to_pylist() == [
        {"n": 30, "scored": 20, "first": dt.date(2024, 5, 1), "last": dt.date(2024, 5, 3)}
    ]


def test_views__see_a_domain_whose_first_file_came_after_opening(lake: LakeQuery, lake_root: Path) -> None:
    assert lake.sql("SELECT count(*) AS n FROM auth").table.to_pylist() == [{"n": 0}]
    write(lake_root, "auth", canonical_frame("auth", 4, action="login"))
    assert lake.sql("SELECT count(*) AS n FROM auth").table.to_pylist() == [{"n": 4}]


def test_views__dead_letters(lake: LakeQuery, lake_root: Path) -> None:
    with LakeWriter(lake_root) as writer:
        writer.write_dead_letters(dead_letters(source="replay:x", reasons=["bad"], offsets=[9], raws=["{"]))
    rows = lake.sql('SELECT source, "offset", reason FROM dead_letter').table.to_pylist()
    assert rows == [{"source": "replay:x", "offset": 9, "reason": "bad"}]


# --- the SQL fence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "COPY payment TO 'out.csv'",
        "COPY (SELECT 1) TO '{root}/inside.csv'",
        "ATTACH 'other.duckdb'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT 1; SELECT 2",
        "SELECT 1; COPY payment TO 'out.csv'",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "CREATE TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW payment AS SELECT 1",
        "DROP VIEW payment",
        "PRAGMA version",
        "CALL pragma_version()",
        "EXPORT DATABASE 'dump'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{root}/../secret.parquet')",
        "SELECT * FROM query('COPY (SELECT 1) TO ''{root}/x.csv''')",
    ],
)
def test_sql__refuses_anything_but_one_read_only_query(lake: LakeQuery, lake_root: Path, sql: str) -> None:
    lake_root.mkdir(parents=True, exist_ok=True)
    with pytest.raises((QueryRefused, LakeQueryError)):
        lake.sql(sql.format(root=lake_root.absolute().as_posix()))
    assert sorted(p.name for p in lake_root.iterdir()) == []  # nothing was written
    assert lake.sql("SELECT current_setting('enable_external_access') AS on").table.to_pylist() == [
        {"on": False}
    ]


def test_sql__refusals_say_why(lake: LakeQuery) -> None:
    with pytest.raises(QueryRefused, match="not COPY"):
        lake.sql("COPY payment TO 'x.csv'")
    with pytest.raises(QueryRefused, match="exactly one SQL statement, not 2"):
        lake.sql("SELECT 1; SELECT 2")
    with pytest.raises(QueryRefused, match="files outside the lake"):
        lake.sql("SELECT * FROM read_csv('/etc/passwd')")


def test_sql__accepts_the_select_family(lake: LakeQuery, payments: pl.DataFrame) -> None:
    assert lake.sql("WITH x AS (SELECT 2 AS v) SELECT v FROM x").table.to_pylist() == [{"v": 2}]
    assert lake.sql("DESCRIBE payment").table.num_rows == len(lake.columns("payment"))
    assert lake.sql("FROM payment SELECT event_id WHERE amount = 3").table.to_pylist() == [{"event_id": "e3"}]
    assert lake.sql("SUMMARIZE payment").table.num_rows > 0


def test_sql__stops_at_the_row_limit(lake: LakeQuery) -> None:
    result = lake.sql("SELECT * FROM range(25000) t(i)", limit=12_345)
    assert result.table.num_rows == 12_345
    assert result.truncated
    exact = lake.sql("SELECT * FROM range(10) t(i)", limit=10)
    assert exact.table.num_rows == 10
    assert not exact.truncated


def test_sql__stops_at_the_timeout(lake: LakeQuery) -> None:
    with pytest.raises(LakeQueryTimeout, match=r"longer than 0\.2 s"):
        lake.sql("SELECT count(*) FROM range(1000000000000) a", timeout_s=0.2)
    assert lake.sql("SELECT 1 AS ok").table.to_pylist() == [{"ok": 1}]  # the engine is still usable


def test_sql__reports_bad_sql(lake: LakeQuery) -> None:
    with pytest.raises(LakeQueryError, match="could not be read"):
        lake.sql("SELEC 1")
    with pytest.raises(LakeQueryError, match="no_such_column"):
        lake.sql("SELECT no_such_column FROM payment")


# --- search ----------------------------------------------------------------------------------------


def ids(rows: list[dict[str, object]]) -> list[object]:
    return [row["event_id"] for row in rows]


def test_search__newest_first_with_total(lake: LakeQuery, payments: pl.DataFrame) -> None:
    result = lake.search("payment", limit=3)
    assert ids(result.rows) == ["e29", "e28", "e27"]
    assert result.total == 30
    assert result.has_more
    first = result.rows[0]
    assert first["ts"] == T0 + 29 * HOUR
    assert first["amount"] == 29.0
    assert first["score"] == 0.29
    assert "date" not in first


def test_search__pages_and_order(lake: LakeQuery, payments: pl.DataFrame) -> None:
    asc = lake.search("payment", order="asc", limit=4, offset=4)
    assert ids(asc.rows) == ["e4", "e5", "e6", "e7"]
    assert asc.total == 30
    assert asc.has_more
    last = lake.search("payment", order="asc", limit=4, offset=28)
    assert ids(last.rows) == ["e28", "e29"]
    assert not last.has_more
    assert lake.search("payment", limit=4, offset=100).rows == []


def test_search__time_range_is_since_inclusive_until_exclusive(
    lake: LakeQuery, payments: pl.DataFrame
) -> None:
    result = lake.search("payment", since=T0 + 2 * HOUR, until=T0 + 5 * HOUR, order="asc")
    assert ids(result.rows) == ["e2", "e3", "e4"]
    assert result.total == 3
    # naive times are UTC; other zones are converted
    paris = dt.timezone(dt.timedelta(hours=2))
    same = lake.search(
        "payment", since=(T0 + 2 * HOUR).astimezone(paris), until=(T0 + 5 * HOUR).replace(tzinfo=None)
    )
    assert sorted(ids(same.rows)) == ["e2", "e3", "e4"]  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"user_id": "u1"}, {f"e{i}" for i in range(30) if i % 3 == 1}),
        ({"card_id": "c4", "user_id": "u0"}, {"e9", "e24"}),
        ({"src_ip": "10.0.0.3"}, {f"e{i}" for i in range(30) if i % 4 == 3}),
        ({"merchant_id": "m1", "min_score": 0.25}, {"e25", "e27", "e29"}),
        ({"account_id": "nobody"}, set()),
        ({"text": "card blocked"}, {"e7"}),
        ({"text": "E2", "min_score": 0.2}, {f"e2{i}" for i in range(10)}),
        ({"user_id": "u0' OR '1'='1"}, set()),
    ],
)
def test_search__filters(
    lake: LakeQuery, payments: pl.DataFrame, filters: dict[str, object], expected: set[str]
) -> None:
    result = lake.search("payment", limit=100, **filters)  # type: ignore[arg-type]
    assert set(ids(result.rows)) == expected
    assert result.total == len(expected)


def test_search__min_score_before_any_scores_finds_nothing(lake: LakeQuery, lake_root: Path) -> None:
    write(lake_root, "auth", canonical_frame("auth", 3))
    assert lake.search("auth", min_score=0.0).rows == []
    assert lake.search("auth", min_score=0.0).total == 0


def test_search__non_finite_numbers_come_back_as_none(lake: LakeQuery, lake_root: Path) -> None:
    write(lake_root, "auth", canonical_frame("auth", 2).with_columns(score=pl.Series([float("nan"), 0.5])))
    rows = lake.search("auth", order="asc").rows
    assert [r["score"] for r in rows] == [None, 0.5]


def test_search__refuses_bad_filters(lake: LakeQuery) -> None:
    with pytest.raises(ValueError, match="'since' must be before 'until'"):
        lake.search("payment", since=T0, until=T0)
    with pytest.raises(ValueError, match="finite"):
        lake.search("payment", min_score=float("nan"))
    with pytest.raises(ValueError, match="negative"):
        lake.search("payment", offset=-1)
    with pytest.raises(ValueError, match="order"):
        lake.search("payment", order="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wire"):
        lake.search("wire")


def test_search__reads_only_the_days_it_needs(lake_root: Path) -> None:
    rng = np.random.default_rng(7)
    for day in range(3):
        frame = canonical_frame(
            "payment", 2000, start=T0 + dt.timedelta(days=day), step=dt.timedelta(seconds=1)
        )
        write(lake_root, "payment", frame.with_columns(amount=pl.Series(rng.random(2000))))
    # Damage the data pages (not the footer) of the first day's file: only a query that reads it fails.
    (damaged,) = (lake_root / "domain=payment" / "date=2024-05-01").glob("*.parquet")
    data = bytearray(damaged.read_bytes())
    data[100:3000] = rng.integers(0, 255, 2900, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))

    with LakeQuery(lake_root) as lake:
        result = lake.search("payment", since=dt.datetime(2024, 5, 2, tzinfo=dt.UTC), order="asc", limit=5)
        assert result.total == 4000
        assert ids(result.rows) == ["e0", "e1", "e2", "e3", "e4"]
        # without a range, only the days holding the page are read: the newest page is fine...
        assert lake.search("payment", limit=5).total == 6000
        # ... and the oldest page needs the damaged day
        with pytest.raises(LakeQueryError):
            lake.search("payment", order="asc", limit=5)


def test_search__an_unreadable_lake_is_a_lake_error(lake_root: Path) -> None:
    directory = lake_root / "domain=cloud" / "date=2024-05-01"
    directory.mkdir(parents=True)
    (directory / "part-0000000000000-000000-deadbeef.parquet").write_bytes(b"not parquet at all")
    with LakeQuery(lake_root) as lake, pytest.raises(LakeQueryError, match="could not be read"):
        lake.search("cloud")


@pytest.mark.parametrize("small_sort", [0, 1_000_000], ids=["two_steps", "one_sort"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_search__pages_match_a_full_sort_even_with_equal_times(
    lake_root: Path, monkeypatch: pytest.MonkeyPatch, small_sort: int, order: str
) -> None:
    monkeypatch.setattr(query_module, "_SMALL_SORT", small_sort)
    rng = np.random.default_rng(3)
    times = [T0 + dt.timedelta(hours=int(h)) for h in rng.choice([0, 1, 2, 5, 26, 27, 49], 60)]
    frame = canonical_frame("payment", 60, prefix="t").with_columns(
        ts=pl.Series(times, dtype=pl.Datetime("us", "UTC")),
        event_id=pl.Series([f"t{i:02d}" for i in rng.permutation(60)]),
    )
    write(lake_root, "payment", frame.head(25))
    write(lake_root, "payment", frame.tail(35))
    expected = frame.sort(["ts", "event_id"], descending=order == "desc")["event_id"].to_list()

    with LakeQuery(lake_root) as lake:
        pages = [lake.search("payment", order=order, limit=7, offset=o) for o in range(0, 63, 7)]  # type: ignore[arg-type]

    assert [e for page in pages for e in ids(page.rows)] == expected
    assert [page.has_more for page in pages] == [True] * 8 + [False]
    assert {page.total for page in pages} == {60}
