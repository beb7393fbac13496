"""The response worker: playbook dispatch, signed webhooks with retries and dead letters, approval,
dry runs, e-mail, and the pipeline never waiting for any of it."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.audit.models import AuditEntry
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.correlation import Correlator
from finsecure.response.actions.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from finsecure.response.models import ActionStatus, BlockEntry, ResponseAction
from finsecure.response.playbooks import Playbook
from finsecure.response.worker import ResponseWorker
from tests.alert.factories import hit, hits_frame, session_factory, uid
from tests.conftest import make_settings
from tests.response.receivers import smtp_server, webhook_receiver

SECRET = "receiver-shared-secret"


def _settings(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "response_webhook_secret": SECRET, "response_backoff_s": 0.02, "response_max_attempts": 4,
    }  # fmt: skip
    values.update(overrides)
    return make_settings(**values)


def _playbook(on: str = "incident", dry_run: bool = False, **action: Any) -> Playbook:
    return Playbook.from_dict(
        {
            "id": uid("pb").lower(), "title": "Test playbook", "dry_run": dry_run,
            "when": {"on": on, "min_severity": "medium"}, "actions": [action],
        },
        source="test",
        action_types=["webhook", "slack", "email", "block", "open_incident", "attach_incident"],
    )  # fmt: skip


def _incident(db_session: Session, factory: Callable[[], Session] | None = None) -> int:
    sink = AlertSink(factory or session_factory(db_session), correlator=Correlator())
    result = sink.write(hits_frame(hit(rule_id=uid("rule"), entity_id=uid("card"), severity="high")))
    [incident_id] = result.incident_ids
    return incident_id


def _settle(
    worker: ResponseWorker, db_session: Session, action_id: int, timeout: float = 5.0
) -> ResponseAction:
    """Run due retries until the action leaves ``pending``."""
    deadline = time.monotonic() + timeout
    while True:
        action = db_session.get(ResponseAction, action_id, populate_existing=True)
        assert action is not None
        if action.status != ActionStatus.pending or time.monotonic() > deadline:
            return action
        time.sleep(0.01)
        worker.run_due()


def test_webhook__fails_twice_then_exactly_one_signed_delivery(db_session: Session) -> None:
    """The acceptance test: a receiver that fails twice then succeeds gets exactly one delivery."""
    with webhook_receiver(fail_first=2) as receiver:
        worker = ResponseWorker(
            _settings(),
            session_factory(db_session),
            playbooks=[_playbook(type="webhook", params={"url": receiver.url})],
        )
        incident_id = _incident(db_session)
        [action_id] = worker.dispatch(alert_ids=[], incident_ids=[incident_id])
        action = _settle(worker, db_session, action_id)
        assert (action.status, action.attempts) == (ActionStatus.succeeded, 3)
        # asked again (the incident grows, a restart re-polls): no second action, no second delivery
        assert worker.dispatch(alert_ids=[], incident_ids=[incident_id]) == []
        assert worker.poll() == []
    assert [d.answered for d in receiver.deliveries] == [500, 500, 200]
    assert len(receiver.accepted) == 1
    keys = {d.headers["idempotency-key"] for d in receiver.deliveries}
    assert keys == {action.idempotency_key}
    for delivery in receiver.deliveries:
        assert verify(
            SECRET.encode(),
            delivery.headers[TIMESTAMP_HEADER.lower()],
            delivery.body,
            delivery.headers[SIGNATURE_HEADER.lower()],
        )
        assert not verify(b"wrong-secret", delivery.headers[TIMESTAMP_HEADER.lower()], delivery.body,
                          delivery.headers[SIGNATURE_HEADER.lower()])  # fmt: skip
    body = json.loads(receiver.accepted[0].body)
    assert (body["kind"], body["id"]) == ("incident", incident_id)
    assert body["text"].startswith(f"Incident {incident_id} (high")
    audit = db_session.scalars(
        select(AuditEntry.action).where(AuditEntry.target_type == "response_action",
                                        AuditEntry.target_id == str(action_id)).order_by(AuditEntry.id)
    ).all()  # fmt: skip
    assert audit == ["response.request", "response.retry", "response.retry", "response.succeeded"]


def test_webhook__dead_letter_after_max_attempts(db_session: Session) -> None:
    with webhook_receiver(fail_first=100, fail_status=503) as receiver:
        worker = ResponseWorker(
            _settings(response_max_attempts=3), session_factory(db_session),
            playbooks=[_playbook(type="webhook", params={"url": receiver.url})],
        )  # fmt: skip
        [action_id] = worker.dispatch(alert_ids=[], incident_ids=[_incident(db_session)])
        action = _settle(worker, db_session, action_id)
    assert (action.status, action.attempts) == (ActionStatus.dead_letter, 3)
    assert "gave up after 3 attempts" in (action.error or "")
    assert len(receiver.deliveries) == 3


def test_webhook__client_error_fails_without_retry(db_session: Session) -> None:
    with webhook_receiver(fail_first=100, fail_status=400) as receiver:
        worker = ResponseWorker(
            _settings(), session_factory(db_session),
            playbooks=[_playbook(type="webhook", params={"url": receiver.url})],
        )  # fmt: skip
        [action_id] = worker.dispatch(alert_ids=[], incident_ids=[_incident(db_session)])
        action = _settle(worker, db_session, action_id)
    assert (action.status, action.attempts, len(receiver.deliveries)) == (ActionStatus.failed, 1, 1)


def test_block__waits_for_approval_then_blocks(db_session: Session) -> None:
    from finsecure.audit.service import Actor
    from finsecure.response import service as action_service

    worker = ResponseWorker(
        _settings(), session_factory(db_session),
        playbooks=[_playbook(on="alert", type="block", approval=True, params={"ttl_hours": 2})],
    )  # fmt: skip
    card = uid("card")
    sink = AlertSink(session_factory(db_session))
    [alert_id] = sink.write(hits_frame(hit(rule_id=uid("rule"), entity_id=card))).alert_ids
    [action_id] = worker.dispatch(alert_ids=[alert_id], incident_ids=[])
    action = db_session.get(ResponseAction, action_id, populate_existing=True)
    assert action is not None
    assert action.status == ActionStatus.awaiting_approval
    assert worker.run(action_id) is None  # not before a person says so
    action_service.approve(db_session=db_session, action=action, actor=Actor(label="alice"))
    assert worker.run(action_id) == ActionStatus.succeeded
    entry = db_session.scalar(select(BlockEntry).where(BlockEntry.entity_id == card))
    assert entry is not None
    assert (entry.entity_type, entry.action_id) == ("card_id", action_id)
    assert entry.expires_at is not None
    assert dt.timedelta(hours=1.9) < entry.expires_at - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)


def test_dry_run__describes_and_does_nothing(db_session: Session) -> None:
    with webhook_receiver() as receiver:
        worker = ResponseWorker(
            _settings(), session_factory(db_session),
            playbooks=[_playbook(dry_run=True, type="webhook", params={"url": receiver.url})],
        )  # fmt: skip
        [action_id] = worker.dispatch(alert_ids=[], incident_ids=[_incident(db_session)])
    action = db_session.get(ResponseAction, action_id, populate_existing=True)
    assert action is not None
    assert action.status == ActionStatus.dry_run
    assert "send a signed webhook" in (action.result or {})["would"]
    assert receiver.deliveries == []


def test_playbook_params__unset_environment_variable_leaves_the_action_out(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FINSECURE_TEST_HOOK_URL", raising=False)
    playbook = _playbook(type="webhook", params={"url": "${FINSECURE_TEST_HOOK_URL}"})
    worker = ResponseWorker(_settings(), session_factory(db_session), playbooks=[playbook])
    assert worker.dispatch(alert_ids=[], incident_ids=[_incident(db_session)]) == []
    monkeypatch.setenv("FINSECURE_TEST_HOOK_URL", "http://127.0.0.1:9/hook")
    assert playbook.actions[0].resolved_params() == {"url": "http://127.0.0.1:9/hook"}


def test_email__sent_through_a_real_smtp_conversation(db_session: Session) -> None:
    with smtp_server() as mailbox:
        worker = ResponseWorker(
            _settings(smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_from="soc@bank.example"),
            session_factory(db_session),
            playbooks=[_playbook(type="email", params={"to": ["fraud-desk@bank.example"]})],
        )
        incident_id = _incident(db_session)
        [action_id] = worker.dispatch(alert_ids=[], incident_ids=[incident_id])
    action = db_session.get(ResponseAction, action_id, populate_existing=True)
    assert action is not None
    assert action.status == ActionStatus.succeeded, action.error
    [(sender, recipients, data)] = mailbox.messages
    assert (sender, recipients) == ("soc@bank.example", ["fraud-desk@bank.example"])
    assert f"Incident {incident_id}".encode() in data


def test_slack__posts_text_and_blocks(db_session: Session) -> None:
    with webhook_receiver() as receiver:
        worker = ResponseWorker(
            _settings(), session_factory(db_session),
            playbooks=[_playbook(type="slack", params={"url": receiver.url})],
        )  # fmt: skip
        worker.dispatch(alert_ids=[], incident_ids=[_incident(db_session)])
    [delivery] = receiver.deliveries
    body = json.loads(delivery.body)
    assert body["text"].startswith("Incident ")
    assert body["blocks"][0]["text"]["text"] == body["text"]


def test_worker_thread__alert_sink_listener_never_blocks_and_delivers(tmp_path: Path) -> None:
    """End to end on a real database: the sink hands results to the worker thread, which delivers while
    the sink has long returned (the receiver holds its answer until the test lets it go)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'response.db'}")
    migrate.upgrade(engine)
    factory = make_session_factory(engine)
    gate = threading.Event()
    try:
        with webhook_receiver(fail_first=1, gate=gate) as receiver:
            worker = ResponseWorker(
                _settings(),
                factory,
                playbooks=[_playbook(type="webhook", params={"url": receiver.url})],
                poll_s=0.2,
            ).start()
            sink = AlertSink(factory, correlator=Correlator())
            sink.listeners.append(worker.submit)
            started = time.perf_counter()
            sink(hits_frame(hit(rule_id=uid("rule"), entity_id=uid("card"), severity="high")))
            call_s = time.perf_counter() - started
            gate.set()
            deadline = time.monotonic() + 30
            while not receiver.accepted and time.monotonic() < deadline:
                time.sleep(0.02)
            worker.stop()
        assert call_s < 20  # had it waited for the held webhook answer, it would have taken 30 s
        assert len(receiver.accepted) == 1
        assert len(receiver.deliveries) == 2
    finally:
        engine.dispose()
