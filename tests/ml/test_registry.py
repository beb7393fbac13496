from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy.orm import Session

from finsecure.core.errors import Conflict, NotFound
from finsecure.ml import registry
from finsecure.ml.bootstrap import register_tier
from finsecure.ml.contract import ModelError
from finsecure.ml.train import FittedTier
from finsecure.model.models import ModelStage


def _register(
    db_session: Session, tmp_path: Path, tier: FittedTier, validation: pl.DataFrame, kind: str = "gbdt"
):
    return registry.register(
        db_session=db_session,
        data_dir=tmp_path,
        name="payment_gbdt",
        model=tier.members[kind],
        design=tier.design,
        data_fingerprint=tier.fingerprint,
        metrics={"average_precision": 0.9},
        threshold=tier.thresholds[kind],
        dataset="test",
    )


def test_register__writes_a_versioned_artefact_with_card(
    db_session: Session, tmp_path: Path, tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> None:
    first = _register(db_session, tmp_path, tier, payments[1])
    second = _register(db_session, tmp_path, tier, payments[1])
    assert (first.version, second.version) == (1, 2)
    folder = Path(second.artefact_path)
    assert folder == tmp_path / "models" / "payment_gbdt" / "v2"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["features"] == list(tier.design.feature_names)
    assert metadata["data_fingerprint"] == tier.fingerprint
    assert metadata["kind"] == "gbdt"
    card = (folder / "MODEL_CARD.md").read_text()
    assert "payment_gbdt v2" in card
    assert "How many payments this card had in the last hour" in card
    loaded = registry.load_artefact(folder)
    assert loaded.explainer is not None
    assert second.stage == ModelStage.candidate


def test_promote__archives_the_previous_and_rollback_restores_it(
    db_session: Session, tmp_path: Path, tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> None:
    for _ in range(3):
        _register(db_session, tmp_path, tier, payments[1])
    registry.promote(db_session=db_session, name="payment_gbdt", version=1)
    registry.promote(db_session=db_session, name="payment_gbdt", version=3)
    stages = {r.version: r.stage for r in registry.get_all(db_session=db_session, name="payment_gbdt")}
    assert stages == {1: ModelStage.archived, 2: ModelStage.candidate, 3: ModelStage.production}
    back = registry.rollback(db_session=db_session, name="payment_gbdt")
    assert back.version == 1
    assert [r.version for r in registry.production(db_session=db_session)] == [1]
    with pytest.raises(Conflict, match="no earlier promoted version"):
        registry.rollback(db_session=db_session, name="payment_gbdt")


def test_promote__refuses_a_malformed_artefact_and_keeps_the_served_one(
    db_session: Session, tmp_path: Path, tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> None:
    _register(db_session, tmp_path, tier, payments[1])
    broken = _register(db_session, tmp_path, tier, payments[1])
    registry.promote(db_session=db_session, name="payment_gbdt", version=1)
    (Path(broken.artefact_path) / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(Conflict, match="cannot be served"):
        registry.promote(db_session=db_session, name="payment_gbdt", version=2)
    assert [r.version for r in registry.production(db_session=db_session)] == [1]


def test_promote__unknown_version(db_session: Session) -> None:
    with pytest.raises(NotFound):
        registry.promote(db_session=db_session, name="nothing", version=1)


@pytest.mark.parametrize("damage", ["metadata", "missing_field", "onnx_swapped"])
def test_load_artefact__refuses_damage(
    db_session: Session, tmp_path: Path, tier: FittedTier, payments: tuple[pl.DataFrame, ...], damage: str
) -> None:
    folder = Path(_register(db_session, tmp_path, tier, payments[1]).artefact_path)
    meta = folder / "metadata.json"
    if damage == "metadata":
        meta.write_text("{not json")
    elif damage == "missing_field":
        data = json.loads(meta.read_text())
        del data["threshold"]
        meta.write_text(json.dumps(data))
    else:
        tier.members["iforest"].export_onnx(folder / "model.onnx")
    with pytest.raises(ModelError):
        registry.load_artefact(folder)


def test_register_tier__registers_members_and_ensemble(
    db_session: Session, tmp_path: Path, tier: FittedTier, payments: tuple[pl.DataFrame, ...]
) -> None:
    rows = register_tier(
        db_session=db_session, data_dir=tmp_path, tier=tier, validation=payments[1], dataset="t", promote=True
    )
    names = sorted(r.name for r in rows)
    assert names == ["payment_ensemble", "payment_gbdt", "payment_hst", "payment_iforest"]
    assert all(r.stage == ModelStage.production for r in rows)
    ensemble = next(r for r in rows if r.name == "payment_ensemble")
    assert ensemble.features == ["score__payment_gbdt", "score__payment_iforest", "score__payment_hst"]
    assert 0.0 <= ensemble.metrics["average_precision"] <= 1.0
