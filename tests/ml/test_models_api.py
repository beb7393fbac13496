"""``/api/models``: versions with metrics and which is live; promote and roll back (admins, audited), and
the scoring step follows the registry without a restart. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.audit.models import AuditEntry
from finsecure.auth.models import Role
from finsecure.ml import registry
from finsecure.ml.train import FittedTier
from finsecure.model.models import ModelStage

Headers = Callable[[Role], dict[str, str]]


def _register(db_session: Session, tmp_path: Path, tier: FittedTier, name: str, versions: int) -> None:
    for number in range(versions):
        registry.register(
            db_session=db_session, data_dir=tmp_path, name=name, model=tier.members["gbdt"],
            design=tier.design, data_fingerprint=tier.fingerprint,
            metrics={"average_precision": 0.5 + number / 10}, threshold=tier.thresholds["gbdt"],
            dataset="test",
        )  # fmt: skip
    db_session.commit()


def test_list_models__versions_newest_first_with_the_live_one(
    client: Any, auth_headers: Headers, db_session: Session, tmp_path: Path, tier: FittedTier
) -> None:
    _register(db_session, tmp_path, tier, "api_gbdt", 2)
    registry.promote(db_session=db_session, name="api_gbdt", version=1)
    db_session.commit()

    body = client.get("/api/models", headers=auth_headers(Role.viewer)).json()

    model = next(m for m in body["items"] if m["name"] == "api_gbdt")
    assert (model["kind"], model["domain"], model["live_version"], model["can_roll_back"]) == (
        "gbdt", "payment", 1, False
    )  # fmt: skip
    assert [(v["version"], v["stage"], v["live"]) for v in model["versions"]] == [
        (2, "candidate", False), (1, "production", True)
    ]  # fmt: skip
    assert model["versions"][0]["metrics"] == {"average_precision": 0.6}
    assert 0 < model["versions"][0]["threshold"] < 1


def test_promote_model__serves_it_archives_the_old_and_audits(
    client: Any, auth_headers: Headers, db_session: Session, tmp_path: Path, tier: FittedTier
) -> None:
    _register(db_session, tmp_path, tier, "api_gbdt", 2)
    admin = auth_headers(Role.admin)
    assert client.post("/api/models/api_gbdt/1/promote", headers=admin).status_code == 200

    response = client.post("/api/models/api_gbdt/2/promote", headers=admin)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["live_version"], body["can_roll_back"]) == (2, True)
    assert [v["stage"] for v in body["versions"]] == ["production", "archived"]
    entries = db_session.scalars(select(AuditEntry).where(AuditEntry.action == "model.promote")).all()
    assert [(e.target_id, (e.before or {}).get("version")) for e in entries] == [
        ("api_gbdt:v1", None), ("api_gbdt:v2", 1)
    ]  # fmt: skip


def test_promote_model__errors(
    client: Any, auth_headers: Headers, db_session: Session, tmp_path: Path, tier: FittedTier
) -> None:
    _register(db_session, tmp_path, tier, "api_gbdt", 1)
    admin = auth_headers(Role.admin)
    client.post("/api/models/api_gbdt/1/promote", headers=admin)

    again = client.post("/api/models/api_gbdt/1/promote", headers=admin)
    unknown = client.post("/api/models/api_gbdt/9/promote", headers=admin)
    bad = client.post("/api/models/api_gbdt/zero/promote", headers=admin)
    analyst = client.post("/api/models/api_gbdt/1/promote", headers=auth_headers(Role.analyst))

    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    assert unknown.status_code == 404
    assert bad.status_code == 422
    assert analyst.status_code == 403


def test_promote_model__refuses_a_damaged_artefact(
    client: Any, auth_headers: Headers, db_session: Session, tmp_path: Path, tier: FittedTier
) -> None:
    _register(db_session, tmp_path, tier, "api_gbdt", 1)
    (tmp_path / "models" / "api_gbdt" / "v1" / "model.onnx").write_bytes(b"not a model")

    response = client.post("/api/models/api_gbdt/1/promote", headers=auth_headers(Role.admin))

    assert response.status_code == 409
    assert "cannot be served" in response.json()["error"]["message"]


def test_rollback_model__goes_back_and_errors_when_it_cannot(
    client: Any, auth_headers: Headers, db_session: Session, tmp_path: Path, tier: FittedTier
) -> None:
    _register(db_session, tmp_path, tier, "api_gbdt", 2)
    admin = auth_headers(Role.admin)
    assert client.post("/api/models/api_gbdt/rollback", headers=admin).status_code == 409  # nothing live
    client.post("/api/models/api_gbdt/1/promote", headers=admin)
    assert client.post("/api/models/api_gbdt/rollback", headers=admin).status_code == 409  # nothing earlier
    client.post("/api/models/api_gbdt/2/promote", headers=admin)

    response = client.post("/api/models/api_gbdt/rollback", headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["live_version"] == 1
    assert (
        registry.get_or_raise(db_session=db_session, name="api_gbdt", version=2).stage == ModelStage.archived
    )
    assert client.post("/api/models/nothing/rollback", headers=admin).status_code == 404
    entry = db_session.scalars(select(AuditEntry).where(AuditEntry.action == "model.rollback")).one()
    assert (entry.before, entry.after) == (
        {"name": "api_gbdt", "version": 2, "stage": "production"},
        {"name": "api_gbdt", "version": 1, "stage": "production"},
    )


def test_promote_model__the_scoring_step_follows_without_a_restart(
    client: Any,
    auth_headers: Headers,
    db_session: Session,
    tmp_path: Path,
    tier: FittedTier,
    payments: tuple[pl.DataFrame, ...],
) -> None:
    from finsecure.ml.step import ScoringStep

    _register(db_session, tmp_path, tier, "payment_gbdt", 2)
    admin = auth_headers(Role.admin)
    client.post("/api/models/payment_gbdt/1/promote", headers=admin)
    # what the pipeline's registry resolver reads, in this test's transaction
    step = ScoringStep(
        lambda: [row.artefact_path for row in registry.production(db_session=db_session)],
        reload_interval_s=0.0,
    )
    step.refresh()
    assert {(m.name, m.version) for m in step.models.values()} == {("payment_gbdt", 1)}

    client.post("/api/models/payment_gbdt/2/promote", headers=admin)
    step.refresh()

    assert {(m.name, m.version) for m in step.models.values()} == {("payment_gbdt", 2)}
