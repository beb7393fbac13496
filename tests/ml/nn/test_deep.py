"""The trainer, the ONNX export and the deep models' contract details (the shared contract test in
``tests/ml/test_contract.py`` covers the rest)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from finsecure.event.schemas import Domain
from finsecure.features.history import HistorySpec
from finsecure.ml.contract import ModelError, OnnxScorer
from finsecure.ml.deep import (
    CNNModel,
    DeepModel,
    LSTMModel,
    SequenceScoringStep,
    ServedSequenceModel,
    TrainConfig,
    TransformerModel,
    _average_precision,
    export_module_onnx,
    score_metrics,
    sequence_inputs,
    train_module,
    train_sequence_model,
)
from finsecure.ml.nn import SequenceCNN, SequenceLSTM, SequenceTransformer
from finsecure.pipeline.batch import Batch

STEPS, FEATURES = 5, 3
EPOCH = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def _sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bad rows (about 20%) have a large first feature in the scored event and the one before."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, STEPS, FEATURES)).astype(np.float32)
    y = (rng.random(n) < 0.2).astype(np.int64)
    X[y == 1, -2:, 0] += 3.0
    return X, y


@pytest.mark.parametrize(
    ("module", "rank"),
    [
        (SequenceCNN(FEATURES, over="features"), 2),
        (SequenceCNN(FEATURES, over="steps"), 3),
        (SequenceLSTM(FEATURES, hidden=8), 3),
        (SequenceTransformer(FEATURES, steps=STEPS, d_model=8, heads=2, layers=2), 3),
    ],
    ids=["cnn-features", "cnn-steps", "lstm", "transformer"],
)
def test_export_module_onnx__onnx_runtime_equals_torch(
    module: SequenceCNN | SequenceLSTM | SequenceTransformer, rank: int, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    X, _ = _sequences(37, seed=1)
    X[2, -1, 1] = np.nan
    module.scaler.fit(torch.from_numpy(X))
    X_in = X[:, -1, :] if rank == 2 else X
    path = tmp_path / "m.onnx"
    path.write_bytes(export_module_onnx(module.eval(), steps=STEPS, n_features=FEATURES, rank=rank))
    with torch.no_grad():
        expected = torch.sigmoid(module(torch.from_numpy(X_in[:, None, :] if rank == 2 else X_in))).numpy()
    scorer = OnnxScorer(path, intra_op_threads=1)
    np.testing.assert_allclose(scorer.predict_proba(X_in), expected, atol=1e-4)
    np.testing.assert_allclose(scorer.predict_proba(X_in[:1]), expected[:1], atol=1e-4)  # another batch size


def test_average_precision__matches_the_step_definition() -> None:
    y = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1], dtype=np.float32)
    assert _average_precision(y, scores) == pytest.approx((1.0 + 2 / 3) / 2)
    assert np.isnan(_average_precision(np.zeros(3, np.int64), scores[:3]))


@pytest.mark.slow
def test_train_module__learns_and_is_reproducible_with_a_seed() -> None:
    X, y = _sequences(300, seed=2)
    X_val, y_val = _sequences(100, seed=3)
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, seed=7, threads=1)
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        module = SequenceLSTM(FEATURES, hidden=8)
        report = train_module(module, X, y, X_val, y_val, config)
        with torch.no_grad():
            outputs.append(module(torch.from_numpy(X_val)).numpy())
    assert report.best_val_average_precision > 0.8
    assert 1 <= report.best_epoch <= report.epochs_run <= 3
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_train_module__stops_early_and_keeps_the_best_epoch() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, STEPS, FEATURES)).astype(np.float32)
    y = rng.integers(0, 2, 100)  # noise: validation cannot keep improving
    X_val = rng.normal(size=(100, STEPS, FEATURES)).astype(np.float32)
    y_val = rng.integers(0, 2, 100)
    module = SequenceLSTM(FEATURES, hidden=4)
    config = TrainConfig(epochs=30, patience=2, batch_size=50, lr=0.05, threads=1)
    report = train_module(module, X, y, X_val, y_val, config)
    assert report.epochs_run < 30
    assert report.epochs_run == report.best_epoch + 2
    best = max(h["val_ap"] for h in report.history)
    assert report.best_val_average_precision == best
    with torch.no_grad():
        kept = module(torch.from_numpy(X_val)).numpy()
    assert _average_precision(y_val, kept) == pytest.approx(best, abs=1e-6)


def test_train_module__refuses_a_network_without_a_scaler() -> None:
    X, y = _sequences(20, seed=5)
    with pytest.raises(ModelError, match="no feature scaler"):
        train_module(torch.nn.Linear(FEATURES, 1), X, y, X, y)


@pytest.fixture(scope="module")
def lstm() -> LSTMModel:
    X, y = _sequences(400, seed=6)
    model = LSTMModel("payment", ("amount", "km", "hour"), epochs=2, hidden=8, batch_size=64, threads=1)
    return model.fit(X, y)


def test_fit__carves_the_most_recent_rows_for_validation(lstm: LSTMModel) -> None:
    assert lstm.report_.epochs_run == 2
    assert lstm.rank_ == 3
    assert lstm.steps_ == STEPS
    assert lstm.predict_proba(np.zeros((2, STEPS, FEATURES), np.float32)).shape == (2,)


def test_score_one__scores_after_the_recorded_events(lstm: LSTMModel) -> None:
    X, _ = _sequences(1, seed=8)
    model = LSTMModel.from_onnx(lstm.onnx_, feature_names=lstm.feature_names, domain="payment")
    events = [dict(zip(model.feature_names, row.tolist(), strict=True)) for row in X[0]]
    first = model.score_one(events[0])
    alone = np.zeros((1, STEPS, FEATURES), np.float32)
    alone[0, -1] = X[0, 0]
    assert first == pytest.approx(float(model.predict_proba(alone)[0]), abs=1e-6)
    for event in events[:-1]:
        model.learn_one(event)
    assert model.score_one(events[-1]) == pytest.approx(float(model.predict_proba(X)[0]), abs=1e-6)
    model.learn_one(events[-1])
    assert len(model._window) == STEPS - 1  # only the last steps - 1 are kept


def test_score_one__a_missing_feature_counts_as_missing(lstm: LSTMModel) -> None:
    row = np.full((1, STEPS, FEATURES), 0.0, np.float32)
    row[0, -1, 1] = np.nan
    model = LSTMModel.from_onnx(lstm.onnx_, feature_names=lstm.feature_names, domain="payment")
    assert model.score_one({"amount": 0.0, "hour": 0.0}) == pytest.approx(float(lstm.predict_proba(row)[0]))


def test_from_onnx__refuses_a_graph_of_another_width(lstm: LSTMModel) -> None:
    with pytest.raises(ModelError, match="does not match"):
        LSTMModel.from_onnx(lstm.onnx_, feature_names=("a", "b"), domain="payment")
    with pytest.raises(ModelError, match="cannot load"):
        LSTMModel.from_onnx(b"junk", feature_names=lstm.feature_names, domain="payment")


def test_predict_proba__refuses_a_sequence_of_another_length(lstm: LSTMModel) -> None:
    with pytest.raises(ModelError, match="steps"):
        lstm.predict_proba(np.zeros((2, STEPS + 1, FEATURES), np.float32))


def test_fit__needs_labels_and_a_known_shape() -> None:
    with pytest.raises(ModelError, match="needs labels"):
        CNNModel().fit(np.zeros((4, 3), np.float32), None)
    with pytest.raises(ModelError, match="2-D or 3-D"):
        TransformerModel().fit(np.zeros(4, np.float32), np.zeros(4))
    with pytest.raises(ModelError, match="feature names"):
        LSTMModel(feature_names=("a",)).fit(np.zeros((4, 2, 3), np.float32), np.zeros(4))


def test_import__scores_without_pytorch(lstm: LSTMModel, tmp_path: Path) -> None:
    """Serving needs no PyTorch: the module imports and a model loads and scores with torch blocked."""
    (tmp_path / "m.onnx").write_bytes(lstm.onnx_)
    expected = float(lstm.predict_proba(np.ones((1, STEPS, FEATURES), np.float32))[0])
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from finsecure.ml.deep import LSTMModel\n"
        f"m = LSTMModel.from_onnx(Path({str(tmp_path / 'm.onnx')!r}).read_bytes(), "
        f"feature_names={lstm.feature_names!r}, domain='payment')\n"
        f"print(m.predict_proba(np.ones((1, {STEPS}, {FEATURES}), np.float32))[0])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert float(out.stdout) == pytest.approx(expected, abs=1e-6)


def test_build_module__each_model_builds_its_network() -> None:
    assert isinstance(CNNModel().build_module(4, 1, 2), SequenceCNN)
    assert CNNModel().build_module(4, 8, 3).over == "steps"
    assert isinstance(LSTMModel(hidden=4).build_module(4, 8, 3), SequenceLSTM)
    assert isinstance(TransformerModel(d_model=8, heads=2).build_module(4, 8, 3), SequenceTransformer)
    with pytest.raises(NotImplementedError):
        DeepModel().build_module(4, 8, 3)


def _payments(n: int = 480, cards: int = 24) -> pl.DataFrame:
    """``n`` payments of ``cards`` cards in time order; big amounts are bad; the last cards also use a
    merchant category that no other card uses."""
    rng = np.random.default_rng(9)
    card = np.arange(n) % cards
    amount = rng.exponential(40.0, n)
    amount[rng.random(n) < 0.15] += 400.0
    category = np.where(card >= cards - 4, "only_in_test", np.where(card % 2 == 0, "grocery_pos", "travel"))
    return pl.DataFrame(
        {
            "ts": [EPOCH + dt.timedelta(minutes=7 * i) for i in range(n)],
            "card_id": [f"c{c}" for c in card],
            "amount": amount,
            "merchant_category": category,
            "label": (amount > 300).astype(np.int8),
        }
    )


@pytest.mark.slow
def test_train_sequence_model__fits_on_train_rows_and_scores_every_split() -> None:
    frame = _payments()
    card = frame["card_id"].str.slice(1).cast(pl.Int64).to_numpy()
    splits = {"train": card < 16, "validation": (card >= 16) & (card < 20), "holdout_cards": card >= 20}
    spec = HistorySpec(key="card_id", features=("amount", "time__hour"), steps=4, log_features=("amount",))
    result = train_sequence_model(
        "lstm", frame, splits, domain="payment", history=spec, epochs=3, hidden=8, threads=1, lr=1e-2
    )
    assert result.model.feature_names == spec.feature_names
    assert set(result.metrics) == {"validation", "holdout_cards"}
    holdout = result.metrics["holdout_cards"]
    assert holdout["n"] == int(splits["holdout_cards"].sum())
    assert holdout["roc_auc"] > 0.9
    assert 0.0 <= result.threshold <= 1.0
    # Vocabularies come from training rows only: the test cards' own category is unknown to the design.
    assert "only_in_test" not in result.designs["payment"].vocab["merchant_category"]
    meta = json.loads(json.dumps(result.metadata()))
    assert meta["history"]["steps"] == 4
    assert meta["model"] == "lstm"


def test_train_sequence_model__tabular_cnn_and_bad_splits() -> None:
    frame = _payments(240)
    rows = frame.height
    early = np.arange(rows) < 200
    result = train_sequence_model(
        "cnn", frame, {"train": early, "later": ~early}, domain="payment", epochs=1, threads=1
    )
    assert result.model.rank_ == 2
    with pytest.raises(ModelError, match="tabular"):
        ServedSequenceModel.from_training("cnn", result)
    assert "validation" in result.metrics  # carved from the end of the training rows
    with pytest.raises(ModelError, match="unknown deep model"):
        train_sequence_model("gru", frame, {"train": early}, domain="payment")
    with pytest.raises(ModelError, match="rows"):
        train_sequence_model("cnn", frame, {"train": early[:10]}, domain="payment")
    with pytest.raises(ModelError, match="'train'"):
        train_sequence_model("cnn", frame, {"test": early}, domain="payment")


def test_sequence_inputs__one_history_across_domains() -> None:
    spec = HistorySpec(
        key="user_id", features=("amount",), steps=3, domains=("auth", "payment"), domain_flags=True
    )
    auth = pl.DataFrame({"ts": [EPOCH], "user_id": ["u1"]})
    pay = pl.DataFrame({"ts": [EPOCH + dt.timedelta(minutes=1)], "user_id": ["u1"], "amount": [12.0]})
    out = sequence_inputs([("auth", auth), ("payment", pay)], spec, {})
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[1, 1], [np.nan, 1.0, 0.0])  # the sign-in: no amount, auth flag
    np.testing.assert_array_equal(out[1, 2], [12.0, 0.0, 1.0])


def test_score_metrics__known_values() -> None:
    metrics = score_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], threshold=0.5)
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["recall_at_1pct_fpr"] == pytest.approx(0.5)
    assert metrics["positives"] == 2
    assert np.isnan(score_metrics([0, 0], [0.1, 0.2])["roc_auc"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServedSequenceModel, pl.DataFrame, Path]:
    """A small LSTM trained on payments, written to disk and loaded back as the step serves it."""
    frame = _payments(320, cards=16)
    card = frame["card_id"].str.slice(1).cast(pl.Int64).to_numpy()
    spec = HistorySpec(key="card_id", features=("amount", "cat__merchant_category"), steps=4)
    result = train_sequence_model(
        "lstm", frame, {"train": card < 12}, domain="payment", history=spec, epochs=1, hidden=8, threads=1
    )
    folder = tmp_path_factory.mktemp("served")
    result.model.export_onnx(folder / "lstm-cards.onnx")
    (folder / "lstm-cards.json").write_text(json.dumps(result.metadata()))
    model = ServedSequenceModel.load(folder / "lstm-cards.onnx", folder / "lstm-cards.json", threads=1)
    return model, frame, folder


def test_sequence_scoring_step__scores_like_the_training_inputs_across_batches(
    served: tuple[ServedSequenceModel, pl.DataFrame, Path],
) -> None:
    model, frame, _ = served
    expected = model.model.predict_proba(sequence_inputs(frame, model.spec, model.designs))
    step = SequenceScoringStep([model])
    first = step.process(Batch(Domain.payment, frame[:100], "test"))
    restored = SequenceScoringStep([model])
    restored.restore(step.snapshot())  # a restart between two batches changes nothing
    second = restored.process(Batch(Domain.payment, frame[100:], "test"))
    got = np.concatenate(
        [first.frame["score__lstm-cards"].to_numpy(), second.frame["score__lstm-cards"].to_numpy()]
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)
    other = Batch(Domain.auth, pl.DataFrame({"ts": [EPOCH], "user_id": ["u"]}), "test")
    assert restored.process(other) is other  # not a domain this model reads


def test_sequence_scoring_step__cascade_scores_only_the_uncertain_band(
    served: tuple[ServedSequenceModel, pl.DataFrame, Path],
) -> None:
    model, frame, _ = served
    fast = np.linspace(0.0, 1.0, frame.height, dtype=np.float32)
    fast[0] = np.nan  # not scored by the fast tier: the deep tier scores it
    step = SequenceScoringStep([model], band=(0.25, 0.75))
    scored = frame.with_columns(score=pl.Series(fast).fill_nan(None))
    deep = step.process(Batch(Domain.payment, scored, "test")).frame["score__lstm-cards"]
    band = ((fast >= 0.25) & (fast < 0.75)) | np.isnan(fast)
    assert deep.is_not_null().to_numpy().tolist() == band.tolist()
    assert step.routed == int(band.sum())
    assert step.events == frame.height
    # Routed rows score as when every row is scored: the histories saw the unrouted rows too.
    full = (
        SequenceScoringStep([model]).process(Batch(Domain.payment, frame, "test")).frame["score__lstm-cards"]
    )
    np.testing.assert_allclose(deep.to_numpy()[band], full.to_numpy()[band], atol=1e-6)


def test_served_sequence_model__refuses_bad_metadata(
    served: tuple[ServedSequenceModel, pl.DataFrame, Path], tmp_path: Path
) -> None:
    model, _, _ = served
    (tmp_path / "m.onnx").write_bytes(model.model.onnx_)
    (tmp_path / "m.json").write_text(json.dumps({"model": "lstm", "history": None}))
    with pytest.raises(ModelError, match="not the metadata of a sequence model"):
        ServedSequenceModel.load(tmp_path / "m.onnx", tmp_path / "m.json")
    good = {"model": "lstm", "domain": "payment", "threshold": 0.5, "designs": {}}
    (tmp_path / "m.json").write_text(json.dumps({**good, "history": json.loads(model.spec.fingerprint())}))
    with pytest.raises(ModelError, match="cannot read"):
        ServedSequenceModel.load(tmp_path / "missing.onnx", tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({**good, "history": {"key": "card_id", "features": ["a"]}}))
    with pytest.raises(ModelError, match="does not match"):
        ServedSequenceModel.load(tmp_path / "m.onnx", tmp_path / "m.json")


def test_from_folder__serves_the_sequence_models_written_there(
    served: tuple[ServedSequenceModel, pl.DataFrame, Path], tmp_path: Path
) -> None:
    step = SequenceScoringStep.from_folder(served[2], threads=1)
    assert step is not None
    assert [m.name for m in step.models] == ["lstm-cards"]
    (tmp_path / "broken.onnx").write_bytes(b"junk")
    (tmp_path / "broken.json").write_text(json.dumps({"history": {"key": "k", "features": ["a"]}}))
    (tmp_path / "tabular.json").write_text(json.dumps({"history": None}))
    (tmp_path / "tabular.onnx").write_bytes(b"")
    assert SequenceScoringStep.from_folder(tmp_path) is None  # the broken one is refused, not raised


def test_default_steps__the_deep_tier_runs_after_the_fast_tier(
    served: tuple[ServedSequenceModel, pl.DataFrame, Path],
) -> None:
    from finsecure.platform import default_steps

    fast, deep = SequenceScoringStep([]), SequenceScoringStep([served[0]])
    steps = default_steps(scoring=fast, deep=deep, rules=[])
    assert steps.index(fast) + 1 == steps.index(deep) < len(steps) - 1
