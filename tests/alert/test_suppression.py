from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from finsecure.alert import suppression as suppression_service
from finsecure.alert.models import Alert
from finsecure.alert.schemas import SuppressionCreate
from finsecure.alert.sink import AlertSink
from finsecure.alert.suppression import Suppression, Suppressor
from finsecure.audit.models import AuditEntry
from finsecure.audit.service import Actor
from finsecure.auth.models import Role
from finsecure.correlation import Correlator
from finsecure.incident.models import Disposition, Incident, IncidentStatus
from tests.alert.factories import hit, hits_frame, session_factory, uid

Headers = Callable[[Role], dict[str, str]]
ACTOR = Actor(label="alice")


def _suppress(db_session: Session, **fields: object) -> Suppression:
    body = SuppressionCreate.model_validate({"reason": "known noisy test card", **fields})
    return suppression_service.create(db_session=db_session, suppression_in=body, actor=ACTOR)


def _rules(db_session: Session, *rule_ids: str) -> list[Alert]:
    return list(db_session.scalars(select(Alert).where(Alert.rule_id.in_(rule_ids))))


def test_suppressor_apply__drops_covered_hits_and_counts_them(db_session: Session) -> None:
    rule, other_rule, card, other_card = uid("rule"), uid("rule"), uid("card"), uid("card")
    suppression = _suppress(db_session, rule_id=rule, entity_id=card)
    factory = session_factory(db_session)
    sink = AlertSink(factory, suppressor=Suppressor(factory, refresh_s=3600))
    result = sink.write(
        hits_frame(
            hit(rule_id=rule, entity_id=card, minutes=1),
            hit(rule_id=rule, entity_id=card, minutes=2),
            hit(rule_id=rule, entity_id=other_card, minutes=3),  # other entity: alerts
            hit(rule_id=other_rule, entity_id=card, minutes=4),  # other rule: alerts
        )
    )
    assert (result.suppressed, result.inserted) == (2, 2)
    assert sorted((a.rule_id, a.entity_id) for a in _rules(db_session, rule, other_rule)) == sorted(
        [(rule, other_card), (other_rule, card)]
    )
    assert sink.suppressor is not None
    sink.suppressor.reload()  # flushes the counts
    db_session.refresh(suppression)
    assert suppression.hits == 2
    assert suppression.last_hit_at is not None


def test_suppressor_apply__expired_or_deleted_suppressions_stop_applying(db_session: Session) -> None:
    rule, card = uid("rule"), uid("card")
    expired = _suppress(db_session, rule_id=rule)
    db_session.execute(
        update(Suppression)
        .where(Suppression.id == expired.id)
        .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    )
    factory = session_factory(db_session)
    suppressor = Suppressor(factory, refresh_s=3600)
    assert suppressor.apply(hits_frame(hit(rule_id=rule, entity_id=card))).height == 1
    deleted = _suppress(db_session, entity_type="card_id", entity_id=card)  # reloads at once
    assert suppressor.apply(hits_frame(hit(rule_id=rule, entity_id=card))).height == 0
    suppression_service.delete(db_session=db_session, suppression=deleted, actor=ACTOR)
    assert suppressor.apply(hits_frame(hit(rule_id=rule, entity_id=card))).height == 1
    actions = db_session.scalars(
        select(AuditEntry.action).where(AuditEntry.target_id == str(deleted.id), AuditEntry.actor == "alice")
    ).all()
    assert sorted(actions) == ["suppression.create", "suppression.delete"]


def test_suppression_create__needs_a_rule_or_an_entity() -> None:
    with pytest.raises(ValueError, match="name a rule_id"):
        SuppressionCreate(reason="no target")
    with pytest.raises(ValueError, match="entity_type needs"):
        SuppressionCreate(reason="no id", entity_type="card_id", rule_id="r")


def test_suppressions_api__create_list_delete(client: TestClient, auth_headers: Headers) -> None:
    headers = auth_headers(Role.analyst)
    rule = uid("rule")
    created = client.post(
        "/api/suppressions",
        json={"rule_id": rule, "reason": "rule under tuning", "expires_in_hours": 2},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["hits"] == 0
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(hours=1.9) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    listed = client.get("/api/suppressions", headers=headers).json()
    assert body["id"] in [s["id"] for s in listed["items"]]
    bad = client.post("/api/suppressions", json={"reason": "nothing named"}, headers=headers)
    assert bad.status_code == 422
    assert client.delete(f"/api/suppressions/{body['id']}", headers=headers).status_code == 200
    assert client.delete(f"/api/suppressions/{body['id']}", headers=headers).status_code == 404
    assert client.get("/api/suppressions", headers=auth_headers(Role.viewer)).status_code == 403


def test_suggestions__false_positive_incidents_suggest_until_suppressed(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    rule, card = uid("rule"), uid("card")
    sink = AlertSink(session_factory(db_session), correlator=Correlator())
    [incident_id] = sink.write(hits_frame(hit(rule_id=rule, entity_id=card))).incident_ids
    db_session.execute(
        update(Incident)
        .where(Incident.id == incident_id)
        .values(
            status=IncidentStatus.resolved,
            disposition=Disposition.false_positive,
            closed_at=dt.datetime.now(dt.UTC),
        )
    )
    headers = auth_headers(Role.analyst)
    found = client.get("/api/suppressions/suggestions", headers=headers).json()["items"]
    mine = [s for s in found if s["rule_id"] == rule]
    assert len(mine) == 1
    assert (mine[0]["entity_id"], mine[0]["false_positive_incidents"]) == (card, 1)
    assert "false positive" in mine[0]["text"]
    _suppress(db_session, rule_id=rule, entity_id=card)
    found = client.get("/api/suppressions/suggestions", headers=headers).json()["items"]
    assert rule not in [s["rule_id"] for s in found]
