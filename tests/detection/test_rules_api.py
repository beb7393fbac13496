"""``/api/rules``: list and read rules, switch one off (stored, audited, followed by the running pipeline
at once), run its samples and replay it over the lake. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.sink import EntityDetectionStep
from finsecure.api import create_app
from finsecure.audit.models import AuditEntry
from finsecure.auth.models import Role
from finsecure.core.deps import AppContext, get_db
from finsecure.detection import RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import Rule
from finsecure.detection.states import DisabledRulesReader, RuleState, set_enabled
from finsecure.event.schemas import Domain, arrow_schema
from finsecure.lake.writer import LakeWriter
from finsecure.pipeline.batch import Batch
from finsecure.platform import Platform

BIG_ID = "7a0c1d2e-3f40-4b51-8c62-9d7e8f901a01"
BROKEN_ID = "7a0c1d2e-3f40-4b51-8c62-9d7e8f901a02"
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)  # the sample frames' clock


def _rule(rule_id: str, title: str, negative_amount: float) -> Rule:
    return Rule.from_dict({
        "id": rule_id, "title": title, "description": "A payment over 1000.", "severity": "high",
        "domain": "payment", "kind": "match", "typology": "test", "triage": "Call the customer.",
        "status": "test", "explain": "Paid {amount:.2f}", "entity": "card_id",
        "condition": {"field": "amount", "gt": 1000},
        "samples": {"positive": [{"amount": 5000.0, "event_id": "big"}],
                    "negative": [{"amount": negative_amount, "event_id": "small"}]},
    })  # fmt: skip


BIG = _rule(BIG_ID, "Very large payment", 20.0)
BROKEN = _rule(BROKEN_ID, "Large payment with a wrong sample", 2000.0)  # its negative sample fires


@pytest.fixture
def step(db_session: Session) -> EntityDetectionStep:
    reader = DisabledRulesReader(lambda: nullcontext(db_session))  # type: ignore[arg-type,return-value]
    return EntityDetectionStep(RuleSet([BIG, BROKEN], disabled_source=reader), lambda hits: None)


@pytest.fixture
def app(
    context: AppContext, db_session: Session, tmp_path: Path, step: EntityDetectionStep
) -> Iterator[FastAPI]:
    """The test app with a running pipeline whose detection step evaluates BIG and BROKEN."""
    settings = context.settings.model_copy(update={"data_dir": tmp_path, "demo_stream": False})
    platform = Platform(settings, context.session_factory, steps=[step]).start()
    application = create_app(context=replace(context, settings=settings, platform=platform))
    application.dependency_overrides[get_db] = lambda: db_session
    try:
        yield application
    finally:
        platform.graph_sink.session_factory = None
        platform.stop()


Headers = Callable[[Role], dict[str, str]]


def _payments(*amounts: float) -> Batch:
    rows = [{"amount": a, "event_id": f"p{i}", "card_id": "c1"} for i, a in enumerate(amounts)]
    return Batch(Domain.payment, sample_frame(Domain.payment, rows), "test")


def test_list_rules__gives_the_pipeline_rules_with_filters(client: Any, auth_headers: Headers) -> None:
    viewer = auth_headers(Role.viewer)

    body = client.get("/api/rules", headers=viewer).json()
    filtered = client.get("/api/rules", params={"kind": "threshold"}, headers=viewer).json()

    assert body["total"] == 2
    assert [r["title"] for r in body["items"]] == ["Large payment with a wrong sample", "Very large payment"]
    first = body["items"][1]
    assert (first["domain"], first["kind"], first["status"], first["enabled"]) == (
        "payment",
        "match",
        "test",
        True,
    )
    assert first["hits_24h"] == 0
    assert filtered == {"items": [], "total": 0}


def test_read_rule__detail_and_unknown(client: Any, auth_headers: Headers) -> None:
    viewer = auth_headers(Role.viewer)

    found = client.get(f"/api/rules/{BIG_ID}", headers=viewer)
    missing = client.get("/api/rules/no-such-rule", headers=viewer)

    assert found.status_code == 200
    assert found.json()["triage"] == "Call the customer."
    assert found.json()["samples_positive"] == [{"amount": 5000.0, "event_id": "big"}]
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_update_rule__switches_it_off_live_stored_and_audited(
    client: Any, auth_headers: Headers, db_session: Session, step: EntityDetectionStep
) -> None:
    admin = auth_headers(Role.admin)
    assert step.rules.evaluate(_payments(5000.0)).get_column("rule_id").to_list().count(BIG_ID) == 1

    response = client.patch(f"/api/rules/{BIG_ID}", json={"enabled": False}, headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is False
    assert db_session.get(RuleState, BIG_ID) is not None
    assert BIG_ID in step.rules.disabled
    assert BIG_ID not in step.rules.evaluate(_payments(5000.0)).get_column("rule_id").to_list()
    audit = db_session.scalars(select(AuditEntry).where(AuditEntry.target_id == BIG_ID)).one()
    assert (audit.action, audit.before) == ("rule.disable", {"enabled": True})
    assert audit.after == {"enabled": False, "title": "Very large payment"}
    listed = client.get("/api/rules", params={"enabled": False}, headers=admin).json()
    assert [r["id"] for r in listed["items"]] == [BIG_ID]

    again = client.patch(f"/api/rules/{BIG_ID}", json={"enabled": True}, headers=admin)
    assert again.json()["enabled"] is True
    assert BIG_ID in step.rules.evaluate(_payments(5000.0)).get_column("rule_id").to_list()


def test_update_rule__refuses_analysts_bad_bodies_and_unknown_rules(
    client: Any, auth_headers: Headers
) -> None:
    admin = auth_headers(Role.admin)

    assert (
        client.patch(
            f"/api/rules/{BIG_ID}", json={"enabled": False}, headers=auth_headers(Role.analyst)
        ).status_code
        == 403
    )
    assert client.patch(f"/api/rules/{BIG_ID}", json={"enabled": "perhaps"}, headers=admin).status_code == 422
    assert client.patch(f"/api/rules/{BIG_ID}", json={"on": True}, headers=admin).status_code == 422
    assert client.patch("/api/rules/nope", json={"enabled": False}, headers=admin).status_code == 404


def test_disabled_rules_reader__a_rule_set_follows_the_table(db_session: Session) -> None:
    # another process (a worker) switched the rule off: the rule set re-reads the table by itself
    reader = DisabledRulesReader(lambda: nullcontext(db_session))  # type: ignore[arg-type,return-value]
    rules = RuleSet([BIG], disabled_source=reader, disabled_interval_s=0.0)
    assert rules.evaluate(_payments(5000.0)).height == 1

    set_enabled(db_session=db_session, rule_id=BIG_ID, enabled=False, by="worker-test")
    db_session.commit()

    assert rules.evaluate(_payments(5000.0)).height == 0
    assert rules.disabled == frozenset({BIG_ID})


def test_disabled_rules_reader__keeps_the_last_state_when_the_database_is_away() -> None:
    def broken() -> Session:
        raise OSError("database away")

    rules = RuleSet([BIG], disabled_source=DisabledRulesReader(broken), disabled_interval_s=0.0)
    rules.set_disabled({BIG_ID})

    assert rules.evaluate(_payments(5000.0)).height == 0
    assert rules.disabled == frozenset({BIG_ID})


def test_run_rule_samples__pass_and_fail_per_sample(client: Any, auth_headers: Headers) -> None:
    analyst = auth_headers(Role.analyst)

    good = client.post(f"/api/rules/{BIG_ID}/test", headers=analyst).json()
    bad = client.post(f"/api/rules/{BROKEN_ID}/test", headers=analyst).json()

    assert good["passed"] is True
    assert [(r["kind"], r["label"], r["passed"]) for r in good["results"]] == [
        ("positive", "big", True), ("negative", "small", True)
    ]  # fmt: skip
    assert bad["passed"] is False
    assert [(r["label"], r["expected"], r["hits"], r["passed"]) for r in bad["results"]][1] == (
        "small", "stays quiet", 1, False
    )  # fmt: skip
    assert bad["problems"] == ["samples.negative: fired on ['small']"]
    assert client.post(f"/api/rules/{BIG_ID}/test", headers=auth_headers(Role.viewer)).status_code == 403


def _lake(root: Path) -> None:
    rows = [
        {"card_id": "c1", "amount": 5000.0, "ts": 3_600, "label": 1, "event_id": "e1"},
        {"card_id": "c2", "amount": 3000.0, "ts": 7_200, "label": 0, "event_id": "e2"},
        {"card_id": "c3", "amount": 10.0, "ts": 9_000, "label": 0, "event_id": "e3"},
        {"card_id": "c4", "amount": 9000.0, "ts": 200_000, "label": 1, "event_id": "e4"},  # after the period
    ]
    with LakeWriter(root, fsync=False) as writer:
        writer.write(
            Domain.payment, sample_frame(Domain.payment, rows).select(arrow_schema(Domain.payment).names)
        )


def test_backtest_rule__replays_the_lake_with_precision(
    client: Any, auth_headers: Headers, tmp_path: Path
) -> None:
    _lake(tmp_path / "lake")
    body = {"from": T0.isoformat(), "to": (T0 + dt.timedelta(days=1)).isoformat()}

    response = client.post(f"/api/rules/{BIG_ID}/backtest", json=body, headers=auth_headers(Role.analyst))

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["hits"], result["true_hits"], result["labelled_hits"]) == (2, 1, 2)
    assert result["precision"] == pytest.approx(0.5)
    assert result["events"] == {"payment": 3}
    assert result["top_entities"][0][1] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"},
        {"from": "2024-05-01T00:00:00Z", "to": "2024-06-01T00:00:00Z"},
        {"from": "2024-05-01T00:00:00Z"},
        {"from": "yesterday", "to": "2024-05-01T00:00:00Z"},
    ],
    ids=["backwards", "too-long", "no-end", "not-a-date"],
)
def test_backtest_rule__refuses_bad_periods(client: Any, auth_headers: Headers, body: dict[str, str]) -> None:
    response = client.post(f"/api/rules/{BIG_ID}/backtest", json=body, headers=auth_headers(Role.analyst))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_list_rules__counts_hits_of_the_last_day(
    client: Any, auth_headers: Headers, db_session: Session
) -> None:
    from finsecure.alert.models import Alert
    from finsecure.core.enums import Severity

    now = dt.datetime.now(dt.UTC)
    for key, seen, count in (
        ("a", now, 3),
        ("b", now - dt.timedelta(hours=2), 2),
        ("c", now - dt.timedelta(days=3), 9),
    ):
        db_session.add(Alert(
            alert_key=f"rules-api-{key}", rule_id=BIG_ID, title="t", severity=Severity.high, domain="payment",
            entity_type="card_id", entity_id="c1", event_ids=["e"], explanation={}, first_seen=seen,
            last_seen=seen, count=count,
        ))  # fmt: skip
    db_session.commit()

    items = client.get("/api/rules", headers=auth_headers(Role.viewer)).json()["items"]

    assert {r["id"]: r["hits_24h"] for r in items} == {BIG_ID: 5, BROKEN_ID: 0}


def test_rules_api__without_a_pipeline_lists_the_shipped_rules(
    context: AppContext, db_session: Session, auth_headers: Headers, client: Any
) -> None:
    api_only = create_app(context=context)
    api_only.dependency_overrides[get_db] = lambda: db_session
    from fastapi.testclient import TestClient

    with TestClient(api_only) as other:
        body = other.get("/api/rules", headers=auth_headers(Role.viewer)).json()

    from finsecure.platform import default_rules

    assert body["total"] == len(default_rules()) > 20
    assert pl.Series([r["domain"] for r in body["items"]]).n_unique() > 1
