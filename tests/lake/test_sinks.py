"""Sinks: the lake, dead letters in both stores, scored events kept once, in bulk, on both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from sqlalchemy import Connection, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from finsecure.event.models import StoredEvent
from finsecure.event.schemas import Domain
from finsecure.ingest.deadletter import dead_letters
from finsecure.ingest.models import DeadLetter
from finsecure.lake.query import LakeQuery
from finsecure.lake.sinks import DeadLetterSink, LakeSink, ScoredEventSink
from finsecure.lake.writer import LakeWriter
from finsecure.pipeline.batch import Batch
from tests.lake import T0, canonical_frame


class StatementLog:
    """The SQL statements sent to the database (one entry per cursor execution)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, bool]] = []

    def __call__(self, _conn: Any, _cursor: Any, statement: str, _params: Any, _ctx: Any, many: bool) -> None:
        self.statements.append((statement, many))

    def inserts(self, table: str) -> int:
        return sum(
            1 for sql, _ in self.statements if sql.lstrip().upper().startswith(f"INSERT INTO {table.upper()}")
        )


@pytest.fixture
def connection(db_session: Session) -> Connection:
    return db_session.connection()


@pytest.fixture
def session_factory(connection: Connection) -> sessionmaker[Session]:
    """Sessions on the test's connection: their commits are savepoints rolled back after the test."""
    return sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture
def statements(connection: Connection) -> Iterator[StatementLog]:
    log = StatementLog()
    event.listen(connection, "before_cursor_execute", log)
    yield log
    event.remove(connection, "before_cursor_execute", log)


def test_lake_sink__writes_batches_to_their_domain(tmp_path: Path) -> None:
    sink = LakeSink(LakeWriter(tmp_path))
    sink.write(Batch(Domain.auth, canonical_frame("auth", 3), source="test"))
    sink.write(Batch(Domain.cloud, canonical_frame("cloud", 2), source="test"))
    assert list(tmp_path.rglob("*.parquet")) == []
    sink.close()
    with LakeQuery(tmp_path) as lake:
        counts = lake.sql("SELECT (SELECT count(*) FROM auth) AS auth, (SELECT count(*) FROM cloud) AS cloud")
    assert counts.table.to_pylist() == [{"auth": 3, "cloud": 2}]


def test_dead_letter_sink__writes_the_database_and_the_lake(
    tmp_path: Path, db_session: Session, session_factory: sessionmaker[Session], statements: StatementLog
) -> None:
    sink = DeadLetterSink(LakeWriter(tmp_path), session_factory)
    table = dead_letters(
        source="replay:" + "x" * 200,
        reasons=["not JSON", "ts has no time zone", "amount is not a number"],
        offsets=[4, 17, None],
        raws=[b"{bad\x00json", '{"ts": "2024-05-01 10:00"}', None],
        domain="payment",
        ts=dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC),
    )

    assert sink.write(table) == 3
    sink.close()

    assert statements.inserts("dead_letters") == 1  # one bulk statement for the three rows
    # Other tests' pipelines commit dead letters to the same database: look only at this source's rows.
    mine = DeadLetter.source == ("replay:" + "x" * 200)[:128]
    rows = db_session.scalars(select(DeadLetter).where(mine).order_by(DeadLetter.id)).all()
    assert [(r.offset, r.reason) for r in rows] == [
        (4, "not JSON"),
        (17, "ts has no time zone"),
        (None, "amount is not a number"),
    ]
    assert rows[0].raw == "{bad\ufffdjson"  # PostgreSQL cannot store NUL
    assert rows[0].source == ("replay:" + "x" * 200)[:128]
    assert rows[0].ts == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert {r.domain for r in rows} == {"payment"}
    with LakeQuery(tmp_path) as lake:
        stored = lake.sql(
            'SELECT "offset", reason, raw, date FROM dead_letter ORDER BY reason'
        ).table.to_pylist()
    assert [r["reason"] for r in stored] == ["amount is not a number", "not JSON", "ts has no time zone"]
    assert stored[1]["raw"] == "{bad\x00json"  # the lake keeps the record exactly
    assert {r["date"] for r in stored} == {dt.date(2024, 5, 1)}


def test_dead_letter_sink__ignores_empty_and_refuses_foreign_tables(
    tmp_path: Path, db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    sink = DeadLetterSink(LakeWriter(tmp_path), session_factory)
    assert sink.write(dead_letters(source="s", reasons=[], offsets=[], raws=[])) == 0
    with pytest.raises(ValueError, match="not a dead-letter table"):
        sink.write(pa.table({"reason": ["x"]}))
    query = select(func.count()).select_from(DeadLetter).where(DeadLetter.source == "s")
    assert db_session.scalar(query) == 0


def scored(n: int, scores: list[float | None], prefix: str = "s") -> pl.DataFrame:
    return canonical_frame(
        "payment",
        n,
        prefix=prefix,
        amount=[10.0 * i for i in range(n)],
        currency="EUR",
        label=[1 if i % 2 else 0 for i in range(n)],
    ).with_columns(
        score=pl.Series(scores, dtype=pl.Float64),
        velocity_1h=pl.Series([float("nan")] + [float(i) for i in range(1, n)]),
        first_seen=pl.lit(dt.datetime(2024, 4, 1, tzinfo=dt.UTC)),
    )


def test_scored_event_sink__keeps_rows_at_or_above_the_threshold(
    db_session: Session, session_factory: sessionmaker[Session], statements: StatementLog
) -> None:
    sink = ScoredEventSink(session_factory, threshold=0.8)
    frame = scored(5, [0.1, 0.8, None, 0.95, 0.79])

    sink.write(Batch(Domain.payment, frame, source="test"))

    assert statements.inserts("events") == 1
    stored = db_session.scalars(select(StoredEvent).order_by(StoredEvent.event_id)).all()
    assert [(e.event_id, e.score) for e in stored] == [("s1", 0.8), ("s3", 0.95)]
    first = stored[0]
    assert first.ts == T0 + dt.timedelta(minutes=1)
    assert (first.domain, first.source, first.tenant) == ("payment", "test_feed", "default")
    assert (first.user_id, first.card_id, first.src_ip) == ("u1", "c1", "10.0.0.1")
    assert first.payload["amount"] == 10.0
    assert first.payload["currency"] == "EUR"
    assert first.payload["velocity_1h"] == 1.0
    assert first.payload["first_seen"] == "2024-04-01T00:00:00.000000Z"
    assert first.payload["label"] == 1
    assert "event_id" not in first.payload
    assert "score" not in first.payload


def test_scored_event_sink__is_idempotent_on_event_id(
    db_session: Session, session_factory: sessionmaker[Session]
) -> None:
    sink = ScoredEventSink(session_factory, threshold=0.5)
    frame = scored(4, [0.9, 0.9, 0.1, 0.6])
    sink.write_frame(frame)
    sink.write_frame(frame)  # a replay after a crash
    # a later batch holding one old and one new event, and a duplicate inside the batch
    sink.write_frame(
        pl.concat([frame.slice(0, 1), scored(1, [0.7], prefix="new"), scored(1, [0.7], prefix="new")])
    )

    event_ids = db_session.scalars(select(StoredEvent.event_id).order_by(StoredEvent.event_id)).all()
    assert event_ids == ["new0", "s0", "s1", "s3"]


def test_scored_event_sink__nan_scores_and_unscored_batches_store_nothing(
    db_session: Session, session_factory: sessionmaker[Session], statements: StatementLog
) -> None:
    sink = ScoredEventSink(session_factory, threshold=0.5)
    assert sink.write_frame(canonical_frame("payment", 3)) == 0  # no score column yet
    assert sink.write_frame(scored(2, [0.1, 0.2])) == 0
    assert sink.write_frame(scored(1, [0.9]).with_columns(score=pl.lit(float("nan")))) == 0
    assert statements.inserts("events") == 0
    assert db_session.scalar(select(func.count()).select_from(StoredEvent)) == 0


def test_scored_event_sink__explanations_and_nul_text(
    db_session: Session, session_factory: sessionmaker[Session], statements: StatementLog
) -> None:
    frame = scored(2, [0.9, 0.9]).with_columns(
        explanation=pl.Series([{"rule": "impossible_travel", "weight": 0.7}, None]),
        merchant_category=pl.Series(["food\x00", None]),
    )
    ScoredEventSink(session_factory, threshold=0.5).write_frame(frame)

    assert statements.inserts("events") == 1  # rows with and without an explanation: still one statement

    stored = {e.event_id: e for e in db_session.scalars(select(StoredEvent))}
    assert stored["s0"].explanation == {"rule": "impossible_travel", "weight": 0.7}
    assert stored["s1"].explanation is None
    assert stored["s0"].payload["merchant_category"] == "food\ufffd"
