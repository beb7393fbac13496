"""Deep models in the registry: register, list, promote, roll back, and the deep tier serving the promoted
sequence model (hot-reloaded between batches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sqlalchemy.orm import Session

from finsecure.core.errors import Conflict
from finsecure.event.schemas import Domain
from finsecure.features.history import HistorySpec
from finsecure.ml import registry
from finsecure.ml.contract import ModelError
from finsecure.ml.deep import (
    DeepTraining,
    SequenceScoringStep,
    ServedSequenceModel,
    register_files,
    register_training,
    sequence_inputs,
    train_sequence_model,
)
from finsecure.ml.step import ScoringStep
from finsecure.ml.train import FittedTier
from finsecure.model.models import ModelStage
from finsecure.pipeline.batch import Batch

from .test_deep import _payments


@pytest.fixture(scope="module")
def trained() -> tuple[DeepTraining, DeepTraining, pl.DataFrame]:
    """Two small LSTMs (different seeds) over each card's last 4 payments, and their payments."""
    frame = _payments(320, cards=16)
    card = frame["card_id"].str.slice(1).cast(pl.Int64).to_numpy()
    spec = HistorySpec(key="card_id", features=("amount", "cat__merchant_category"), steps=4)
    runs = [
        train_sequence_model(
            "lstm",
            frame,
            {"train": card < 12, "holdout_cards": card >= 12},
            domain="payment",
            history=spec,
            epochs=1,
            hidden=8,
            threads=1,
            seed=seed,
        )
        for seed in (0, 1)
    ]
    return runs[0], runs[1], frame


def test_register_training__writes_a_sequence_artefact_with_its_history(
    db_session: Session, tmp_path: Path, trained: tuple[DeepTraining, DeepTraining, pl.DataFrame]
) -> None:
    first, _, _ = trained
    row = register_training(
        db_session=db_session, data_dir=tmp_path, name="payment_lstm", training=first, dataset="test"
    )
    assert (row.name, row.version, row.kind, row.stage) == ("payment_lstm", 1, "lstm", ModelStage.candidate)
    assert row.features == ["amount", "cat__merchant_category"]
    assert row.data_fingerprint == first.fingerprint != "not recorded"
    meta = json.loads((Path(row.artefact_path) / "metadata.json").read_text())
    assert meta["steps"] == 4
    assert meta["history"]["key"] == "card_id"
    assert set(meta["designs"]) == {"payment"}
    assert "holdout_cards average_precision" in row.metrics
    card = (Path(row.artefact_path) / "MODEL_CARD.md").read_text()
    assert "last 4 events of the same `card_id`" in card
    loaded = registry.load_artefact(row.artefact_path)
    assert loaded.is_sequence
    assert loaded.scorer.rank == 3


def test_promote__sequence_versions_promote_and_roll_back(
    db_session: Session, tmp_path: Path, trained: tuple[DeepTraining, DeepTraining, pl.DataFrame]
) -> None:
    first, second, _ = trained
    for training in (first, second):
        register_training(
            db_session=db_session, data_dir=tmp_path, name="payment_lstm", training=training, dataset="t"
        )
    registry.promote(db_session=db_session, name="payment_lstm", version=1)
    registry.promote(db_session=db_session, name="payment_lstm", version=2)
    assert [r.version for r in registry.production(db_session=db_session)] == [2]
    assert registry.rollback(db_session=db_session, name="payment_lstm").version == 1
    listed = {(r.version, r.stage) for r in registry.get_all(db_session=db_session, name="payment_lstm")}
    assert listed == {(1, ModelStage.production), (2, ModelStage.archived)}
    # A broken artefact is refused at promotion.
    broken = register_training(
        db_session=db_session, data_dir=tmp_path, name="payment_lstm", training=first, dataset="t"
    )
    (Path(broken.artefact_path) / "model.onnx").write_bytes(b"junk")
    with pytest.raises(Conflict):
        registry.promote(db_session=db_session, name="payment_lstm", version=broken.version)


def test_sequence_scoring_step__serves_the_promoted_version_and_reloads(
    db_session: Session, tmp_path: Path, trained: tuple[DeepTraining, DeepTraining, pl.DataFrame]
) -> None:
    first, second, frame = trained
    rows = [
        register_training(
            db_session=db_session, data_dir=tmp_path, name="payment_lstm", training=t, dataset="t"
        )
        for t in (first, second)
    ]
    registry.promote(db_session=db_session, name="payment_lstm", version=1)

    def resolve() -> list[str]:
        return [r.artefact_path for r in registry.production(db_session=db_session)]

    step = SequenceScoringStep.serving(tmp_path / "no-such-folder", resolve, reload_interval_s=0.0, threads=1)
    assert [(m.name, m.version) for m in step.models] == [("payment_lstm", 1)]
    served = step.models[0]
    expected = served.model.predict_proba(sequence_inputs(frame, served.spec, served.designs))
    out = step.process(Batch(Domain.payment, frame[:200], "test")).frame["score__payment_lstm"]
    np.testing.assert_allclose(out.to_numpy(), expected[:200], atol=1e-6)
    history = step.histories["payment_lstm"]
    registry.promote(db_session=db_session, name="payment_lstm", version=rows[1].version)
    out = step.process(Batch(Domain.payment, frame[200:], "test")).frame["score__payment_lstm"]
    assert [(m.name, m.version) for m in step.models] == [("payment_lstm", 2)]
    assert step.histories["payment_lstm"] is history  # same history spec: the entities' events are kept
    new = step.models[0].model.predict_proba(sequence_inputs(frame, served.spec, served.designs))
    np.testing.assert_allclose(out.to_numpy(), new[200:], atol=1e-6)
    assert step.reloads == 2
    # The fast tier's step leaves sequence artefacts alone.
    fast = ScoringStep(resolve, reload_interval_s=0.0)
    fast.refresh(force=True)
    assert fast.models == {}
    assert fast.load_errors == 0


def test_sequence_scoring_step__a_broken_version_leaves_the_previous_serving(
    db_session: Session, tmp_path: Path, trained: tuple[DeepTraining, DeepTraining, pl.DataFrame]
) -> None:
    first, _, _ = trained
    good = register_training(
        db_session=db_session, data_dir=tmp_path, name="payment_lstm", training=first, dataset="t"
    )
    bad = register_training(
        db_session=db_session, data_dir=tmp_path, name="payment_lstm", training=first, dataset="t"
    )
    paths = [good.artefact_path]
    step = SequenceScoringStep([], resolver=lambda: paths, reload_interval_s=0.0, threads=1)
    assert step.refresh()
    (Path(bad.artefact_path) / "model.onnx").write_bytes(b"junk")
    paths[:] = [bad.artefact_path]
    assert not step.refresh()
    assert [(m.name, m.version) for m in step.models] == [("payment_lstm", 1)]
    assert step.load_errors == 1

    def unreachable() -> list[str]:
        raise OSError("database down")

    step.resolver = unreachable
    assert not step.refresh()
    assert len(step.models) == 1


def test_register_files__registers_what_bench_deep_writes(
    db_session: Session, tmp_path: Path, trained: tuple[DeepTraining, DeepTraining, pl.DataFrame]
) -> None:
    first, _, _ = trained
    folder = tmp_path / "deep"
    folder.mkdir()
    first.model.export_onnx(folder / "lstm-cards.onnx")
    (folder / "lstm-cards.json").write_text(json.dumps(first.metadata(), default=float))
    row = register_files(
        db_session=db_session,
        data_dir=tmp_path,
        onnx_path=folder / "lstm-cards.onnx",
        metadata_path=folder / "lstm-cards.json",
    )
    assert (row.name, row.kind, row.threshold) == ("lstm-cards", "lstm", pytest.approx(first.threshold))
    served = ServedSequenceModel.from_artefact(row.artefact_path, threads=1)
    file_model = ServedSequenceModel.load(folder / "lstm-cards.onnx", folder / "lstm-cards.json", threads=1)
    x = np.random.default_rng(0).normal(size=(5, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(served.model.predict_proba(x), file_model.model.predict_proba(x), atol=1e-6)
    (folder / "bad.json").write_text(json.dumps({"model": "lstm"}))
    with pytest.raises(ModelError, match="not the metadata of a deep model"):
        register_files(
            db_session=db_session,
            data_dir=tmp_path,
            onnx_path=folder / "bad.onnx",
            metadata_path=folder / "bad.json",
        )


def test_from_artefact__refuses_a_tabular_model(
    db_session: Session, tmp_path: Path, tier: FittedTier
) -> None:
    row = registry.register(
        db_session=db_session,
        data_dir=tmp_path,
        name="payment_gbdt",
        model=tier.members["gbdt"],
        design=tier.design,
        data_fingerprint=tier.fingerprint,
        metrics={},
        threshold=0.5,
        dataset="test",
    )
    with pytest.raises(ModelError, match="not a sequence model"):
        ServedSequenceModel.from_artefact(row.artefact_path, threads=1)
    with pytest.raises(ModelError, match="unreadable"):
        ServedSequenceModel.from_artefact(tmp_path / "missing", threads=1)
