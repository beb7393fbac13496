"""Every model kind the platform knows, for the registry, the CLI and the conformance test.

A :class:`ModelSpec` builds an unfitted model for a domain and feature list. The deep tier appends its specs
here (``rank=3``: sequence input). ``tests/ml/test_contract.py`` runs the same checks on every entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finsecure.ml.anomaly import HalfSpaceTreesModel, IsolationForestModel
from finsecure.ml.contract import Model
from finsecure.ml.deep import CNNModel, LSTMModel, TransformerModel
from finsecure.ml.gbdt import GbdtModel

__all__ = ["MODELS", "ModelSpec", "get_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build one kind of model.

    Attributes
    ----------
    name
        The model kind (``Model.name``).
    build
        ``build(domain, feature_names, **params)`` returns an unfitted model.
    rank
        2 for tabular input ``(n, features)``, 3 for sequences ``(n, steps, features)``.
    supervised
        Whether ``fit`` needs labels.
    small_params
        Hyper-parameters small enough for a test to fit in about a second.
    steps
        Sequence length for ``rank == 3`` models.
    """

    name: str
    build: Callable[..., Model]
    rank: int = 2
    supervised: bool = True
    small_params: dict[str, Any] = field(default_factory=dict)
    steps: int = 16


MODELS: list[ModelSpec] = [
    ModelSpec("gbdt", GbdtModel, small_params={"n_estimators": 20, "num_leaves": 15}),
    ModelSpec("iforest", IsolationForestModel, supervised=False, small_params={"n_estimators": 20}),
    ModelSpec("hst", HalfSpaceTreesModel, supervised=False, small_params={"n_trees": 10, "window_size": 50}),
    # The deep tier: the CNN reads one record (a network flow), LSTM and Transformer an entity's history.
    ModelSpec("cnn", CNNModel, small_params={"epochs": 3, "batch_size": 128, "threads": 1}),
    ModelSpec(
        "lstm", LSTMModel, rank=3, small_params={"epochs": 3, "batch_size": 128, "threads": 1, "hidden": 16}
    ),
    ModelSpec(
        "transformer",
        TransformerModel,
        rank=3,
        small_params={"epochs": 3, "batch_size": 128, "threads": 1, "d_model": 16, "heads": 2, "ff": 32},
    ),
]
"""The registered model kinds; the deep tier appends CNN, LSTM and Transformer."""


def get_spec(name: str) -> ModelSpec:
    """The spec named ``name``.

    >>> get_spec("gbdt").rank
    2
    """
    for spec in MODELS:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown model {name!r}; known: {', '.join(s.name for s in MODELS)}")
