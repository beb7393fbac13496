"""The fast tier: a LightGBM classifier on tabular + window features, exported to ONNX by our own converter.

Missing features stay NaN: LightGBM learns a default direction per split and the ONNX graph sends NaN the
same way, so the ONNX score equals the native one (float32 inputs, thresholds rounded down to float32).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from finsecure.ml.contract import FloatArray, ModelError
from finsecure.ml.onnx_trees import Tree, tree_ensemble_onnx

__all__ = ["GbdtModel", "top_contributions"]


def _as_matrix(X: np.ndarray, n_features: int) -> FloatArray:
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ModelError(f"expected shape (n, {n_features}), got {X.shape}")
    return np.ascontiguousarray(X, dtype=np.float32)


class GbdtModel:
    """LightGBM binary classifier following :class:`finsecure.ml.contract.Model`.

    Parameters
    ----------
    domain, feature_names
        What it scores.
    n_estimators, learning_rate, num_leaves, min_child_samples
        LightGBM hyper-parameters (defaults: 100 trees of 31 leaves, the size the pipeline budget assumes).
    scale_pos_weight
        Weight of positive rows; ``None`` leaves the classes as they are (probabilities stay calibrated).
    seed
        Makes training reproducible (also forces deterministic single-threaded LightGBM).
    """

    name = "gbdt"

    def __init__(
        self,
        domain: str,
        feature_names: tuple[str, ...],
        *,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        scale_pos_weight: float | None = None,
        seed: int = 0,
        threads: int = 2,
    ) -> None:
        self.domain = domain
        self.feature_names = tuple(feature_names)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.scale_pos_weight = scale_pos_weight
        self.seed = seed
        self.threads = threads
        self.booster_: Any = None
        self._pending: list[tuple[list[float], int]] = []

    # --- batch -------------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "seed": self.seed,
            "deterministic": True,
            "num_threads": self.threads,
            "verbosity": -1,
            "use_missing": True,
            "zero_as_missing": False,
        }
        if self.scale_pos_weight is not None:
            params["scale_pos_weight"] = self.scale_pos_weight
        return params

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> Self:
        """Train; with a validation set, stop when its log-loss has not improved for 20 rounds."""
        import lightgbm as lgb

        if y is None:
            raise ModelError("the GBDT model is supervised: y is required")
        Xf = _as_matrix(X, len(self.feature_names))
        labels = np.asarray(y, dtype=np.int32)
        if len(np.unique(labels)) < 2:
            raise ModelError("the training labels hold a single class")
        train = lgb.Dataset(Xf, label=labels, feature_name=list(_safe_names(self.feature_names)))
        callbacks: list[Any] = []
        valid_sets: list[Any] = []
        if X_val is not None and y_val is not None and len(np.unique(y_val)) > 1:
            valid_sets = [lgb.Dataset(_as_matrix(X_val, Xf.shape[1]), label=y_val, reference=train)]
            callbacks = [lgb.early_stopping(20, verbose=False)]
        self.booster_ = lgb.train(
            self._params(),
            train,
            num_boost_round=self.n_estimators,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
        return self

    def _booster(self) -> Any:
        if self.booster_ is None:
            raise ModelError("the GBDT model is not fitted")
        return self.booster_

    def predict_proba(self, X: np.ndarray) -> FloatArray:
        """P(bad) per row, ``float32``."""
        Xf = _as_matrix(X, len(self.feature_names))
        raw = self._booster().predict(Xf.astype(np.float64), num_iteration=self.best_iteration)
        return np.asarray(raw, dtype=np.float32)

    @property
    def best_iteration(self) -> int | None:
        booster = self._booster()
        best = int(getattr(booster, "best_iteration", 0) or 0)
        return best if best > 0 else None

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """LightGBM ``pred_contrib``: per row, each feature's push on the log-odds (last column: the bias)."""
        Xf = _as_matrix(X, len(self.feature_names)).astype(np.float64)
        out = self._booster().predict(
            Xf, pred_contrib=True, num_iteration=self.best_iteration, num_threads=self.threads
        )
        return np.asarray(out, dtype=np.float64)

    # --- online ------------------------------------------------------------------------------------------
    def learn_one(self, x: Mapping[str, float], y: int | None = None) -> None:
        """Keep labelled events for the next :meth:`refit_pending` (boosted trees do not learn one by one)."""
        if y is not None:
            self._pending.append(([float(x.get(f, np.nan)) for f in self.feature_names], int(y)))

    def refit_pending(self) -> None:
        """Continue boosting on the events kept by :meth:`learn_one` (10 more trees), then forget them."""
        import lightgbm as lgb

        if not self._pending:
            return
        X = np.array([row for row, _ in self._pending], dtype=np.float32)
        y = np.array([label for _, label in self._pending], dtype=np.int32)
        train = lgb.Dataset(X, label=y, feature_name=list(_safe_names(self.feature_names)))
        self.booster_ = lgb.train(self._params(), train, num_boost_round=10, init_model=self._booster())
        self._pending.clear()

    def score_one(self, x: Mapping[str, float]) -> float:
        row = np.array([[x.get(f, np.nan) for f in self.feature_names]], dtype=np.float32)
        return float(self.predict_proba(row)[0])

    # --- export ------------------------------------------------------------------------------------------
    def to_onnx(self) -> Any:
        """The fitted model as an ``onnx.ModelProto``."""
        dump = self._booster().dump_model(num_iteration=self.best_iteration)
        trees = [_convert_tree(info["tree_structure"]) for info in dump["tree_info"]]
        return tree_ensemble_onnx(trees, len(self.feature_names))

    def export_onnx(self, path: Path) -> None:
        import onnx

        onnx.save_model(self.to_onnx(), str(path))

    def save_native(self, path: Path) -> None:
        """LightGBM's own text format (used to explain scores with ``pred_contrib`` when serving)."""
        self._booster().save_model(str(path), num_iteration=self.best_iteration)

    @classmethod
    def load_native(cls, path: Path, *, domain: str, feature_names: tuple[str, ...]) -> GbdtModel:
        import lightgbm as lgb

        model = cls(domain, feature_names, threads=1)  # explaining a few flagged rows: one thread is enough
        try:
            model.booster_ = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            raise ModelError(f"cannot load LightGBM model {path}: {exc}") from exc
        if model.booster_.num_feature() != len(feature_names):
            found = model.booster_.num_feature()
            raise ModelError(f"{path}: {found} features, expected {len(feature_names)}")
        return model


def _safe_names(names: tuple[str, ...]) -> list[str]:
    # LightGBM refuses some characters in feature names; positions are what matter.
    return [f"f{i}" for i in range(len(names))]


def _convert_tree(root: dict[str, Any]) -> Tree:
    tree = Tree()

    def visit(node: dict[str, Any]) -> int:
        if "leaf_value" in node or "split_feature" not in node:
            return tree.add(value=float(node.get("leaf_value", 0.0)))
        if node.get("decision_type", "<=") != "<=":
            raise ModelError("categorical splits are not supported in ONNX export")
        threshold = float(node["threshold"])
        missing = node.get("missing_type", "None")
        if missing == "NaN":
            nan_left = bool(node.get("default_left", True))
        elif missing == "Zero":
            raise ModelError("zero-as-missing splits are not supported in ONNX export")
        else:  # LightGBM turns NaN into 0 when the feature had no missing values in training
            nan_left = threshold >= 0.0
        index = tree.add(feature=int(node["split_feature"]), threshold=threshold, nan_left=nan_left)
        tree.left[index] = visit(node["left_child"])
        tree.right[index] = visit(node["right_child"])
        return index

    visit(root)
    return tree


def top_contributions(
    contrib_row: np.ndarray, feature_names: tuple[str, ...], *, k: int = 3
) -> list[tuple[str, float]]:
    """The ``k`` features that pushed this score up the most, with their push (log-odds), largest first.

    >>> top_contributions(np.array([0.5, -1.0, 2.0, 0.1]), ("a", "b", "c"), k=2)
    [('c', 2.0), ('a', 0.5)]
    """
    values = np.asarray(contrib_row[: len(feature_names)], dtype=np.float64)
    order = np.argsort(-values, kind="stable")[:k]
    return [(feature_names[i], float(values[i])) for i in order if values[i] > 0]
