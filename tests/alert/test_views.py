from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.audit.models import AuditEntry
from finsecure.auth.models import Role
from tests.alert.factories import hit, hits_frame, session_factory, uid

Headers = Callable[[Role], dict[str, str]]


def _seed(db_session: Session, rule: str) -> list[int]:
    result = AlertSink(session_factory(db_session)).write(
        hits_frame(
            hit(rule_id=rule, entity_id="c-low", severity="low", minutes=1),
            hit(rule_id=rule, entity_id="c-crit", severity="critical", minutes=2),
            hit(rule_id=rule, entity_id="c-med", severity="medium", minutes=3),
            hit(rule_id=rule, entity_id="c-med", severity="medium", minutes=4),
        )
    )
    return result.alert_ids


def test_list_alerts__filters_sorts_and_paginates(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    rule = uid("rule")
    _seed(db_session, rule)
    headers = auth_headers(Role.viewer)
    body = client.get("/api/alerts", params={"rule_id": rule, "sort": "-severity"}, headers=headers).json()
    assert body["total"] == 3
    assert [a["severity"] for a in body["items"]] == ["critical", "medium", "low"]
    body = client.get("/api/alerts", params={"rule_id": rule, "sort": "-count", "size": 1}, headers=headers)
    assert body.json()["items"][0]["entity_id"] == "c-med"
    assert body.json()["items"][0]["count"] == 2
    page2 = client.get("/api/alerts", params={"rule_id": rule, "size": 2, "page": 2}, headers=headers).json()
    assert len(page2["items"]) == 1
    assert page2["page"] == 2
    only = client.get("/api/alerts", params={"rule_id": rule, "entity_id": "c-low"}, headers=headers).json()
    assert [a["severity"] for a in only["items"]] == ["low"]
    bad = client.get("/api/alerts", params={"sort": "password"}, headers=headers)
    assert bad.status_code == 422


def test_update_alert__acknowledge_then_close_audited(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    alert_id = _seed(db_session, uid("rule"))[0]
    headers = auth_headers(Role.analyst)
    response = client.patch(f"/api/alerts/{alert_id}", json={"status": "acknowledged"}, headers=headers)
    assert response.status_code == 200
    assert response.json()["status"] == "acknowledged"
    assert (
        client.patch(f"/api/alerts/{alert_id}", json={"status": "closed"}, headers=headers).status_code == 200
    )
    again = client.patch(f"/api/alerts/{alert_id}", json={"status": "acknowledged"}, headers=headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"
    entries = db_session.scalars(
        select(AuditEntry).where(AuditEntry.target_type == "alert", AuditEntry.target_id == str(alert_id))
    ).all()
    assert [(e.before, e.after) for e in entries] == [
        ({"status": "new"}, {"status": "acknowledged"}),
        ({"status": "acknowledged"}, {"status": "closed"}),
    ]


def test_update_alert__unknown_and_bad_status(client: TestClient, auth_headers: Headers) -> None:
    headers = auth_headers(Role.analyst)
    assert client.patch("/api/alerts/999999", json={"status": "closed"}, headers=headers).status_code == 404
    assert client.patch("/api/alerts/1", json={"status": "new"}, headers=headers).status_code == 422
    assert client.get("/api/alerts/999999", headers=headers).status_code == 404
