"""GET /api/health: 200 when the database answers (also when it is only busy), 503 ``degraded`` when it does
not, never a 500."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import sessionmaker

from finsecure import __version__
from finsecure.api import build_context, create_app
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.platform import Platform
from finsecure.system import service as system_service
from finsecure.system.outbox import OutboxStatus, is_db_busy
from tests.conftest import TempPostgres, make_settings


def _client_for(engine: Engine) -> TestClient:
    settings = make_settings(database_url=engine.url.render_as_string(hide_password=False))
    return TestClient(
        create_app(context=build_context(settings, engine=engine)), raise_server_exceptions=False
    )


@pytest.fixture
def unreachable_pg() -> Iterator[Engine]:
    # Port 1 refuses connections at once; the timeout bounds the test if something does answer slowly.
    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/nope",
        connect_args={"connect_timeout": 1},
        pool_pre_ping=True,
    )
    yield engine
    engine.dispose()


@pytest.fixture
def unopenable_sqlite(tmp_path: Path) -> Iterator[Engine]:
    # A file inside a directory that does not exist (plain create_engine does not create it).
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    yield engine
    engine.dispose()


def test_health__database_up(client: TestClient, db_engine: Engine) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "version": __version__,
        "database": {"status": "ok", "detail": db_engine.dialect.name},
        "schema_revision": migrate.head_revision(),
    }
    assert migrate.head_revision() is not None


def test_health__needs_no_credentials_and_sets_security_headers(client: TestClient) -> None:
    response = client.get("/api/health", headers={"authorization": "Bearer garbage"})
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("engine_fixture", ["unreachable_pg", "unopenable_sqlite"])
def test_health__database_down_is_503_degraded(request: pytest.FixtureRequest, engine_fixture: str) -> None:
    engine: Engine = request.getfixturevalue(engine_fixture)
    with _client_for(engine) as test_client:
        response = test_client.get("/api/health")
    assert response.status_code == 503, response.text
    assert response.json() == {
        "status": "degraded",
        "version": __version__,
        "database": {"status": "down", "detail": "the database does not answer"},
        "schema_revision": None,
    }
    # Nothing about where the database lives or why it failed reaches the caller.
    for leak in ("127.0.0.1", "nope", "missing", "postgres", "refused", "unable to open"):
        assert leak not in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_health__database_down_is_logged_without_details(
    unreachable_pg: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with _client_for(unreachable_pg) as test_client:
        assert test_client.get("/api/health").status_code == 503
    messages = [r.getMessage() for r in caplog.records if r.name == "finsecure.system.service"]
    assert messages == ["health: database unreachable: OperationalError"]


def test_health__recovers_when_database_comes_back(tmp_path: Path) -> None:
    db_dir = tmp_path / "later"
    engine = create_engine(f"sqlite:///{db_dir / 'x.db'}")
    try:
        with _client_for(engine) as test_client:
            assert test_client.get("/api/health").status_code == 503
            db_dir.mkdir()
            migrate.upgrade(engine)
            response = test_client.get("/api/health")
    finally:
        engine.dispose()
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_health__documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/api/openapi.json").json()["paths"]["/api/health"]["get"]
    assert {"200", "503"} <= set(operation["responses"])
    assert "security" not in operation


def test_health__unmigrated_database_is_degraded(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with _client_for(engine) as test_client:
            response = test_client.get("/api/health")
    finally:
        engine.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["status"] == "outdated"
    assert "finsecure migrate" in body["database"]["detail"]


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'busy.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def test_health__sqlite_locked_by_another_writer_is_busy_not_down(sqlite_engine: Engine) -> None:
    # Another process holds the write lock exclusively, so that even reads have to wait on it.
    database = sqlite_engine.url.database
    assert database is not None
    sqlite_engine.dispose()  # an exclusive lock needs every other connection closed first
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE alembic_version SET version_num = version_num")
    try:
        with _client_for(sqlite_engine) as test_client:
            response = test_client.get("/api/health")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["status"] == "busy"
    assert "busy with other writes" in body["database"]["detail"]
    # the short wait of the check went back to the usual one: the lock is gone, all is well again
    with _client_for(sqlite_engine) as test_client:
        assert test_client.get("/api/health").json()["database"]["status"] == "ok"
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000


def test_check_database__busy_once_then_answers_is_ok(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_read = system_service._read

    def read_locked_once(engine: Engine) -> str | None:
        calls.append(1)
        if len(calls) == 1:
            locked = sqlite3.OperationalError("database is locked")
            locked.sqlite_errorcode = 5
            raise sa_exc.OperationalError("SELECT 1", {}, locked)
        return real_read(engine)

    monkeypatch.setattr(system_service, "_read", read_locked_once)
    check = system_service.check_database(engine=sqlite_engine)
    assert (check.status, check.revision, len(calls)) == ("ok", migrate.head_revision(), 2)


@pytest.mark.postgres
def test_health__postgres_lock_wait_is_busy_not_down() -> None:
    pg = TempPostgres.create("finsecure_health")
    engine = create_db_engine(pg.url)
    holder = create_db_engine(pg.url)
    try:
        migrate.upgrade(engine)
        with holder.connect() as conn:
            conn.execute(text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
            with _client_for(engine) as test_client:
                response = test_client.get("/api/health")
            conn.rollback()
        with _client_for(engine) as test_client:
            after = test_client.get("/api/health")
    finally:
        engine.dispose()
        holder.dispose()
        pg.drop()
    assert response.status_code == 200, response.text
    assert response.json()["database"]["status"] == "busy"
    assert after.status_code == 200
    assert after.json()["database"]["status"] == "ok"


def _locked_write(frame: pl.DataFrame) -> None:
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5
    raise sa_exc.OperationalError("INSERT", {}, locked)


def test_health__writes_waiting_on_a_busy_database_are_not_a_503(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url=sqlite_engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        demo_stream=False,
    )
    platform = Platform(settings, sessionmaker(bind=sqlite_engine), steps=[])
    platform.outbox.register("busy_rows", _locked_write)
    assert platform.outbox.submit("busy_rows", pl.DataFrame({"n": [1, 2, 3]})) is False
    app = create_app(context=build_context(settings, engine=sqlite_engine, platform=platform))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        busy = test_client.get("/api/health")
        # still waiting after the grace period: a real problem, which the check reports
        status = platform.outbox.status()
        assert status.down_since is not None
        platform.outbox._down_since = status.down_since - dt.timedelta(seconds=system_service.BUSY_GRACE_S)
        stuck = test_client.get("/api/health")
    assert busy.status_code == 200, busy.text
    assert busy.json()["status"] == "degraded"
    assert busy.json()["database"]["status"] == "ok"
    assert busy.json()["pipeline"]["status"] == "busy"
    assert "busy with other writes" in busy.json()["pipeline"]["detail"]
    assert stuck.status_code == 503
    assert stuck.json()["pipeline"]["status"] == "degraded"


def test_writes_state__unreachable_database_is_degraded_at_once() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    down = OutboxStatus("degraded", 5, 1, 0, 0, 0, now, "OperationalError", busy=False)
    assert system_service.writes_state(down, now=now) == "degraded"
    done = OutboxStatus("ok", 0, 0, 0, 5, 0, None, None)
    assert system_service.writes_state(done, now=now) == "ok"


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "busy"), [("55P03", True), ("40P01", True), ("57014", True), ("08006", False)]
)
def test_is_db_busy__postgres_lock_states_only(sqlstate: str, busy: bool) -> None:
    assert is_db_busy(sa_exc.OperationalError("SELECT 1", {}, _PgError(sqlstate))) is busy
