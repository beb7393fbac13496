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


def _sink(db_session: Session, *, window_s: int = 6 * 3600, max_keys: int = 200_000) -> AlertSink:
    return AlertSink(session_factory(db_session), correlator=Correlator(window_s=window_s, max_keys=max_keys))


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


# --- promotion policy: building blocks ---------------------------------------------------------------


def _linked_alerts(db_session: Session, rule_ids: list[str]) -> int:
    return len(
        db_session.execute(
            select(IncidentAlert.alert_id)
            .join(Alert, Alert.id == IncidentAlert.alert_id)
            .where(Alert.rule_id.in_(rule_ids))
        ).all()
    )


def test_correlator__lone_medium_alert_stays_a_building_block(db_session: Session) -> None:
    r1 = uid("rule")
    result = _sink(db_session).write(hits_frame(hit(rule_id=r1, entity_id=uid("card"), severity="medium")))
    assert result.inserted == 1
    assert result.incident_ids == []
    assert _incidents_of(db_session, [r1]) == {}


def test_correlator__two_rules_on_linked_entities_open_one_incident(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, severity="low")))
    result = sink.write(
        hits_frame(hit(rule_id=r2, entity_type="user_id", entity_id=uid("user"), domain="auth",
                       severity="medium", minutes=30, card_id=card))
    )  # fmt: skip
    assert list(_incidents_of(db_session, [r1, r2]).values()) == [{r1, r2}]
    assert len(result.incident_ids) == 1


def test_correlator__two_rules_on_the_same_event_stay_building_blocks(db_session: Session) -> None:
    r1, r2, card, event = uid("rule"), uid("rule"), uid("card"), uid("ev")
    sink = _sink(db_session)
    sink.write(
        hits_frame(
            hit(rule_id=r1, entity_id=card, severity="medium", event_id=event),
            hit(rule_id=r2, entity_id=card, severity="medium", event_id=event),
        )
    )
    assert _incidents_of(db_session, [r1, r2]) == {}


def test_correlator__same_rule_twice_stays_a_building_block(db_session: Session) -> None:
    r1, card = uid("rule"), uid("card")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, severity="medium")))
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, severity="medium", minutes=90)))
    assert _incidents_of(db_session, [r1]) == {}


def test_correlator__severe_alert_takes_in_earlier_building_blocks(db_session: Session) -> None:
    r1, r2, r3, card = uid("rule"), uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, severity="medium")))
    sink.write(hits_frame(hit(rule_id=r2, entity_id=uid("card"), severity="medium")))  # another card
    sink.write(hits_frame(hit(rule_id=r3, entity_id=card, severity="critical", minutes=20)))
    assert list(_incidents_of(db_session, [r1, r2, r3]).values()) == [{r1, r3}]
    assert _linked_alerts(db_session, [r1, r2, r3]) == 2


def test_correlator__building_block_past_the_window_is_left_out(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session, window_s=3600)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, severity="medium")))
    sink.write(hits_frame(hit(rule_id=r2, entity_id=card, severity="high", minutes=200)))
    assert list(_incidents_of(db_session, [r1, r2]).values()) == [{r2}]


def test_correlator__later_medium_alert_joins_an_open_incident(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card, severity="high")))
    sink.write(hits_frame(hit(rule_id=r2, entity_id=card, severity="low", minutes=10)))
    assert list(_incidents_of(db_session, [r1, r2]).values()) == [{r1, r2}]


def test_correlator__sequence_alert_opens_an_incident_whatever_its_severity(db_session: Session) -> None:
    seq = uid("rule")
    sink = AlertSink(session_factory(db_session), correlator=Correlator(sequence_rules=[seq]))
    sink.write(hits_frame(hit(rule_id=seq, entity_id=uid("card"), severity="low")))
    assert list(_incidents_of(db_session, [seq]).values()) == [{seq}]


def test_correlator__min_rules_one_makes_every_alert_an_incident(db_session: Session) -> None:
    r1 = uid("rule")
    sink = AlertSink(session_factory(db_session), correlator=Correlator(min_rules=1))
    sink.write(hits_frame(hit(rule_id=r1, entity_id=uid("card"), severity="low")))
    assert list(_incidents_of(db_session, [r1]).values()) == [{r1}]


def test_correlator__warm_up_restores_building_blocks(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    _sink(db_session).write(hits_frame(hit(rule_id=r1, entity_id=card, severity="medium")))
    correlator = Correlator()
    assert correlator.warm_up(db_session=db_session) >= 1
    AlertSink(session_factory(db_session), correlator=correlator).write(
        hits_frame(hit(rule_id=r2, entity_id=card, severity="medium", minutes=5))
    )
    assert list(_incidents_of(db_session, [r1, r2]).values()) == [{r1, r2}]


# --- what links alerts ---------------------------------------------------------------------------------


def test_correlator__victims_named_by_a_fan_out_do_not_join(db_session: Session) -> None:
    r1, r2, device, victim = uid("rule"), uid("rule"), uid("dev"), uid("user")
    sink = _sink(db_session)
    sink.write(
        hits_frame(
            hit(rule_id=r1, entity_type="device_id", entity_id=device, domain="auth", user_id=victim),
            hit(rule_id=r1, entity_type="device_id", entity_id=device, domain="auth", user_id=uid("user")),
        )
    )
    sink.write(
        hits_frame(hit(rule_id=r2, entity_type="user_id", entity_id=victim, domain="auth", minutes=30))
    )
    assert len(_incidents_of(db_session, [r1, r2])) == 2


def test_correlator__alert_about_an_address_joins_the_incident_its_events_came_from(
    db_session: Session,
) -> None:
    r1, r2, r3, ip = uid("rule"), uid("rule"), uid("rule"), "198.51.100.23"
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_type="user_id", entity_id=uid("user"), src_ip=ip)))
    sink.write(hits_frame(hit(rule_id=r2, entity_type="user_id", entity_id=uid("user"), src_ip=ip)))
    assert len(_incidents_of(db_session, [r1, r2])) == 2  # the same address alone joins nothing
    sink.write(hits_frame(hit(rule_id=r3, entity_type="src_ip", entity_id=ip, domain="network", minutes=5)))
    incidents = _incidents_of(db_session, [r1, r2, r3])
    assert {r3} <= set().union(*incidents.values())
    assert any({r1, r3} <= rules or {r2, r3} <= rules for rules in incidents.values())


def test_correlator__after_a_reset_the_next_batch_reloads_the_window(db_session: Session) -> None:
    r1, r2, card = uid("rule"), uid("rule"), uid("card")
    correlator = Correlator()
    sink = AlertSink(session_factory(db_session), correlator=correlator)
    sink.write(hits_frame(hit(rule_id=r1, entity_id=card)))
    correlator.reset()  # as after a failed commit (a locked database)
    sink.write(hits_frame(hit(rule_id=r2, entity_id=card, minutes=5)))
    assert list(_incidents_of(db_session, [r1, r2]).values()) == [{r1, r2}]


def test_correlator__alert_about_a_payee_joins_the_receiving_accounts_incident(db_session: Session) -> None:
    """A mule ring: many customers pay one payee (the collector's account number), and the collector's
    own account then sends the money on. The payee and the account are one entity."""
    r1, r2, r3, account = uid("rule"), uid("rule"), uid("rule"), uid("acc")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_type="user_id", entity_id=uid("user"), minutes=0,
                              domain="auth", account_id=account)))  # fmt: skip
    sink.write(hits_frame(hit(rule_id=r2, entity_type="payee_id", entity_id=account, minutes=30)))
    sink.write(hits_frame(hit(rule_id=r3, entity_type="payee_id", entity_id=uid("acc"), minutes=30)))
    incidents = _incidents_of(db_session, [r1, r2, r3])
    assert sorted(map(sorted, incidents.values())) == sorted([sorted([r1, r2]), [r3]])


def test_correlator__victims_paying_a_collector_join_its_incident(db_session: Session) -> None:
    """Victims' own alerts on payments into an account join the incident about that account (the payee
    is where their money went), in either order; two customers who merely paid the same payee do not."""
    r1, r2, r3, r4, collector = uid("rule"), uid("rule"), uid("rule"), uid("rule"), uid("acc")
    sink = _sink(db_session)
    sink.write(hits_frame(hit(rule_id=r1, entity_type="user_id", entity_id=uid("user"), payee_id=collector)))
    sink.write(hits_frame(hit(rule_id=r2, entity_type="user_id", entity_id=uid("user"), payee_id=collector)))
    assert len(_incidents_of(db_session, [r1, r2])) == 2
    sink.write(hits_frame(hit(rule_id=r3, entity_type="payee_id", entity_id=collector, minutes=20)))
    sink.write(hits_frame(hit(rule_id=r4, entity_type="user_id", entity_id=uid("user"), minutes=30,
                              payee_id=collector)))  # fmt: skip
    assert list(_incidents_of(db_session, [r1, r2, r3, r4]).values()) == [{r1, r2, r3, r4}]
