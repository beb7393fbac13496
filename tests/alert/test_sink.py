from __future__ import annotations

import logging

import polars as pl
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert, AlertStatus
from finsecure.alert.sink import AlertSink, EntityDetectionStep, alert_key, group_hits, with_context
from finsecure.detection import RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import Rule
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch
from tests.alert.factories import hit, hits_frame, session_factory, uid


def _alerts(db_session: Session, rule_id: str) -> list[Alert]:
    return list(db_session.scalars(select(Alert).where(Alert.rule_id == rule_id).order_by(Alert.id)))


def test_alert_key__stable_and_distinct() -> None:
    assert alert_key("r", "card_id", "c1", 3600) == alert_key("r", "card_id", "c1", 3600)
    keys = {
        alert_key("r", "card_id", "c1", 3600),
        alert_key("r", "card_id", "c1", 7200),
        alert_key("r", "card_id", "c2", 3600),
        alert_key("q", "card_id", "c1", 3600),
    }
    assert len(keys) == 4


def test_group_hits__one_row_per_rule_entity_bucket() -> None:
    frame = hits_frame(
        hit(entity_id="c1", minutes=0, event_id="e1"),
        hit(entity_id="c1", minutes=10, event_id="e2"),
        hit(entity_id="c1", minutes=10, event_id="e2"),  # the same hit twice counts once
        hit(entity_id="c1", minutes=70, event_id="e3"),  # next hour
        hit(entity_id="c2", minutes=5, event_id="e4"),
    )
    groups = group_hits(frame, bucket_s=3600).sort("entity_id", "first_seen")
    assert groups["count"].to_list() == [2, 1, 1]
    assert groups["event_ids"].to_list() == [["e1", "e2"], ["e3"], ["e4"]]


def test_alert_sink__groups_and_stores_alerts(db_session: Session) -> None:
    rule, card = uid("rule"), uid("card")
    sink = AlertSink(session_factory(db_session))
    result = sink.write(
        hits_frame(
            hit(rule_id=rule, entity_id=card, minutes=1, explanation="first", user_id="u1"),
            hit(rule_id=rule, entity_id=card, minutes=3, explanation="second", user_id="u1", device_id="d1"),
            hit(rule_id=rule, entity_id=uid("card"), minutes=2),
        )
    )
    assert (result.inserted, result.updated, result.dropped) == (2, 0, 0)
    alerts = _alerts(db_session, rule)
    assert len(alerts) == 2
    first = next(a for a in alerts if a.entity_id == card)
    assert first.count == 2
    assert first.status == AlertStatus.new
    assert first.severity.value == "high"
    assert first.last_seen > first.first_seen
    assert first.explanation["text"] == "first"
    assert first.explanation["latest"] == "second"
    assert first.explanation["entities"] == {"user_id": ["u1"], "device_id": ["d1"]}
    assert first.description == "first"


def test_alert_sink__replay_is_idempotent_and_new_events_extend(db_session: Session) -> None:
    rule, card = uid("rule"), uid("card")
    sink = AlertSink(session_factory(db_session), max_event_ids=3)
    batch = hits_frame(
        *[hit(rule_id=rule, entity_id=card, minutes=m, event_id=f"{card}-{m}") for m in range(3)]
    )
    sink.write(batch)
    again = sink.write(batch)
    assert (again.inserted, again.updated) == (0, 0)
    [alert] = _alerts(db_session, rule)
    assert alert.count == 3
    assert alert.event_ids == [f"{card}-0", f"{card}-1", f"{card}-2"]

    later = hits_frame(
        *[hit(rule_id=rule, entity_id=card, minutes=m, event_id=f"{card}-{m}") for m in (2, 9, 10)]
    )
    assert sink.write(later).updated == 1
    sink.write(later)  # a replay once the evidence list is full: only newer events would count
    db_session.expire_all()
    [alert] = _alerts(db_session, rule)
    assert alert.count == 5
    assert len(alert.event_ids) == 3  # bounded
    assert alert.last_seen.minute == 15
    assert alert.first_seen.minute == 5


def test_alert_sink__storm_cap_drops_and_counts(
    db_session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    rule = uid("rule")
    now = [0.0]
    sink = AlertSink(session_factory(db_session), storm_cap_per_minute=5, clock=lambda: now[0])
    frame = hits_frame(*[hit(rule_id=rule, entity_id=f"c{i}") for i in range(8)])
    with caplog.at_level(logging.WARNING, logger="finsecure.alert.sink"):
        result = sink.write(frame)
        assert (result.dropped, result.inserted) == (3, 5)
        assert sink.write(hits_frame(hit(rule_id=rule, entity_id="late"))).dropped == 1
    assert sink.dropped == {rule: 4}
    assert any("fired more than 5 times" in r.message for r in caplog.records)
    now[0] = 61.0  # a new minute, a new budget
    assert sink.write(hits_frame(hit(rule_id=rule, entity_id="next"))).inserted == 1
    assert len(_alerts(db_session, rule)) == 6


def test_alert_sink__failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Session:
        raise RuntimeError("database is down")

    sink = AlertSink(broken)
    with caplog.at_level(logging.ERROR, logger="finsecure.alert.sink"):
        sink(hits_frame(hit()))
    assert sink.errors == 1
    assert "could not store 1 rule hits" in caplog.text


def test_entity_detection_step__hits_carry_event_entities() -> None:
    rule = Rule.from_dict(
        {
            "id": "0f8c0000-0000-4000-8000-000000000001",
            "title": "Any login",
            "description": "d",
            "severity": "low",
            "domain": "auth",
            "kind": "match",
            "attack": ["T1078"],
            "triage": "t",
            "status": "test",
            "entity": "user_id",
            "explain": "Login by {user_id}",
            "condition": {"field": "user_id", "equals": "user-1"},
        }
    )
    seen: list[pl.DataFrame] = []
    step = EntityDetectionStep(RuleSet([rule]), seen.append)
    frame = sample_frame(Domain.auth, [{"user_id": "user-1", "device_id": "dev-9"}, {"user_id": "user-2"}])
    step.process(Batch(Domain.auth, frame, "test"))
    [hits] = seen
    assert hits.height == 1
    assert hits.select("entity_id", "ctx__user_id", "ctx__device_id").row(0) == ("user-1", "user-1", "dev-9")
    assert with_context(hits.head(0), frame).height == 0


def test_alert_sink__storm_cap_in_event_time_follows_the_events_minutes(db_session: Session) -> None:
    rule = uid("rule")
    sink = AlertSink(
        session_factory(db_session), storm_cap_per_minute=3, storm_clock="event", clock=lambda: 0.0
    )
    # a replay: five hits in each of two event minutes arrive within the same wall-clock instant
    frame = hits_frame(*[hit(rule_id=rule, entity_id=f"c{i}", minutes=i // 5) for i in range(10)])
    result = sink.write(frame)
    assert (result.dropped, result.inserted) == (4, 6)
    assert sink.write(hits_frame(hit(rule_id=rule, entity_id="again", minutes=1))).dropped == 1
    assert sink.write(hits_frame(hit(rule_id=rule, entity_id="later", minutes=2))).inserted == 1
    assert sink.dropped == {rule: 5}
