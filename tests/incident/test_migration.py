"""Migration 0003 moves stored incident statuses to the new workflow without losing links."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from tests.conftest import BACKENDS

NOW = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize("fresh_database_url", BACKENDS, indirect=True)
def test_upgrade_0003__maps_statuses_and_keeps_alert_links(fresh_database_url: str) -> None:
    engine = create_db_engine(fresh_database_url)
    try:
        migrate.upgrade(engine, "0002")
        with engine.begin() as conn:
            for incident_id, status in enumerate(["open", "contained", "closed", "investigating"], 1):
                conn.execute(
                    text(
                        "INSERT INTO incidents (id, title, summary, severity, status, risk, domains, labels, "
                        "evidence, first_seen, last_seen, created_at, updated_at) "
                        "VALUES (:i, 't', '', 'high', :s, 0, '[]', '[]', '{}', :n, :n, :n, :n)"
                    ),
                    {"i": incident_id, "s": status, "n": NOW},
                )
            conn.execute(
                text(
                    "INSERT INTO alerts (id, alert_key, title, description, severity, status, score, domain, "
                    "event_ids, explanation, count, first_seen, last_seen, created_at, updated_at) VALUES "
                    "(1, 'k', 't', '', 'high', 'new', 0, 'auth', '[]', '{}', 1, :n, :n, :n, :n)"
                ),
                {"n": NOW},
            )
            conn.execute(text("INSERT INTO incident_alerts VALUES (2, 1, :n)"), {"n": NOW})
        migrate.upgrade(engine)
        with engine.begin() as conn:
            statuses = conn.execute(text("SELECT id, status FROM incidents ORDER BY id")).all()
            links = conn.execute(text("SELECT incident_id, alert_id FROM incident_alerts")).all()
            conn.execute(text("UPDATE incidents SET status = 'triaged' WHERE id = 1"))
        assert [tuple(r) for r in statuses] == [
            (1, "new"), (2, "investigating"), (3, "resolved"), (4, "investigating"),
        ]  # fmt: skip
        assert [tuple(r) for r in links] == [(2, 1)]
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE incidents SET status = 'contained' WHERE id = 1"))
        migrate.downgrade(engine, "0002")
        with engine.begin() as conn:
            statuses = conn.execute(text("SELECT status FROM incidents ORDER BY id")).scalars().all()
        assert statuses == ["investigating", "investigating", "resolved", "investigating"]
    finally:
        engine.dispose()
