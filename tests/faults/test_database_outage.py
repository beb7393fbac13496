"""The database goes away in the middle of a stream: the pipeline keeps accepting events into the lake,
health says ``degraded``, scored events, alerts and dead letters wait in the outbox (in memory, then on
disk across a restart) and are all written once the database is back. Nothing is lost, nothing doubled.

Runs against a real PostgreSQL server started for the test (``tests/faults/conftest.py``), which the
test stops like a crash and starts again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.api import build_context, create_app
from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.schemas import ApiKeyCreate, Scope
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.core.settings import Settings
from finsecure.event.models import StoredEvent
from finsecure.event.schemas import Domain
from finsecure.ingest.models import DeadLetter
from finsecure.ingest.readers import parse_records
from finsecure.ingest.sources import canonical_mapping
from finsecure.pipeline.batch import Batch, Step
from finsecure.platform import Platform
from tests.conftest import make_settings
from tests.faults.conftest import PgServer

PER_PHASE = 60
BAD_PER_PHASE = 3


class ScoreAndFlag(Step):
    """Scores every event 1.0 and reports one rule hit per event (one card each: one alert each)."""

    step_id = "score_and_flag"

    def __init__(self) -> None:
        self.on_hits: Callable[[pl.DataFrame], object] = lambda hits: None

    def process(self, batch: Batch) -> Batch:
        frame = batch.frame.with_columns(score=pl.lit(1.0))
        hits = frame.select(
            rule_id=pl.lit("fault-rule"),
            rule_title=pl.lit("Fault test"),
            domain=pl.lit("payment"),
            event_id="event_id",
            entity_type=pl.lit("card_id"),
            entity_id="card_id",
            ts="ts",
            severity=pl.lit("high"),
            explanation=pl.lit("card used during the fault test"),
        )
        self.on_hits(hits)
        return batch.with_frame(frame)


def _body(phase: str) -> bytes:
    lines = [
        {
            "event_id": f"{phase}-{i}",
            "domain": "payment",
            "ts": "2026-11-24T10:00:00+00:00",
            "source": "fault-test",
            "card_id": f"card-{phase}-{i}",
            "merchant_id": "m1",
            "amount": 10.0 + i,
            "currency": "EUR",
        }
        for i in range(PER_PHASE)
    ]
    lines += [
        {"event_id": f"{phase}-bad-{i}", "domain": "payment", "ts": "soon"} for i in range(BAD_PER_PHASE)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _submit(platform: Platform, phase: str) -> None:
    raw, rejects = parse_records(_body(phase), fields=canonical_mapping("ndjson").read.fields)
    assert rejects.num_rows == 0
    result = platform.normaliser("fault-test").normalise(raw)
    assert result.rejects.num_rows == BAD_PER_PHASE
    platform.pipeline.submit(Domain.payment, result.frames[Domain.payment], source="fault-test")
    platform.pipeline.submit_rejects(result.rejects)
    platform.pipeline.flush(timeout=30)


def _platform(settings: Settings, engine: Engine) -> Platform:
    step = ScoreAndFlag()
    platform = Platform(settings, make_session_factory(engine), steps=[step], demo_source=None)
    step.on_hits = lambda hits: platform.outbox.submit("alerts", hits)
    platform.outbox.retry_s = 0.2
    return platform


def _wait_caught_up(platform: Platform, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while platform.outbox.status().state != "ok":
        assert time.monotonic() < deadline, platform.outbox.status()
        time.sleep(0.1)


def _db_counts(url: str) -> tuple[int, int, int]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            events = conn.scalar(select(func.count(func.distinct(StoredEvent.event_id))))
            rows = conn.scalar(select(func.count()).select_from(StoredEvent))
            assert events == rows  # nothing written twice
            alerts = conn.scalar(select(func.count()).select_from(Alert))
            dead = conn.scalar(select(func.count()).select_from(DeadLetter))
            return int(events or 0), int(alerts or 0), int(dead or 0)
    finally:
        engine.dispose()


def _lake_counts(lake: Path) -> tuple[int, int, int]:
    payments = f"read_parquet('{lake}/domain=payment/**/*.parquet', union_by_name=true)"
    dead = f"read_parquet('{lake}/dead_letter/**/*.parquet', union_by_name=true)"
    with duckdb.connect() as con:
        counted = con.execute(f"select count(*), count(distinct event_id) from {payments}").fetchone()  # noqa: S608
        dead_counted = con.execute(f"select count(*) from {dead}").fetchone()  # noqa: S608
    assert counted is not None
    assert dead_counted is not None
    return int(counted[0]), int(counted[1]), int(dead_counted[0])


def test_platform__database_outage_loses_nothing(pg_server: PgServer, tmp_path: Path) -> None:
    engine = create_db_engine(pg_server.url)
    migrate.upgrade(engine)
    with Session(engine) as session:
        _, key = auth_service.create_api_key(
            db_session=session,
            key_in=ApiKeyCreate(name="fault", scopes=[Scope.ingest]),
            owner_id=None,
            actor=Actor(label="test"),
        )
        session.commit()
    settings = make_settings(database_url=pg_server.url, data_dir=tmp_path, demo_stream=False)
    platform = _platform(settings, engine)
    app = create_app(context=build_context(settings, engine=engine, platform=platform))
    client = TestClient(app, raise_server_exceptions=False)  # a 503 goes through the catch-all handler
    platform.start()
    try:
        _submit(platform, "up")  # 1. all well
        assert platform.outbox.status().state == "ok"
        assert client.get("/api/health").json()["pipeline"]["status"] == "ok"

        pg_server.stop()  # 2. the database crashes mid-stream
        _submit(platform, "down1")
        _submit(platform, "down2")
        status = platform.outbox.status()
        assert status.state == "degraded"
        # 60 scored events + 60 hits + 3 dead letters per phase, for the two phases
        assert status.pending_rows == 2 * (2 * PER_PHASE + BAD_PER_PHASE)
        health = client.get("/api/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["database"]["status"] == "down"
        assert health.json()["pipeline"]["status"] == "degraded"
        assert "events still go to the lake" in health.json()["pipeline"]["detail"]
        # requests that need the database hear of the outage, not of a bug
        refused = client.post("/api/ingest/payment", content=_body("http"), headers={"X-API-Key": key})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert refused.headers["retry-after"] == "5"
        # the lake kept accepting
        assert _lake_counts(settings.lake_dir)[:2] == (3 * PER_PHASE, 3 * PER_PHASE)

        pg_server.start()  # 3. it comes back: the outbox catches up on its own
        _wait_caught_up(platform)
        assert _db_counts(pg_server.url) == (3 * PER_PHASE, 3 * PER_PHASE, 3 * BAD_PER_PHASE)
        assert client.get("/api/health").status_code == 200

        pg_server.stop()  # 4. down again, and this process stops before it returns
        _submit(platform, "down3")
    finally:
        platform.stop(timeout=2)
        engine.dispose()
    spilled = list((tmp_path / "outbox").glob("*.arrow"))
    assert spilled  # the writes wait on disk

    pg_server.start()  # 5. the next process writes what the last one left
    engine = create_db_engine(pg_server.url)
    platform = _platform(settings, engine)
    platform.start()
    try:
        _wait_caught_up(platform)
        _submit(platform, "after")
        assert platform.outbox.status().state == "ok"
    finally:
        platform.stop(timeout=10)
        engine.dispose()
    assert not list((tmp_path / "outbox").glob("*.arrow"))
    phases = 5
    assert _db_counts(pg_server.url) == (phases * PER_PHASE, phases * PER_PHASE, phases * BAD_PER_PHASE)
    assert _lake_counts(settings.lake_dir) == (phases * PER_PHASE, phases * PER_PHASE, phases * BAD_PER_PHASE)
