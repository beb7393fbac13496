from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.auth.models import Role
from finsecure.event.models import StoredEvent
from tests.alert.factories import T0, hit, hits_frame, session_factory, uid

Headers = Callable[[Role], dict[str, str]]


def test_explain_alert__rule_hits_events_features_and_model_contributions(
    client: TestClient, db_session: Session, auth_headers: Headers
) -> None:
    card, stored, unstored = uid("card"), uid("ev"), uid("ev")
    db_session.add(
        StoredEvent(
            event_id=stored, ts=T0, domain="payment", source="test", card_id=card, score=0.97,
            explanation={"text": "amount 40x this card's 30-day average"},
            payload={"amount": 2300.0, "card_id__count_1h": 7, "card_id__geo_speed_kmh": 2300.0},
        )
    )  # fmt: skip
    db_session.commit()
    sink = AlertSink(session_factory(db_session))
    rule = uid("rule")
    [alert_id] = sink.write(
        hits_frame(
            hit(rule_id=rule, entity_id=card, event_id=stored, explanation="Card used 2,300 km from home"),
            hit(rule_id=rule, entity_id=card, event_id=unstored, minutes=10, explanation="again"),
        )
    ).alert_ids
    body = client.get(f"/api/alerts/{alert_id}/explanation", headers=auth_headers(Role.viewer)).json()
    assert body["rule_hits"] == 2
    assert body["summary"].startswith("'Card used far from home' fired 2 times about card ")
    assert "Card used 2,300 km from home" in body["summary"]
    assert body["latest_text"] == "again"
    [event] = body["matched_events"]
    assert event["event_id"] == stored
    assert event["features"] == {"card_id__count_1h": 7, "card_id__geo_speed_kmh": 2300.0}
    assert event["fields"] == {"amount": 2300.0}
    assert event["model_explanation"]["text"].startswith("amount 40x")
    assert body["events_not_stored"] == 1
    assert (
        client.get("/api/alerts/2000000000/explanation", headers=auth_headers(Role.viewer)).status_code == 404
    )
