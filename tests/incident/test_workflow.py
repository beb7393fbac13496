"""Notes, merge, split, timeline, export, bulk changes and labels of incidents, through the API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.auth.models import Role
from finsecure.correlation import Correlator
from finsecure.event.models import StoredEvent
from finsecure.incident import labels as incident_labels
from finsecure.incident.models import IncidentAlert
from finsecure.incident.schemas import IncidentExport
from finsecure.incident.service import bundle_digest
from tests.alert.factories import T0, hit, hits_frame, session_factory, uid

Headers = Callable[[Role], dict[str, str]]


def _incident(db_session: Session, *, alerts: int = 1, event_ids: list[str] | None = None) -> int:
    """An incident of ``alerts`` alerts about one card (different rules, so different alerts)."""
    card = uid("card")
    sink = AlertSink(session_factory(db_session), correlator=Correlator())
    ids = event_ids or [uid("ev") for _ in range(alerts)]
    result = sink.write(
        hits_frame(
            *[hit(rule_id=uid("rule"), entity_id=card, minutes=i, event_id=ids[i]) for i in range(alerts)]
        )
    )
    [incident_id] = result.incident_ids
    return incident_id


def _alert_ids(db_session: Session, incident_id: int) -> list[int]:
    return sorted(
        db_session.scalars(select(IncidentAlert.alert_id).where(IncidentAlert.incident_id == incident_id))
    )


def test_notes__added_listed_and_in_the_timeline(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    incident_id = _incident(db_session)
    headers = auth_headers(Role.analyst)
    url = f"/api/incidents/{incident_id}/notes"
    created = client.post(url, json={"text": "Customer confirmed they did not travel."}, headers=headers)
    assert created.status_code == 201, created.text
    notes = client.get(url, headers=auth_headers(Role.viewer)).json()["items"]
    assert [n["text"] for n in notes] == ["Customer confirmed they did not travel."]
    assert client.post(url, json={"text": ""}, headers=headers).status_code == 422
    assert client.post(url, json={"text": "x"}, headers=auth_headers(Role.viewer)).status_code == 403
    timeline = client.get(f"/api/incidents/{incident_id}/timeline", headers=headers).json()["items"]
    assert [e["kind"] for e in timeline] == ["alert", "note"]  # the note's audit entry is not a "change"


def test_merge__moves_alerts_and_marks_the_other_merged(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    into, other = _incident(db_session), _incident(db_session, alerts=2)
    moved = _alert_ids(db_session, other)
    headers = auth_headers(Role.analyst)
    response = client.post(f"/api/incidents/{into}/merge", json={"incident_ids": [other]}, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["alerts"]) == 3
    assert set(moved) <= set(_alert_ids(db_session, into))
    merged = client.get(f"/api/incidents/{other}", headers=headers).json()
    assert (merged["merged_into_id"], merged["status"]) == (into, "resolved")
    again = client.post(f"/api/incidents/{into}/merge", json={"incident_ids": [other]}, headers=headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "incident_merged"
    itself = client.post(f"/api/incidents/{into}/merge", json={"incident_ids": [into]}, headers=headers)
    assert itself.status_code == 409
    missing = client.post(
        f"/api/incidents/{into}/merge", json={"incident_ids": [2_000_000_000]}, headers=headers
    )
    assert missing.status_code == 404


def test_split__moves_alerts_into_a_new_incident(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    incident_id = _incident(db_session, alerts=3)
    first, *rest = _alert_ids(db_session, incident_id)
    headers = auth_headers(Role.analyst)
    url = f"/api/incidents/{incident_id}/split"
    response = client.post(url, json={"alert_ids": rest}, headers=headers)
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["id"] != incident_id
    assert sorted(a["id"] for a in new["alerts"]) == rest
    assert new["status"] == "new"
    assert _alert_ids(db_session, incident_id) == [first]
    assert "split_into" in client.get(f"/api/incidents/{incident_id}/timeline", headers=headers).text
    emptying = client.post(url, json={"alert_ids": [first]}, headers=headers)
    assert emptying.status_code == 422
    assert emptying.json()["error"]["code"] == "split_would_empty"
    foreign = client.post(url, json={"alert_ids": rest}, headers=headers)
    assert foreign.json()["error"]["code"] == "alert_not_in_incident"


def test_export__bundle_with_events_notes_and_a_checkable_digest(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    event_id = uid("ev")
    db_session.add(
        StoredEvent(
            event_id=event_id, ts=T0, domain="payment", source="test", card_id="c", country="FR", score=0.9,
            payload={"amount": 10.0},
        )
    )  # fmt: skip
    db_session.commit()
    incident_id = _incident(db_session, event_ids=[event_id])
    headers = auth_headers(Role.analyst)
    client.post(
        f"/api/incidents/{incident_id}/notes", json={"text": "Card blocked by phone."}, headers=headers
    )
    response = client.get(f"/api/incidents/{incident_id}/export", headers=auth_headers(Role.viewer))
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["Content-Disposition"]
    body = response.json()
    assert body["incident"]["id"] == incident_id
    assert [e["event_id"] for e in body["events"]] == [event_id]
    assert [n["text"] for n in body["notes"]] == ["Card blocked by phone."]
    assert {e["kind"] for e in body["timeline"]} == {"event", "alert", "note"}
    bundle = IncidentExport.model_validate(body)
    assert bundle_digest(bundle) == body["sha256"]
    bundle.notes[0].text = "tampered"
    assert bundle_digest(bundle) != body["sha256"]


def test_bulk_update__each_incident_on_its_own(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    a, b = _incident(db_session), _incident(db_session)
    headers = auth_headers(Role.analyst)
    client.patch(f"/api/incidents/{b}", json={"status": "resolved", "disposition": "benign"}, headers=headers)
    response = client.post(
        "/api/incidents/bulk",
        json={"incident_ids": [a, b, 2_000_000_000], "status": "triaged"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["updated"] == [a]
    assert {f["id"]: f["code"] for f in body["failed"]} == {
        b: "invalid_transition",
        2_000_000_000: "not_found",
    }
    assert client.get(f"/api/incidents/{a}", headers=headers).json()["status"] == "triaged"


def test_labels__patch_sets_labels_and_filters(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    incident_id = _incident(db_session)
    headers = auth_headers(Role.analyst)
    label = uid("ring")
    body = client.patch(
        f"/api/incidents/{incident_id}", json={"labels": [label, "card-testing", label]}, headers=headers
    ).json()
    assert body["labels"] == [label, "card-testing"]
    found = client.get("/api/incidents", params={"label": label}, headers=headers).json()
    assert [i["id"] for i in found["items"]] == [incident_id]
    assert (
        client.patch(
            f"/api/incidents/{incident_id}", json={"labels": ["bad\nlabel"]}, headers=headers
        ).status_code
        == 422
    )


def test_training_labels__dispositions_become_event_labels(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    fraud_event, shared_event, fp_event = uid("ev"), uid("ev"), uid("ev")
    tp = _incident(db_session, alerts=2, event_ids=[fraud_event, shared_event])
    fp = _incident(db_session, alerts=2, event_ids=[fp_event, shared_event])
    open_one = _incident(db_session)
    headers = auth_headers(Role.analyst)
    for incident_id, disposition in ((tp, "true_positive"), (fp, "false_positive")):
        response = client.patch(
            f"/api/incidents/{incident_id}",
            json={"status": "resolved", "disposition": disposition},
            headers=headers,
        )
        assert response.status_code == 200
    labels = {t.event_id: t for t in incident_labels.training_labels(db_session)}
    assert labels[fraud_event].label == 1
    assert labels[fp_event].label == 0
    assert (labels[shared_event].label, labels[shared_event].incident_id) == (
        1,
        tp,
    )  # a confirmed attack wins
    assert open_one not in {t.incident_id for t in labels.values()}
    since = incident_labels.training_labels(db_session, since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert since == []
    page = client.get("/api/labels", params={"size": 500}, headers=auth_headers(Role.viewer)).json()
    served = {row["event_id"]: row["label"] for row in page["items"]}
    assert served[fraud_event] == 1
    assert served[fp_event] == 0
