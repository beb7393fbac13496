"""Shared fixtures: every database test runs against BOTH SQLite and a real PostgreSQL server.

PostgreSQL comes from ``FINSECURE_TEST_PG_URL`` (default: the local server on 127.0.0.1:5432). A fresh
database is created per test session (and xdist worker), migrated with Alembic, and dropped at the end.
Each test runs inside a transaction that is rolled back, so tests never see each other's rows.
When the server does not answer, the PostgreSQL half is skipped on a developer's machine but FAILS in CI
(``CI=true``) or when ``FINSECURE_REQUIRE_SERVICES=1`` (set by ``make test``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from finsecure.api import build_context, create_app
from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import Role, User
from finsecure.auth.schemas import UserCreate
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.core.deps import AppContext, get_db
from finsecure.core.settings import Settings

PG_URL = os.environ.get("FINSECURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEST_PASSWORD = "correct-horse-battery-staple"
TEST_JWT_SECRET = "test-secret-" + "x" * 40


def datasets_path() -> Path:
    """The shared real datasets (``FINSECURE_DATASETS`` or ``../shared/datasets`` beside the checkout)."""
    env = os.environ.get("FINSECURE_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The real datasets; skipped on a user's clone without them, but required in CI."""
    path = datasets_path()
    if not (path / "README.md").exists():
        if services_required():
            pytest.fail(f"CI needs the shared datasets but {path} has none (set FINSECURE_DATASETS)")
        pytest.skip(f"no shared datasets at {path}")
    return path


def services_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("FINSECURE_REQUIRE_SERVICES") == "1"


def require_postgres() -> Engine:
    """An engine on the server's maintenance database, or skip/fail as described above."""
    engine = create_db_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} does not answer: {exc.orig}"
        if services_required():
            pytest.fail(message + " (required: CI=true or FINSECURE_REQUIRE_SERVICES=1; run `make services`)")
        pytest.skip(message)
    return engine


@dataclass
class TempPostgres:
    """A throwaway database on the shared server."""

    admin_engine: Engine
    name: str

    @property
    def url(self) -> str:
        return make_url(PG_URL).set(database=self.name).render_as_string(hide_password=False)

    @classmethod
    def create(cls, prefix: str = "finsecure_test") -> TempPostgres:
        admin = require_postgres()
        name = f"{prefix}_{secrets.token_hex(4)}"
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        return cls(admin, name)

    def drop(self) -> None:
        with self.admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin_engine.dispose()


@pytest.fixture
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables) on the backend named by the test's ``backend`` parameter."""
    backend = request.param if hasattr(request, "param") else "sqlite"
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    pg = TempPostgres.create("finsecure_fresh")
    try:
        yield pg.url
    finally:
        pg.drop()


#: Parametrise a test over both databases (use with the ``fresh_database_url`` fixture, ``indirect=True``).
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="pg", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session", params=BACKENDS)
def db_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated database for the whole session, once per backend."""
    pg: TempPostgres | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    else:
        pg = TempPostgres.create()
        url = pg.url
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        if pg is not None:
            pg.drop()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session whose commits become savepoints inside one transaction rolled back after the test."""
    connection = db_engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        transaction.rollback()
        connection.close()


def make_settings(**overrides: object) -> Settings:
    """Test settings: fast (weak) argon2 so that the suite stays quick; never use these in production."""
    values: dict[str, object] = {
        "env": "test",
        "jwt_secret": TEST_JWT_SECRET,
        "argon2_time_cost": 1,
        "argon2_memory_kib": 64,
        "argon2_parallelism": 1,
        "database_url": "sqlite://",
        "ml_bootstrap": False,  # no model training in the background of every platform test
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(db_engine: Engine) -> Settings:
    return make_settings(database_url=db_engine.url.render_as_string(hide_password=False))


@pytest.fixture
def context(settings: Settings, db_engine: Engine) -> AppContext:
    return build_context(settings, engine=db_engine)


@pytest.fixture
def app(context: AppContext, db_session: Session) -> FastAPI:
    application = create_app(context=context)
    application.dependency_overrides[get_db] = lambda: db_session
    return application


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def make_user(db_session: Session, context: AppContext) -> Callable[..., User]:
    """Factory: ``make_user(role=Role.analyst)`` creates an active user with ``TEST_PASSWORD``."""
    counter = iter(range(1, 1_000_000))

    def factory(
        role: Role = Role.viewer, *, username: str | None = None, password: str = TEST_PASSWORD
    ) -> User:
        name = username or f"{role.value}{next(counter)}"
        user, _ = auth_service.create(
            db_session=db_session,
            passwords=context.passwords,
            user_in=UserCreate(username=name, password=password, role=role),
            actor=Actor(label="test"),
        )
        return user

    return factory


def login(client: TestClient, username: str, password: str = TEST_PASSWORD) -> dict[str, str]:
    response = client.post("/api/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


@pytest.fixture
def auth_headers(client: TestClient, make_user: Callable[..., User]) -> Callable[[Role], dict[str, str]]:
    """Factory: bearer headers for a new user of the given role."""

    def factory(role: Role) -> dict[str, str]:
        user = make_user(role)
        return {"Authorization": f"Bearer {login(client, user.username)['access_token']}"}

    return factory
