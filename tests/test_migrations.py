"""Alembic migrations: up, down to base and up again on both databases, and no drift from the models."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.core.models import metadata
from tests.conftest import BACKENDS

EXPECTED_TABLES = {
    "alembic_version",
    "alerts",
    "api_keys",
    "audit_log",
    "blocklist",
    "dead_letters",
    "edges",
    "entities",
    "events",
    "incident_alerts",
    "incident_notes",
    "incidents",
    "models",
    "refresh_tokens",
    "response_actions",
    "rule_states",
    "rules",
    "suppressions",
    "system_metrics",
    "users",
}


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_upgrade_downgrade__round_trip(fresh_database_url: str) -> None:
    engine = create_db_engine(fresh_database_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert _tables(engine) == EXPECTED_TABLES
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert _tables(engine) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert _tables(engine) == EXPECTED_TABLES
    finally:
        engine.dispose()


def test_models__match_migrations(db_engine: Engine) -> None:
    """A model changed without a migration shows up here as a difference."""
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_revision_files__date_prefixed_and_linear() -> None:
    versions = resources.files("finsecure.migrations") / "versions"
    names = sorted(p.name for p in versions.iterdir() if p.name.endswith(".py") and p.name != "__init__.py")
    assert names, "no migrations shipped"
    for name in names:
        assert re.fullmatch(r"\d{4}_\d{2}_\d{2}_\d{4}-[0-9a-z]+_[a-z0-9_]+\.py", name), name
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1, "migrations have branched; merge them"
