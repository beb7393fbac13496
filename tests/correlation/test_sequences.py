"""A sequence rule completing on a live pipeline joins the incident of its steps' alerts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.alert.sink import AlertSink, EntityDetectionStep
from finsecure.correlation import Correlator
from finsecure.correlation.engine import shipped_sequence_rules
from finsecure.detection import RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features.step import FeatureStep
from finsecure.incident.models import Incident, IncidentAlert
from finsecure.pipeline.batch import SourceChunk
from finsecure.pipeline.testing import run_pipeline
from finsecure.platform import default_rules
from tests.alert.factories import session_factory, uid

ATO_SEQUENCE = "3c4f8a2e-5b61-4d0f-9e7a-8c1b2d3e4f01"


def _events(domain: Domain, rows: list[dict[str, Any]]) -> SourceChunk:
    return SourceChunk(domain, sample_frame(domain, rows).select(arrow_schema(domain).names))


def test_correlator__completed_sequence_joins_its_steps_incident_and_raises_risk(db_session: Session) -> None:
    user, account = uid("user"), uid("acct")
    who = {"user_id": user, "account_id": account, "device_id": f"{user}-laptop"}
    auth = [{**who, "action": "login", "outcome": "failure", "ts": i * 20, "event_id": f"{user}-f{i}"}
            for i in range(6)]  # fmt: skip
    auth += [
        {**who, "action": "login", "outcome": "success", "ts": 200, "event_id": f"{user}-in"},
        {
            **who,
            "action": "mfa_change",
            "outcome": "success",
            "mfa_used": False,
            "ts": 320,
            "event_id": f"{user}-m",
        },
        {
            **who,
            "action": "payee_add",
            "outcome": "success",
            "payee_id": "p",
            "ts": 600,
            "event_id": f"{user}-p",
        },
    ]
    transfer = {**who, "channel": "instant_transfer", "amount": 8000.0, "currency": "EUR", "payee_id": "p",
                "ts": 1_200, "event_id": f"{user}-t"}  # fmt: skip
    sink = AlertSink(session_factory(db_session), correlator=Correlator())
    steps = [FeatureStep(), EntityDetectionStep(RuleSet(default_rules()), sink)]
    run_pipeline(steps, [_events(Domain.auth, auth), _events(Domain.payment, [transfer])], max_rows=10_000)
    assert sink.errors == 0
    assert ATO_SEQUENCE in shipped_sequence_rules()

    rows = db_session.execute(
        select(Alert, IncidentAlert.incident_id)
        .join(IncidentAlert, IncidentAlert.alert_id == Alert.id)
        .where(Alert.entity_id == user)
    ).all()
    by_rule = {alert.rule_id: incident for alert, incident in rows}
    assert ATO_SEQUENCE in by_rule, [a.title for a, _ in rows]
    assert len(set(by_rule.values())) == 1  # the sequence and its steps' alerts: one incident
    assert {alert.domain for alert, _ in rows} == {"auth", "payment"}
    incident = db_session.get(Incident, by_rule[ATO_SEQUENCE])
    assert incident is not None
    db_session.refresh(incident)
    assert incident.risk >= 85  # critical sequence, several alerts, two domains, a completed story
    assert "The steps of a known attack happened in order: Account takeover" in incident.summary
