"""The ``finsecure`` command line, run in-process against both databases."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from finsecure.audit.models import AuditEntry
from finsecure.auth.models import ApiKey, Role, User
from finsecure.cli import app
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.core.security import Passwords
from finsecure.core.settings import get_settings
from tests.conftest import BACKENDS, TEST_JWT_SECRET, make_settings

runner = CliRunner()


@pytest.fixture
def cli_env(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("FINSECURE_ENV", "test")
    monkeypatch.setenv("FINSECURE_JWT_SECRET", TEST_JWT_SECRET)
    monkeypatch.setenv("FINSECURE_DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("FINSECURE_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("FINSECURE_ARGON2_MEMORY_KIB", "64")
    monkeypatch.setenv("FINSECURE_ARGON2_PARALLELISM", "1")
    monkeypatch.delenv("FINSECURE_ADMIN_PASSWORD", raising=False)
    get_settings.cache_clear()
    yield fresh_database_url
    get_settings.cache_clear()


def _invoke(*args: str, stdin: str | None = None) -> str:
    result = runner.invoke(app, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def _users(url: str) -> dict[str, User]:
    engine = create_db_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return {u.username: u for u in session.scalars(select(User))}
    finally:
        engine.dispose()


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_bootstrap__generates_one_time_password_once(cli_env: str) -> None:
    _invoke("migrate")
    out = _invoke("bootstrap")
    match = re.search(r"One-time password: (\w+)", out)
    assert match, out
    admin = _users(cli_env)["admin"]
    assert admin.role is Role.admin
    assert admin.must_change_password
    settings = make_settings(database_url=cli_env)
    assert Passwords(settings).verify(admin.password_hash, match.group(1))
    assert "One-time password" not in _invoke("bootstrap"), "a second bootstrap must not create another admin"
    assert len(_users(cli_env)) == 1


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_bootstrap__uses_admin_password_from_env(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSECURE_ADMIN_PASSWORD", "a-long-admin-password-from-env")
    get_settings.cache_clear()
    _invoke("migrate")
    out = _invoke("bootstrap")
    assert "a-long-admin-password-from-env" not in out, "the password must never be echoed"
    admin = _users(cli_env)["admin"]
    assert not admin.must_change_password
    assert Passwords(make_settings()).verify(admin.password_hash, "a-long-admin-password-from-env")


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_users__create_list_disable_enable(cli_env: str) -> None:
    _invoke("migrate")
    _invoke(
        "users", "create", "dana", "--role", "analyst", "--password-stdin", stdin="a-very-good-password\n"
    )
    out = _invoke("users", "create", "eve")
    assert re.search(r"One-time password .*: \w{20}", out), out
    listing = _invoke("users", "list")
    assert "dana" in listing
    assert "analyst" in listing
    assert "must change password" in listing
    _invoke("users", "disable", "dana")
    assert _users(cli_env)["dana"].disabled
    _invoke("users", "enable", "dana")
    assert not _users(cli_env)["dana"].disabled
    engine = create_db_engine(cli_env)
    with make_session_factory(engine)() as session:
        actions = [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        actors = {e.actor for e in session.scalars(select(AuditEntry))}
    engine.dispose()
    assert actions == ["user.create", "user.create", "user.update", "user.update"]
    assert all(a.startswith("cli:") for a in actors)


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_users__errors_are_clear(cli_env: str) -> None:
    _invoke("migrate")
    _invoke("users", "create", "frank")
    duplicate = runner.invoke(app, ["users", "create", "FRANK"])
    assert duplicate.exit_code == 1
    assert "taken" in duplicate.output
    bad = runner.invoke(app, ["users", "create", "has space"])
    assert bad.exit_code == 1
    assert "username" in bad.output
    missing = runner.invoke(app, ["users", "disable", "nobody"])
    assert missing.exit_code == 1
    assert "No user named" in missing.output


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_apikeys__create_list_revoke(cli_env: str) -> None:
    _invoke("migrate")
    out = _invoke("apikeys", "create", "gateway", "--scope", "ingest", "--scope", "read")
    raw = re.search(r"fsk_\w{12}_\S+", out)
    assert raw, out
    prefix = raw.group(0).split("_")[1]
    assert prefix in _invoke("apikeys", "list")
    assert raw.group(0) not in _invoke("apikeys", "list")
    _invoke("apikeys", "revoke", prefix)
    engine = create_db_engine(cli_env)
    with make_session_factory(engine)() as session:
        key = session.scalars(select(ApiKey)).one()
    engine.dispose()
    assert key.revoked_at is not None
    assert key.scopes == ["ingest", "read"]
    assert runner.invoke(app, ["apikeys", "revoke", "000000000000"]).exit_code == 1


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_migrate__down_to_base_and_up(cli_env: str) -> None:
    assert f"revision {migrate.head_revision()}" in _invoke("migrate")
    assert "revision base" in _invoke("migrate", "base", "--down")
    assert f"revision {migrate.head_revision()}" in _invoke("migrate")


def test_cli__refuses_default_secret_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSECURE_ENV", "production")
    monkeypatch.delenv("FINSECURE_JWT_SECRET", raising=False)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["migrate"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "Configuration error" in result.output
    assert "FINSECURE_JWT_SECRET" in result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["migrate"],
        ["serve"],
        ["bootstrap"],
        ["users"],
        ["users", "create"],
        ["users", "list"],
        ["users", "disable"],
        ["apikeys"],
        ["apikeys", "create"],
        ["apikeys", "revoke"],
        ["rules"],
        ["rules", "test"],
        ["rules", "backtest"],
        ["rules", "sigma-report"],
        ["replay"],
        ["query"],
        ["simulate"],
    ],
    ids=lambda c: " ".join(c) or "root",
)
def test_help__every_command_explains_itself(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    assert len(result.output.splitlines()) > 5
