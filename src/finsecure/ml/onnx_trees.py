"""Build ONNX tree-ensemble graphs directly with ``onnx.helper`` (no converter package needed at run time).

Every tree model here (LightGBM, Isolation Forest, half-space trees) is written as one
``ai.onnx.ml.TreeEnsembleRegressor`` summing leaf values, optionally preceded by a NaN imputer and followed by
an affine map and a sigmoid, so ``score = sigmoid(scale * (sum_of_leaves + base - shift))``. The single
output is named ``score`` (shape ``(n, 1)``), which :class:`finsecure.ml.contract.OnnxScorer` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["Tree", "floor_f32", "tree_ensemble_onnx"]

_ML_DOMAIN = "ai.onnx.ml"


def floor_f32(value: float) -> float:
    """The largest float32 not above ``value``.

    For a float32 ``x``, ``x <= value`` exactly when ``x <= floor_f32(value)``, so a float32 ONNX threshold
    splits float32 inputs exactly like the float64 one.

    >>> floor_f32(0.1) <= 0.1 < float(np.nextafter(np.float32(floor_f32(0.1)), np.float32(1)))
    True
    """
    top = float(np.finfo(np.float32).max)
    if value >= top:
        return top
    if value <= -top:
        return -top
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


@dataclass
class Tree:
    """One binary tree in flat form; node ``i`` is a leaf when ``feature[i] < 0``.

    Internal nodes send ``x[feature] <= threshold`` (and NaN when ``nan_left``) to ``left``.
    """

    feature: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    right: list[int] = field(default_factory=list)
    nan_left: list[bool] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def add(
        self, *, feature: int = -1, threshold: float = 0.0, nan_left: bool = True, value: float = 0.0
    ) -> int:
        """Append a node (children set later with :attr:`left`/:attr:`right`); return its id."""
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.left.append(-1)
        self.right.append(-1)
        self.nan_left.append(nan_left)
        self.value.append(value)
        return len(self.feature) - 1


def tree_ensemble_onnx(
    trees: list[Tree],
    n_features: int,
    *,
    base: float = 0.0,
    shift: float = 0.0,
    scale: float = 1.0,
    sigmoid: bool = True,
    impute_nan: float | None = None,
    input_name: str = "X",
) -> onnx.ModelProto:
    """An ONNX model computing ``sigmoid(scale * (sum of the trees' leaf values + base - shift))``.

    ``impute_nan`` replaces NaN inputs by that value first (for models that cannot take NaN).
    """
    attrs: dict[str, Any] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for t, tree in enumerate(trees):
        for i, feat in enumerate(tree.feature):
            leaf = feat < 0
            attrs["nodes_treeids"].append(t)
            attrs["nodes_nodeids"].append(i)
            attrs["nodes_featureids"].append(0 if leaf else feat)
            attrs["nodes_values"].append(0.0 if leaf else floor_f32(tree.threshold[i]))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(0 if leaf else tree.left[i])
            attrs["nodes_falsenodeids"].append(0 if leaf else tree.right[i])
            attrs["nodes_missing_value_tracks_true"].append(int(tree.nan_left[i] and not leaf))
            if leaf:
                attrs["target_treeids"].append(t)
                attrs["target_nodeids"].append(i)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(tree.value[i]))
    nodes = []
    current = input_name
    if impute_nan is not None:
        nodes.append(
            helper.make_node(
                "Imputer",
                [current],
                ["imputed"],
                domain=_ML_DOMAIN,
                imputed_value_floats=[float(impute_nan)],
                replaced_value_float=float("nan"),
            )
        )
        current = "imputed"
    raw_name = "raw" if (sigmoid or scale != 1.0 or shift != 0.0) else "score"
    nodes.append(
        helper.make_node(
            "TreeEnsembleRegressor",
            [current],
            [raw_name],
            domain=_ML_DOMAIN,
            n_targets=1,
            aggregate_function="SUM",
            base_values=[float(base - shift)],
            post_transform="NONE",
            **attrs,
        )
    )
    initializers = []
    if raw_name == "raw":
        initializers.append(helper.make_tensor("scale", TensorProto.FLOAT, [], [float(scale)]))
        nodes.append(helper.make_node("Mul", ["raw", "scale"], ["scaled" if sigmoid else "score"]))
        if sigmoid:
            nodes.append(helper.make_node("Sigmoid", ["scaled"], ["score"]))
    graph = helper.make_graph(
        nodes,
        "tree_ensemble",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(_ML_DOMAIN, 3)],
        producer_name="finsecure",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
