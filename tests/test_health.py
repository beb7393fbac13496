"""GET /api/health: 200 when the database answers, 503 ``degraded`` when it does not, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine

from finsecure import __version__
from finsecure.api import build_context, create_app
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from tests.conftest import make_settings


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
    messages = [r.getMessage() for r in caplog.records if r.name == "finsecure.system.views"]
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
