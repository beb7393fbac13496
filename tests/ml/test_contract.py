"""One conformance test for every model kind in :data:`finsecure.ml.catalog.MODELS`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finsecure.ml.catalog import MODELS, ModelSpec
from finsecure.ml.contract import Model, ModelError, OnnxScorer

N_FEATURES = 6
NAMES = tuple(f"feature_{i}" for i in range(N_FEATURES))


def _data(spec: ModelSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows where the bad class (10%) sits far out on the first two features; 5% missing values."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(np.int32)
    shape = (n, spec.steps, N_FEATURES) if spec.rank == 3 else (n, N_FEATURES)
    X = rng.normal(size=shape).astype(np.float32)
    last = X[:, -1, :] if spec.rank == 3 else X
    last[y == 1, :2] += 4.0
    mask = rng.random(shape) < 0.05
    mask[..., :2] = False
    X[mask] = np.nan
    return X, y


def _build(spec: ModelSpec) -> Model:
    return spec.build("payment", NAMES, **spec.small_params)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_model__follows_the_contract(spec: ModelSpec, tmp_path: Path) -> None:
    X, y = _data(spec, 1500, seed=1)
    X_val, y_val = _data(spec, 300, seed=2)
    X_test, y_test = _data(spec, 600, seed=3)
    model = _build(spec)
    assert isinstance(model, Model)
    assert model.name == spec.name
    assert model.feature_names == NAMES
    fitted = model.fit(X, y if spec.supervised else None, X_val=X_val, y_val=y_val)
    assert fitted is model
    p = model.predict_proba(X_test)
    assert p.dtype == np.float32
    assert p.shape == (len(X_test),)
    assert np.all((p >= 0) & (p <= 1))
    assert _auc(y_test, p) > 0.8, "the far-out rows must score higher than the usual ones"
    path = tmp_path / "model.onnx"
    model.export_onnx(path)
    scorer = OnnxScorer(path, intra_op_threads=1)
    assert scorer.rank == spec.rank
    np.testing.assert_allclose(scorer.predict_proba(X_test), p, atol=1e-4 if spec.rank == 3 else 1e-5)


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_model__scores_one_event_like_a_batch(spec: ModelSpec) -> None:
    X, y = _data(spec, 800, seed=4)
    model = _build(spec).fit(X, y if spec.supervised else None)
    if spec.rank == 2:
        event = dict(zip(NAMES, X[0].tolist(), strict=True))
        assert model.score_one(event) == pytest.approx(float(model.predict_proba(X[:1])[0]), abs=1e-6)
    for row in X[:60, -1, :] if spec.rank == 3 else X[:60]:
        event = dict(zip(NAMES, row.tolist(), strict=True))
        model.learn_one(event, 0)
        assert 0.0 <= model.score_one(event) <= 1.0


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_model__refuses_wrong_shapes_and_unfitted_use(spec: ModelSpec) -> None:
    model = _build(spec)
    X, _ = _data(spec, 10, seed=5)
    with pytest.raises(ModelError):
        model.predict_proba(X)
    bad = np.zeros((10, N_FEATURES + 1) if spec.rank == 2 else (10, spec.steps, N_FEATURES + 1), np.float32)
    X_fit, y_fit = _data(spec, 400, seed=6)
    model.fit(X_fit, y_fit if spec.supervised else None)
    with pytest.raises(ModelError):
        model.predict_proba(bad)


def test_onnx_scorer__refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        OnnxScorer(path)


def test_onnx_scorer__refuses_the_wrong_rank(tmp_path: Path) -> None:
    spec = MODELS[0]
    X, y = _data(spec, 400, seed=7)
    model = _build(spec).fit(X, y)
    model.export_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="2-D"):
        OnnxScorer(tmp_path / "m.onnx").predict_proba(X[None])
