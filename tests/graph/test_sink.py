from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.core.enums import Severity
from finsecure.entity.models import Edge, Entity
from finsecure.event.schemas import Domain
from finsecure.graph.sink import GraphSink, known_bad_keys
from finsecure.incident.models import Disposition, Incident, IncidentAlert
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline
from finsecure.pipeline.testing import TestingSource
from tests.graph.helpers import at, canonical, frame


def _factory(db_session: Session) -> Callable[[], Session]:
    return lambda: Session(bind=db_session.connection(), join_transaction_mode="create_savepoint")


def test_graph_sink__feeds_the_graph_from_a_pipeline_and_persists_on_close(db_session: Session) -> None:
    sink = GraphSink(session_factory=_factory(db_session), flush_interval_s=3600)
    chunks = [
        canonical("payment", [{"ts": at(i), "card_id": f"c{i % 3}", "terminal_id": "t1", "amount": 1.0}])
        for i in range(6)
    ]
    with Pipeline([], [sink], max_rows=2) as pipeline:
        drive(TestingSource(chunks), pipeline)
    assert sink.store.edge_count == 3
    assert sink.store.events_seen == 6
    counts = sorted(e.count for e in db_session.execute(select(Edge)).scalars())
    assert counts == [2, 2, 2]


def test_known_bad_keys__blocked_entities_and_confirmed_incident_entities(db_session: Session) -> None:
    now = dt.datetime.now(dt.UTC)
    db_session.add(Entity(entity_type="device_id", key="d-bad", blocked=True, attributes={}))
    db_session.add(Entity(entity_type="device_id", key="d-ok", blocked=False, attributes={}))
    incident = Incident(
        title="Fraud", severity=Severity.high, domains=["payment"], labels=[], evidence={},
        first_seen=now, last_seen=now, disposition=Disposition.true_positive,
    )  # fmt: skip
    alert = Alert(
        alert_key="k1", rule_id="r", title="t", severity=Severity.high, domain="network",
        entity_type="src_ip", entity_id="10.0.0.9", event_ids=["e"], explanation={},
        first_seen=now, last_seen=now,
    )  # fmt: skip
    db_session.add_all([incident, alert])
    db_session.flush()
    db_session.add(IncidentAlert(incident_id=incident.id, alert_id=alert.id))
    db_session.flush()
    blocked, confirmed = known_bad_keys(db_session)
    assert blocked == {"device_id:d-bad"}
    assert confirmed == {"ip:10.0.0.9"}


def test_graph_sink__refresh_marks_known_bad_nodes(db_session: Session) -> None:
    db_session.add(Entity(entity_type="user_id", key="u1", blocked=True, attributes={}))
    db_session.flush()
    sink = GraphSink(session_factory=_factory(db_session))
    sink.store.update("auth", frame([{"user_id": "u1", "device_id": "d1"}]))
    sink.refresh_known_bad()
    snap = sink.store.snapshot(max_age_s=0)
    u1 = snap.node_id("user_id:u1")
    assert u1 is not None
    assert snap.bad.tolist() == [i == u1 for i in range(snap.node_count)]


@pytest.mark.parametrize("interval", [0.0])
def test_graph_sink__without_database_keeps_the_graph_in_memory(interval: float) -> None:
    sink = GraphSink(flush_interval_s=interval, evict_interval_s=interval)
    sink.write(Batch(Domain.auth, frame([{"user_id": "u1", "device_id": "d1"}]), "test"))
    sink.close()
    assert sink.store.edge_count == 1
