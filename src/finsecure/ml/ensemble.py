"""Calibrated weighted fusion of several models' scores (the ensemble), fitted on a validation split only.

The ensemble is a model like any other whose inputs are the member models' score columns
(``score__<member>``): ``P(bad) = sigmoid(b + sum_i w_i * logit(s_i))``, a logistic regression on the
members' log-odds. Its weights say how much each member is trusted; its output is calibrated on the
validation labels. Members with a non-positive weight are reported as not voting.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Self

import numpy as np

from finsecure.ml.contract import FloatArray, ModelError

__all__ = ["FusionModel"]

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.5), _EPS, 1 - _EPS)
    return np.asarray(np.log(q / (1 - q)))


class FusionModel:
    """Logistic-regression fusion of member scores (see the module docstring).

    Parameters
    ----------
    domain
        The members' domain.
    feature_names
        The members' score columns, e.g. ``("score__payment_gbdt", "score__payment_iforest")``.
    regularisation
        Inverse L2 strength of the logistic regression (scikit-learn's ``C``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random(400) < 0.3).astype(int)
    >>> good = np.clip(y * 0.8 + rng.random(400) * 0.2, 0, 1)
    >>> noise = rng.random(400)
    >>> fusion = FusionModel("payment", ("score__good", "score__noise")).fit(np.c_[good, noise], y)
    >>> bool(fusion.weights_[0] > 5 * abs(fusion.weights_[1]))
    True
    """

    name = "ensemble"

    def __init__(self, domain: str, feature_names: tuple[str, ...], *, regularisation: float = 1.0) -> None:
        self.domain = domain
        self.feature_names = tuple(feature_names)
        self.regularisation = regularisation
        self.weights_: np.ndarray | None = None
        self.bias_ = 0.0

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> Self:
        """Fit on member scores ``X`` (n, members) of a VALIDATION split with its labels ``y``."""
        from sklearn.linear_model import LogisticRegression

        if y is None:
            raise ModelError("the ensemble is fitted on labelled validation scores")
        Z = _logit(self._check(X))
        labels = np.asarray(y, dtype=np.int32)
        if len(np.unique(labels)) < 2:
            raise ModelError("the validation labels hold a single class")
        lr = LogisticRegression(C=self.regularisation, max_iter=1000).fit(Z, labels)
        self.weights_ = np.asarray(lr.coef_[0], dtype=np.float64)
        self.bias_ = float(lr.intercept_[0])
        return self

    def _check(self, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ModelError(f"expected shape (n, {len(self.feature_names)}), got {X.shape}")
        return X

    def _weights(self) -> np.ndarray:
        if self.weights_ is None:
            raise ModelError("the ensemble is not fitted")
        return self.weights_

    def predict_proba(self, X: np.ndarray) -> FloatArray:
        w = self._weights()
        z = _logit(np.asarray(self._check(X), dtype=np.float32)) @ w + self.bias_
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))), dtype=np.float32)

    def voters(self) -> dict[str, float]:
        """Each member's weight (members with weight 0 or below do not vote)."""
        return {n: float(w) for n, w in zip(self.feature_names, self._weights(), strict=True)}

    def learn_one(self, x: Mapping[str, float], y: int | None = None) -> None:
        """The fusion is refitted on validation data, never one event at a time."""

    def score_one(self, x: Mapping[str, float]) -> float:
        row = np.array([[x.get(f, np.nan) for f in self.feature_names]], dtype=np.float32)
        return float(self.predict_proba(row)[0])

    def export_onnx(self, path: Path) -> None:
        import onnx
        from onnx import TensorProto, helper

        w = self._weights()
        m = len(self.feature_names)
        nodes = [
            helper.make_node("IsNaN", ["X"], ["nan"]),
            helper.make_node("Where", ["nan", "half", "X"], ["filled"]),
            helper.make_node("Clip", ["filled", "lo", "hi"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Div", ["p", "q"], ["odds"]),
            helper.make_node("Log", ["odds"], ["z"]),
            helper.make_node("MatMul", ["z", "w"], ["wz"]),
            helper.make_node("Add", ["wz", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ]
        inits = [
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("lo", TensorProto.FLOAT, [], [_EPS]),
            helper.make_tensor("hi", TensorProto.FLOAT, [], [1 - _EPS]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("w", TensorProto.FLOAT, [m, 1], [float(v) for v in w]),
            helper.make_tensor("b", TensorProto.FLOAT, [1], [self.bias_]),
        ]
        graph = helper.make_graph(
            nodes,
            "fusion",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", m])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
            initializer=inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="finsecure"
        )
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
