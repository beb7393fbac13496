from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.alert.sink import AlertSink
from finsecure.correlation import Correlator
from finsecure.incident.models import Incident, IncidentAlert, IncidentStatus
from tests.alert.factories import hit, hits_frame, session_factory, uid


def _incidents_of(db_session: Session, rule_ids: list[str]) -> dict[int, set[str]]:
    """incident id -> rule ids of its alerts (only the given rules)."""
    rows = db_session.execute(
        select(IncidentAlert.incident_id, Alert.rule_id)
        .join(Alert, Alert.id == IncidentAlert.alert_id)
        .where(Alert.rule_id.in_(rule_ids))
    ).all()
    out: dict[int, set[str]] = {}
    for incident_id, rule_id in rows:
        out.setdefault(incident_id, set()).add(str(rule_id))
    return out


def _sink(db_session: Session, **kw: int) -> AlertSink:
    return AlertSink(session_factory(db_session), correlator=Correlator(**kw))


def test_correlator__two_alerts_sharing_a_card_make_one_incident(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, minutes=0, merchant_id="m1", country="FR")))
    result = sink.write(
        hits_frame(
            hit(rule_id=r2, entity_type="user_id", entity_id=uid("user"), minutes=40, domain="auth",
                title="Sign-in from a new device", card_id=card, merchant_id="m2", country="DE"),
        )
    )  # fmt: skip
    incidents = _incidents_of(db_session, [r1, r2])
    assert list(incidents.values()) == [{r1, r2}]
    assert result.incident_ids == list(incidents)
    incident = db_session.get(Incident, result.incident_ids[0])
    assert incident is not None
    db_session.refresh(incident)
    assert incident.domains == ["auth", "payment"]
    assert incident.risk == 75.0
    assert incident.severity.value == "high"
    assert "2 merchants in 2 countries" in incident.summary
    assert "within 40 minutes" in incident.summary
    assert incident.status == IncidentStatus.open


def test_correlator__unrelated_alerts_make_two_incidents(db_session: Session) -> None:
    r1, r2 = uid("rule"), uid("rule")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=uid("card")), hit(rule_id=r2, entity_id=uid("card"))))
    assert sorted(map(sorted, _incidents_of(db_session, [r1, r2]).values())) == sorted([[r1], [r2]])


def test_correlator__shared_ip_alone_does_not_join(db_session: Session) -> None:
    r1, r2 = uid("rule"), uid("rule")
    sink = _sink(db_session)
    sink.write(
        hits_frame(
            hit(rule_id=r1, entity_id=uid("card"), src_ip="10.0.0.1", merchant_id="m1"),
            hit(rule_id=r2, entity_id=uid("card"), src_ip="10.0.0.1", merchant_id="m1"),
        )
    )
    assert len(_incidents_of(db_session, [r1, r2])) == 2


def test_correlator__window_expiry_starts_a_new_incident(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session, window_s=3600)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, minutes=0)))
    sink.write(hits_frame(hit(rule_id=r2, entity_id=card, minutes=200)))
    assert len(_incidents_of(db_session, [r1, r2])) == 2


def test_correlator__bridging_alert_merges_incidents(db_session: Session) -> None:
    r1, r2, r3 = uid("rule"), uid("rule"), uid("rule")
    card, user = uid("card"), uid("user")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card)))
    sink.write(hits_frame(hit(rule_id=r2, entity_type="user_id", entity_id=user, domain="auth")))
    first = _incidents_of(db_session, [r1, r2])
    assert len(first) == 2
    sink.write(hits_frame(hit(rule_id=r3, entity_id=card, minutes=5, user_id=user)))
    after = _incidents_of(db_session, [r1, r2, r3])
    assert list(after.values()) == [{r1, r2, r3}]
    [kept] = after
    assert kept == min(first)
    merged = db_session.get(Incident, max(first))
    assert merged is not None
    db_session.refresh(merged)
    assert merged.merged_into_id == kept
    assert merged.status == IncidentStatus.closed


def test_correlator__closed_incident_takes_no_new_alerts(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session)
    [incident_id] = sink.write(hits_frame(hit(rule_id=r1, entity_id=card))).incident_ids
    incident = db_session.get(Incident, incident_id)
    assert incident is not None
    incident.status = IncidentStatus.closed
    db_session.commit()
    sink.write(hits_frame(hit(rule_id=r2, entity_id=card, minutes=5)))
    assert len(_incidents_of(db_session, [r1, r2])) == 2


def test_correlator__updated_alert_stays_in_its_incident(db_session: Session) -> None:
    r1, card = uid("rule"), uid("card")
    sink = _sink(db_session)
    first = sink.write(hits_frame(hit(rule_id=r1, entity_id=card))).incident_ids
    again = sink.write(hits_frame(hit(rule_id=r1, entity_id=card, minutes=3))).incident_ids
    assert first == again
    assert len(_incidents_of(db_session, [r1])) == 1


def test_correlator__warm_up_restores_memory(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    _sink(db_session).write(hits_frame(hit(rule_id=r1, entity_id=card)))
    correlator = Correlator()
    assert correlator.warm_up(db_session=db_session) >= 1
    AlertSink(session_factory(db_session), correlator=correlator).write(
        hits_frame(hit(rule_id=r2, entity_id=card, minutes=5))
    )
    assert len(_incidents_of(db_session, [r1, r2])) == 1
