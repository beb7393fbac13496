from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.auth.models import Role, User
from finsecure.correlation import Correlator
from tests.alert.factories import hit, hits_frame, session_factory, uid

Headers = Callable[[Role], dict[str, str]]


def _incident(db_session: Session) -> int:
    card, user = uid("card"), uid("user")
    sink = AlertSink(session_factory(db_session), correlator=Correlator())
    sink.write(hits_frame(hit(rule_id=uid("rule"), entity_id=card, minutes=0, user_id=user)))
    result = sink.write(
        hits_frame(
            hit(rule_id=uid("rule"), entity_type="user_id", entity_id=user, domain="auth", minutes=20,
                severity="critical", title="Sign-in from a new device in a new country")
        )
    )  # fmt: skip
    [incident_id] = result.incident_ids
    return incident_id


def test_read_incident__alerts_and_timeline(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    incident_id = _incident(db_session)
    body = client.get(f"/api/incidents/{incident_id}", headers=auth_headers(Role.viewer)).json()
    assert len(body["alerts"]) == 2
    assert body["domains"] == ["auth", "payment"]
    assert body["severity"] == "critical"
    assert body["risk"] == 95.0
    assert [e["kind"] for e in body["timeline"]] == ["alert", "alert"]
    assert body["timeline"][0]["ts"] <= body["timeline"][1]["ts"]


def test_list_incidents__filters_and_sorts(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    incident_id = _incident(db_session)
    headers = auth_headers(Role.viewer)
    body = client.get("/api/incidents", params={"domain": "auth", "sort": "-risk"}, headers=headers).json()
    assert incident_id in [i["id"] for i in body["items"]]
    risks = [i["risk"] for i in body["items"]]
    assert risks == sorted(risks, reverse=True)
    body = client.get(
        "/api/incidents", params={"status": "resolved", "domain": "auth"}, headers=headers
    ).json()
    assert incident_id not in [i["id"] for i in body["items"]]


def test_update_incident__workflow_assign_and_audit(
    client: TestClient, db_session: Session, auth_headers: Headers, make_user: Callable[..., User]
) -> None:
    incident_id = _incident(db_session)
    headers = auth_headers(Role.analyst)
    analyst = make_user(Role.analyst)
    url = f"/api/incidents/{incident_id}"

    response = client.patch(url, json={"status": "triaged", "assignee_id": analyst.id}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["assignee_id"] == analyst.id
    assert client.patch(url, json={"status": "investigating"}, headers=headers).status_code == 200
    refused = client.patch(url, json={"status": "resolved"}, headers=headers)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "disposition_required"
    done = client.patch(
        url, json={"status": "resolved", "disposition": "true_positive"}, headers=headers
    ).json()
    assert done["status"] == "resolved"
    assert done["closed_at"] is not None
    backwards = client.patch(url, json={"status": "triaged"}, headers=headers)
    assert backwards.status_code == 409
    assert backwards.json()["error"]["code"] == "invalid_transition"
    changes = [e for e in done["timeline"] if e["kind"] == "change"]
    assert len(changes) == 3
    assert "status → resolved" in changes[-1]["text"]


def test_update_incident__bad_assignee_and_missing(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    incident_id = _incident(db_session)
    headers = auth_headers(Role.analyst)
    bad = client.patch(f"/api/incidents/{incident_id}", json={"assignee_id": 2_000_000_000}, headers=headers)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "unknown_assignee"
    assert client.patch("/api/incidents/999999", json={"status": "new"}, headers=headers).status_code == 404
    assert client.get("/api/incidents/999999", headers=headers).status_code == 404
