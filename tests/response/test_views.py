from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.audit.models import AuditEntry
from finsecure.audit.service import Actor
from finsecure.auth.models import Role
from finsecure.response import service as action_service
from tests.alert.factories import hit, hits_frame, session_factory, uid

Headers = Callable[[Role], dict[str, str]]


def _awaiting(db_session: Session) -> int:
    action, _ = action_service.request_action(
        db_session=db_session, key=uid("k"), action_type="block", target_type="entity", target_id="card_id:x",
        params={"entity_type": "card_id", "entity_id": uid("card")}, actor=Actor(label="worker"),
        needs_approval=True,
    )  # fmt: skip
    db_session.commit()
    return action.id


def test_approve_and_cancel__workflow_and_conflicts(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    headers = auth_headers(Role.analyst)
    action_id = _awaiting(db_session)
    approved = client.post(f"/api/actions/{action_id}/approve", headers=headers)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "pending"
    assert approved.json()["approved_by"] is not None
    again = client.post(f"/api/actions/{action_id}/approve", headers=headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_awaiting_approval"
    assert client.post(f"/api/actions/{action_id}/cancel", headers=headers).json()["status"] == "cancelled"
    finished = client.post(f"/api/actions/{action_id}/cancel", headers=headers)
    assert finished.json()["error"]["code"] == "action_finished"
    assert client.post("/api/actions/2000000000/approve", headers=headers).status_code == 404
    audit = db_session.scalars(
        select(AuditEntry.action).where(AuditEntry.target_type == "response_action",
                                        AuditEntry.target_id == str(action_id)).order_by(AuditEntry.id)
    ).all()  # fmt: skip
    assert audit == ["response.request", "response.approve", "response.cancel"]


def test_create_action__manual_actions_only_and_validated(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    headers = auth_headers(Role.analyst)
    [alert_id] = AlertSink(session_factory(db_session)).write(hits_frame(hit(rule_id=uid("rule")))).alert_ids
    created = client.post(
        "/api/actions", json={"action_type": "open_incident", "alert_id": alert_id}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "pending"
    assert created.json()["target_type"] == "alert"
    webhook = client.post(
        "/api/actions", json={"action_type": "webhook", "alert_id": alert_id}, headers=headers
    )
    assert webhook.status_code == 422  # notifications only go where admins' playbooks say
    no_entity = client.post("/api/actions", json={"action_type": "block"}, headers=headers)
    assert no_entity.status_code == 422
    missing = client.post("/api/actions", json={"action_type": "open_incident", "alert_id": 2_000_000_000},
                          headers=headers)  # fmt: skip
    assert missing.status_code == 404
    listed = client.get(
        "/api/actions", params={"action_type": "open_incident"}, headers=auth_headers(Role.viewer)
    )
    assert created.json()["id"] in [a["id"] for a in listed.json()["items"]]


def test_playbooks__listed_for_viewers_reloaded_by_admins(client: TestClient, auth_headers: Headers) -> None:
    body = client.get("/api/playbooks", headers=auth_headers(Role.viewer)).json()
    assert "block-card-on-critical-card-fraud" in [p["id"] for p in body["items"]]
    assert body["errors"] == []
    assert client.post("/api/playbooks/reload", headers=auth_headers(Role.analyst)).status_code == 403
    reloaded = client.post("/api/playbooks/reload", headers=auth_headers(Role.admin))
    assert reloaded.status_code == 200
    assert reloaded.json()["items"] == body["items"]
