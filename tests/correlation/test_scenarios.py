"""Whole scenarios pushed through a real pipeline: features, the repository's rules, alerts, incidents."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.alert.sink import AlertSink, EntityDetectionStep
from finsecure.correlation import Correlator
from finsecure.detection import RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features.step import FeatureStep
from finsecure.incident.models import Incident, IncidentAlert
from finsecure.pipeline.batch import SourceChunk
from finsecure.pipeline.testing import run_pipeline
from finsecure.platform import default_rules
from tests.alert.factories import session_factory, uid

HOUR = 3600


def _events(domain: Domain, rows: list[dict[str, Any]]) -> SourceChunk:
    """Canonical columns only: the detection sample frames also carry feature columns (the step adds them)."""
    names = arrow_schema(domain).names
    return SourceChunk(domain, sample_frame(domain, rows).select(names))


def _account_takeover(user: str, account: str) -> list[SourceChunk]:
    """A week of quiet habits, then a password-only sign-in from a new phone abroad and a large transfer to a
    new payee."""
    logins: list[dict[str, Any]] = [
        {"user_id": user, "device_id": f"{user}-phone", "country": "GB", "lat": 51.5, "lon": -0.1,
         "action": "login", "outcome": "success", "auth_method": "biometric", "mfa_used": True,
         "ts": h * 12 * HOUR, "event_id": f"{user}-login-{h}"}
        for h in range(10)
    ]  # fmt: skip
    payments: list[dict[str, Any]] = [
        {"user_id": user, "account_id": account, "amount": 60.0, "channel": "transfer", "payee_id": "rent",
         "ts": h * 12 * HOUR + 60, "event_id": f"{user}-pay-{h}"}
        for h in range(10)
    ]  # fmt: skip
    takeover = {
        "user_id": user, "device_id": f"{user}-new-phone", "country": "NG", "lat": 6.5, "lon": 3.4,
        "action": "login", "outcome": "success", "auth_method": "password", "mfa_used": False,
        "ts": 130 * HOUR, "event_id": f"{user}-login-ato",
    }  # fmt: skip
    payee = {
        "user_id": user, "account_id": account, "action": "payee_add", "payee_id": "stranger",
        "ts": 130 * HOUR + 300, "event_id": f"{user}-payee-ato", "device_id": f"{user}-new-phone",
    }  # fmt: skip
    transfer = {
        "user_id": user, "account_id": account, "amount": 9000.0, "channel": "instant_transfer",
        "payee_id": "stranger", "ts": 130 * HOUR + 900, "event_id": f"{user}-pay-ato",
    }  # fmt: skip
    return [
        _events(Domain.auth, logins),
        _events(Domain.payment, payments),
        _events(Domain.auth, [takeover, payee]),
        _events(Domain.payment, [transfer]),
    ]


def test_account_takeover__one_incident_across_auth_and_payment(db_session: Session) -> None:
    user, account = uid("user"), uid("acct")
    sink = AlertSink(session_factory(db_session), correlator=Correlator(window_s=6 * HOUR))
    steps = [FeatureStep(), EntityDetectionStep(RuleSet(default_rules()), sink)]
    run_pipeline(steps, _account_takeover(user, account), max_rows=10_000)
    assert sink.errors == 0

    rows = db_session.execute(
        select(Alert, IncidentAlert.incident_id)
        .join(IncidentAlert, IncidentAlert.alert_id == Alert.id)
        .where(Alert.entity_id.in_([user, account]))
    ).all()
    ato = [(a, i) for a, i in rows if any(str(e).endswith("-ato") for e in a.event_ids)]
    assert {a.domain for a, _ in ato} == {"auth", "payment"}, [a.title for a, _ in rows]
    assert len({i for _, i in ato}) == 1
    incident = db_session.get(Incident, ato[0][1])
    assert incident is not None
    db_session.refresh(incident)
    assert incident.domains == ["auth", "payment"]
    assert incident.risk >= 75
    assert incident.severity.value in {"high", "critical"}
    assert incident.title.startswith(f"User {user}:")
    assert "across auth and payment" in incident.summary
