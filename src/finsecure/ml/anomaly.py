"""Unsupervised detectors for unlabelled streams: Isolation Forest and half-space trees.

Both give a raw "normality" number ``S`` per event (Isolation Forest: total path length over its trees;
half-space trees: total mass of the regions the event falls in), low for anomalies. ``S`` is turned into a
score in ``[0, 1]`` by ``sigmoid(scale * (S - shift))`` with ``shift`` the training 1% quantile (score 0.5:
as unusual as the 1% most unusual training events) and ``scale`` such that the median training event scores
0.01. Missing values are replaced by the training median of the feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from finsecure.ml.contract import FloatArray, ModelError
from finsecure.ml.onnx_trees import Tree, tree_ensemble_onnx

__all__ = ["HalfSpaceTreesModel", "IsolationForestModel", "calibration"]

_LOG99 = math.log(99.0)
_CHUNK = 65_536


def calibration(normality: np.ndarray, *, quantile: float = 0.01) -> tuple[float, float]:
    """``(shift, scale)`` mapping raw normality to ``[0, 1]`` (see the module docstring).

    >>> shift, scale = calibration(np.arange(101.0))
    >>> round(shift, 2), round(1 / (1 + math.exp(-scale * (50 - shift))), 3)
    (1.0, 0.01)
    """
    s = np.asarray(normality, dtype=np.float64)
    shift = float(np.quantile(s, quantile))
    spread = float(np.median(s)) - shift
    scale = -_LOG99 / spread if spread > 1e-12 else -1.0
    return shift, scale


def _sigmoid(z: np.ndarray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))), dtype=np.float32)


def _check(X: np.ndarray, n_features: int) -> FloatArray:
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ModelError(f"expected shape (n, {n_features}), got {X.shape}")
    return np.ascontiguousarray(X, dtype=np.float32)


def _medians(X: FloatArray) -> np.ndarray:
    out = np.zeros(X.shape[1], dtype=np.float32)
    for j in range(X.shape[1]):
        col = X[:, j]
        col = col[~np.isnan(col)]
        if col.size:
            out[j] = np.median(col)
    return out


def _impute(X: FloatArray, fill: np.ndarray) -> FloatArray:
    return np.where(np.isnan(X), fill[None, :], X).astype(np.float32)


def _row(x: Mapping[str, float], names: tuple[str, ...]) -> FloatArray:
    return np.array([[x.get(f, np.nan) for f in names]], dtype=np.float32)


class IsolationForestModel:
    """scikit-learn's Isolation Forest with a calibrated score and an exact ONNX export."""

    name = "iforest"

    def __init__(
        self,
        domain: str,
        feature_names: tuple[str, ...],
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        seed: int = 0,
    ) -> None:
        self.domain = domain
        self.feature_names = tuple(feature_names)
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed
        self.forest_: Any = None
        self.fill_: np.ndarray | None = None
        self.shift_ = 0.0
        self.scale_ = -1.0

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> Self:
        """Fit on ``X`` (labels are ignored: the detector learns what is usual)."""
        from sklearn.ensemble import IsolationForest

        Xf = _check(X, len(self.feature_names))
        self.fill_ = _medians(Xf)
        Xi = _impute(Xf, self.fill_)
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(Xi)), random_state=self.seed
        ).fit(Xi)
        self.shift_, self.scale_ = calibration(self._normality(Xi))
        return self

    def _normality(self, Xi: FloatArray) -> np.ndarray:
        forest = self.forest_
        if forest is None:
            raise ModelError("the Isolation Forest is not fitted")
        # score_samples = -2 ** (-S / (T * c(max_samples))) with S the summed path length: invert it.
        denominator = len(forest.estimators_) * _average_path(forest.max_samples_)
        return np.asarray(-np.log2(-forest.score_samples(Xi)) * denominator, dtype=np.float64)

    def predict_proba(self, X: np.ndarray) -> FloatArray:
        if self.fill_ is None:
            raise ModelError("the Isolation Forest is not fitted")
        Xi = _impute(_check(X, len(self.feature_names)), self.fill_)
        return _sigmoid(self.scale_ * (self._normality(Xi) - self.shift_))

    def learn_one(self, x: Mapping[str, float], y: int | None = None) -> None:
        """Isolation Forest is a batch model: a single event does not change it."""

    def score_one(self, x: Mapping[str, float]) -> float:
        return float(self.predict_proba(_row(x, self.feature_names))[0])

    def export_onnx(self, path: Path) -> None:
        import onnx

        forest, fill = self.forest_, self.fill_
        if forest is None or fill is None:
            raise ModelError("the Isolation Forest is not fitted")
        trees = []
        for estimator, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
            t = estimator.tree_
            depth = np.zeros(t.node_count, dtype=np.int64)
            tree = Tree()
            for i in range(t.node_count):
                if t.children_left[i] < 0:
                    tree.add(value=float(depth[i] + _average_path(int(t.n_node_samples[i]))))
                else:
                    tree.add(feature=int(features[t.feature[i]]), threshold=float(t.threshold[i]))
                    tree.left[i], tree.right[i] = int(t.children_left[i]), int(t.children_right[i])
                    depth[t.children_left[i]] = depth[t.children_right[i]] = depth[i] + 1
            trees.append(tree)
        model = tree_ensemble_onnx(
            trees, len(self.feature_names), shift=self.shift_, scale=self.scale_, impute_nan=None
        )
        onnx.save_model(_with_imputer(model, fill), str(path))


def _with_imputer(model: Any, fill: np.ndarray) -> Any:
    """Put a per-feature NaN imputer in front of a graph made by :func:`tree_ensemble_onnx`."""
    from onnx import helper

    graph = model.graph
    for node in graph.node:
        if node.op_type == "TreeEnsembleRegressor":
            node.input[0] = "imputed"
    imputer = helper.make_node(
        "Imputer",
        ["X"],
        ["imputed"],
        domain="ai.onnx.ml",
        imputed_value_floats=[float(v) for v in fill],
        replaced_value_float=float("nan"),
    )
    graph.node.insert(0, imputer)
    return model


def _average_path(n: int) -> float:
    """Average path length of an unsuccessful search in a binary search tree of ``n`` points (c(n))."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n


class HalfSpaceTreesModel:
    """Half-space trees (Tan, Ting & Liu, 2011): an online detector with a fixed memory.

    Each tree halves a random feature's range at every level. The mass (share of the reference window's
    events) of the region an event reaches, times ``2 ** depth``, summed over trees, is high for usual events.
    ``fit`` sets the feature ranges and the reference masses from a first window; ``learn_one`` counts events
    into the latest window and, every ``window_size`` events, makes it the reference (and recalibrates).
    """

    name = "hst"

    def __init__(
        self,
        domain: str,
        feature_names: tuple[str, ...],
        *,
        n_trees: int = 25,
        height: int = 8,
        window_size: int = 1000,
        size_limit: float = 0.02,
        seed: int = 0,
    ) -> None:
        self.domain = domain
        self.feature_names = tuple(feature_names)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.size_limit = size_limit
        self.seed = seed
        self.split_feature_: np.ndarray | None = None  # (trees, internal nodes)
        self.split_value_: np.ndarray | None = None
        self.ref_mass_: np.ndarray | None = None  # (trees, all nodes), shares of the reference window
        self.fill_: np.ndarray | None = None
        self.shift_ = 0.0
        self.scale_ = -1.0
        self._latest: np.ndarray | None = None
        self._window: list[FloatArray] = []

    @property
    def _internal(self) -> int:
        return int(2**self.height - 1)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> Self:
        Xf = _check(X, len(self.feature_names))
        if len(Xf) == 0:
            raise ModelError("cannot fit half-space trees on no rows")
        self.fill_ = _medians(Xf)
        Xi = _impute(Xf, self.fill_)
        lo, hi = Xi.min(axis=0).astype(np.float64), Xi.max(axis=0).astype(np.float64)
        width = np.where(hi > lo, hi - lo, 1.0)
        rng = np.random.default_rng(self.seed)
        n_feat = Xi.shape[1]
        feats = np.zeros((self.n_trees, self._internal), dtype=np.int64)
        values = np.zeros((self.n_trees, self._internal), dtype=np.float64)
        for t in range(self.n_trees):
            # The work range: a random box around the data range, so splits do not all fall on the same spots.
            s = rng.uniform(0.0, 1.0, n_feat)
            half = 2.0 * np.maximum(s, 1.0 - s)
            node_lo = np.empty((self._internal, n_feat))
            node_hi = np.empty((self._internal, n_feat))
            node_lo[0], node_hi[0] = s - half, s + half
            for i in range(self._internal):
                f = int(rng.integers(n_feat))
                mid = (node_lo[i, f] + node_hi[i, f]) / 2.0
                feats[t, i] = f
                values[t, i] = lo[f] + mid * width[f]
                for child, (a, b) in ((2 * i + 1, (node_lo[i, f], mid)), (2 * i + 2, (mid, node_hi[i, f]))):
                    if child < self._internal:
                        node_lo[child], node_hi[child] = node_lo[i], node_hi[i]
                        node_lo[child, f], node_hi[child, f] = a, b
        self.split_feature_, self.split_value_ = feats, values
        self.ref_mass_ = self._mass(Xi)
        self._latest = np.zeros_like(self.ref_mass_)
        self._window = []
        self.shift_, self.scale_ = calibration(self._normality(Xi))
        return self

    def _paths(self, Xi: FloatArray) -> np.ndarray:
        """Node index per (tree, level, row): the path of every row down every tree."""
        if self.split_feature_ is None or self.split_value_ is None:
            raise ModelError("the half-space trees are not fitted")
        n = len(Xi)
        paths = np.zeros((self.n_trees, self.height + 1, n), dtype=np.int64)
        rows = np.arange(n)
        for t in range(self.n_trees):
            node = np.zeros(n, dtype=np.int64)
            for level in range(self.height):
                f = self.split_feature_[t, node]
                go_left = Xi[rows, f] <= self.split_value_[t, node].astype(np.float32)
                node = np.where(go_left, 2 * node + 1, 2 * node + 2)
                paths[t, level + 1] = node
        return paths

    def _mass(self, Xi: FloatArray) -> np.ndarray:
        total = 2 ** (self.height + 1) - 1
        mass = np.zeros((self.n_trees, total), dtype=np.float64)
        for start in range(0, len(Xi), _CHUNK):
            paths = self._paths(Xi[start : start + _CHUNK])
            for t in range(self.n_trees):
                mass[t] += np.bincount(paths[t].ravel(), minlength=total)
        return mass / max(len(Xi), 1)

    def _normality(self, Xi: FloatArray) -> np.ndarray:
        if self.ref_mass_ is None:
            raise ModelError("the half-space trees are not fitted")
        if len(Xi) > _CHUNK:  # bounded memory: the paths of a chunk take trees x levels x rows integers
            return np.concatenate([self._normality(Xi[i : i + _CHUNK]) for i in range(0, len(Xi), _CHUNK)])
        paths = self._paths(Xi)
        out = np.zeros(len(Xi), dtype=np.float64)
        for t in range(self.n_trees):
            done = np.zeros(len(Xi), dtype=bool)
            for level in range(self.height + 1):
                mass = self.ref_mass_[t, paths[t, level]]
                stop = ~done & ((mass < self.size_limit) | (level == self.height))
                out[stop] += mass[stop] * 2.0**level
                done |= stop
        return out

    def predict_proba(self, X: np.ndarray) -> FloatArray:
        if self.fill_ is None:
            raise ModelError("the half-space trees are not fitted")
        Xi = _impute(_check(X, len(self.feature_names)), self.fill_)
        return _sigmoid(self.scale_ * (self._normality(Xi) - self.shift_))

    def learn_one(self, x: Mapping[str, float], y: int | None = None) -> None:
        """Count the event into the latest window; a full window becomes the new reference."""
        if self.fill_ is None or self._latest is None:
            raise ModelError("fit the half-space trees on a first window before learning online")
        xi = _impute(_row(x, self.feature_names), self.fill_)
        paths = self._paths(xi)
        for t in range(self.n_trees):
            self._latest[t, paths[t, :, 0]] += 1.0
        self._window.append(xi[0])
        if len(self._window) >= self.window_size:
            self.ref_mass_ = self._latest / len(self._window)
            window = np.stack(self._window)
            self.shift_, self.scale_ = calibration(self._normality(window))
            self._latest = np.zeros_like(self._latest)
            self._window = []

    def score_one(self, x: Mapping[str, float]) -> float:
        return float(self.predict_proba(_row(x, self.feature_names))[0])

    def export_onnx(self, path: Path) -> None:
        """The trees as of the current reference window (pruned where the traversal stops)."""
        import onnx

        feats, values, ref, fill = self.split_feature_, self.split_value_, self.ref_mass_, self.fill_
        if feats is None or values is None or ref is None or fill is None:
            raise ModelError("the half-space trees are not fitted")
        trees = []
        for t in range(self.n_trees):
            tree = Tree()

            def visit(node: int, level: int, t: int = t, tree: Tree = tree) -> int:
                mass = float(ref[t, node])
                if mass < self.size_limit or level == self.height:
                    return tree.add(value=mass * 2.0**level)
                index = tree.add(feature=int(feats[t, node]), threshold=float(np.float32(values[t, node])))
                tree.left[index] = visit(2 * node + 1, level + 1)
                tree.right[index] = visit(2 * node + 2, level + 1)
                return index

            visit(0, 0)
            trees.append(tree)
        model = tree_ensemble_onnx(trees, len(self.feature_names), shift=self.shift_, scale=self.scale_)
        onnx.save_model(_with_imputer(model, fill), str(path))
