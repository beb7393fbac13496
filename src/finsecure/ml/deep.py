"""The deep tier: one trainer for every network in :mod:`finsecure.ml.nn`, ONNX export, and the models
that wrap them in the contract of :mod:`finsecure.ml.contract`.

Training needs PyTorch (the ``train`` extra); scoring does not. Every fitted model holds its network as
an ONNX graph and scores with ONNX Runtime, so ``import finsecure.ml.deep`` and
:meth:`DeepModel.predict_proba` work on a machine without PyTorch (a model is then loaded with
:meth:`DeepModel.from_onnx`). PyTorch is imported inside the functions that train or export.

The trainer (:func:`train_module`)
----------------------------------
* Seeded (weights, shuffling, dropout), on ``threads`` CPU threads (two by default; on a machine whose
  cores are oversubscribed one thread trains several times faster: PyTorch's threads wait on each other).
* Class weighting: the positive class's loss is weighted ``negatives / positives`` (capped), so a rare
  fraud class is not ignored.
* Early stopping on the validation split: average precision (the metric that matters when positives are
  rare) is checked after every epoch; training stops after ``patience`` epochs without improvement and
  the best epoch's weights are kept. Validation rows are never trained on.
* The input scaler inside every network is set from the training rows only.

ONNX graphs have one float input ``x`` (``(n, features)`` for a tabular model, ``(n, steps, features)``
for a sequence model; the batch axis is dynamic) and one output ``score`` of shape ``(n,)``: P(bad).

Real data and serving
---------------------
:func:`train_sequence_model` trains on a featured stream (the feature step's output) with row masks for
the splits, building each event's vector from the model design (:class:`~finsecure.ml.features.DesignSpec`)
and, for sequence models, its entity's history (:mod:`finsecure.features.history`), exactly as
:class:`SequenceScoringStep` does when it serves the model in the pipeline. ``bench/deep.py train`` runs
it on the shared datasets.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(300, 4, 3)).astype(np.float32)
>>> y = (X[:, -1, 0] > 0.5).astype(np.int64)
>>> model = LSTMModel(domain="payment", epochs=2, hidden=8, threads=1).fit(X, y)
>>> model.predict_proba(X[:5]).shape
(5,)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.features.entity_index import load_arrays, save_arrays
from finsecure.features.history import HistorySpec, SequenceHistory
from finsecure.ml.contract import ModelError
from finsecure.ml.features import DesignSpec
from finsecure.pipeline.batch import Batch, Step

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch
    from sqlalchemy.orm import Session
    from torch import nn

    from finsecure.model.models import ModelVersion

__all__ = [
    "DEFAULT_BAND",
    "CNNModel",
    "DeepModel",
    "DeepTraining",
    "LSTMModel",
    "SequenceScoringStep",
    "ServedSequenceModel",
    "TrainConfig",
    "TrainReport",
    "TransformerModel",
    "export_module_onnx",
    "register_files",
    "register_training",
    "score_metrics",
    "sequence_inputs",
    "train_module",
    "train_sequence_model",
]

FloatArray = npt.NDArray[np.float32]
logger = logging.getLogger(__name__)
_OPSET = 17
_EVAL_BATCH = 8_192


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters of the one trainer.

    Attributes
    ----------
    epochs
        Most passes over the training rows.
    batch_size, lr, weight_decay
        Mini-batch size, AdamW learning rate and weight decay.
    patience
        Epochs without a better validation score before stopping.
    seed
        Seeds weights, shuffling and dropout: the same data and seed give the same network.
    threads
        CPU threads PyTorch may use while training.
    max_pos_weight
        Cap on the positive-class loss weight (``negatives / positives``).
    max_seconds
        Stop after the epoch that crosses this wall-clock budget (None: no budget).
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 3
    seed: int = 0
    threads: int = 2
    max_pos_weight: float = 50.0
    max_seconds: float | None = None


@dataclass(slots=True)
class TrainReport:
    """What one training run did: per-epoch history and the epoch whose weights were kept."""

    best_epoch: int = 0
    best_val_average_precision: float = float("nan")
    epochs_run: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _average_precision(y: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]) -> float:
    """Average precision (step-wise area under precision/recall), NaN when ``y`` has one class only."""
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = y[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits == 1].sum() / positives)


def _logits(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch

    module.eval()
    with torch.no_grad():
        parts = [module(x[i : i + _EVAL_BATCH]) for i in range(0, len(x), _EVAL_BATCH)]
    return torch.cat(parts) if parts else torch.zeros(0)


def train_module(
    module: nn.Module,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    X_val: npt.ArrayLike,
    y_val: npt.ArrayLike,
    config: TrainConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> TrainReport:
    """Train ``module`` (any network of :mod:`finsecure.ml.nn`) in place; keep the best validation epoch.

    Parameters
    ----------
    module
        Maps ``(n, steps, features)`` to logits ``(n,)`` and has a ``scaler``
        (:class:`~finsecure.ml.nn._common.FeatureScaler`), which is fitted on ``X`` here.
    X, y
        Training rows, 3-D float, labels 0/1.
    X_val, y_val
        Validation rows for early stopping (never trained on).
    config
        Hyper-parameters (defaults: :class:`TrainConfig`).
    log
        Called with one line per epoch.
    """
    import torch
    from torch import nn

    from finsecure.ml.nn._common import FeatureScaler

    cfg = config or TrainConfig()
    started = time.monotonic()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        x_train = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        y_train = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        x_val = torch.from_numpy(np.ascontiguousarray(X_val, dtype=np.float32))
        y_val_np = np.ascontiguousarray(y_val, dtype=np.int64)
        if x_train.ndim != 3 or x_val.ndim != 3:
            raise ModelError(
                f"the trainer takes 3-D inputs, got {tuple(x_train.shape)}, {tuple(x_val.shape)}"
            )
        if len(x_train) != len(y_train) or len(x_val) != len(y_val_np):
            raise ModelError("X and y have different lengths")
        scaler = getattr(module, "scaler", None)
        if not isinstance(scaler, FeatureScaler):
            raise ModelError(f"{type(module).__name__} has no feature scaler")
        scaler.fit(x_train)
        positives = float(y_train.sum())
        negatives = len(y_train) - positives
        pos_weight = min(negatives / positives, cfg.max_pos_weight) if positives else 1.0
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(max(pos_weight, 1.0)))
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        report = TrainReport()
        best_state = copy.deepcopy(module.state_dict())
        best_score = -math.inf
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            module.train()
            order = torch.from_numpy(rng.permutation(len(x_train)))
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(module(x_train[rows]), y_train[rows])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            val_logits = _logits(module, x_val)
            val_loss = float(
                nn.functional.binary_cross_entropy_with_logits(val_logits, torch.from_numpy(y_val_np).float())
            )
            ap = _average_precision(y_val_np, val_logits.numpy())
            # One-class validation (no positives yet): fall back to the validation loss.
            score = ap if not math.isnan(ap) else -val_loss
            report.history.append(
                {"epoch": epoch, "train_loss": total / max(len(order), 1), "val_loss": val_loss, "val_ap": ap}
            )
            report.epochs_run = epoch
            if log is not None:
                log(f"epoch {epoch}: train loss {total / max(len(order), 1):.4f}, val AP {ap:.4f}")
            if score > best_score:
                best_score, stale = score, 0
                best_state = copy.deepcopy(module.state_dict())
                report.best_epoch, report.best_val_average_precision = epoch, ap
            else:
                stale += 1
            if stale >= cfg.patience:
                break
            if cfg.max_seconds is not None and time.monotonic() - started > cfg.max_seconds:
                break
        module.load_state_dict(best_state)
        module.eval()
        report.seconds = time.monotonic() - started
        return report
    finally:
        torch.set_num_threads(previous_threads)


def _scored(module: nn.Module, rank: int) -> nn.Module:
    """``module`` with the contract's input rank and a sigmoid: what the ONNX graph computes."""
    from torch import nn

    class _Scored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import torch

            z = x.unsqueeze(1) if rank == 2 else x
            out: torch.Tensor = torch.sigmoid(self.net(z))
            return out

    return _Scored()


def export_module_onnx(module: nn.Module, *, steps: int, n_features: int, rank: int = 3) -> bytes:
    """The ONNX graph of a trained ``module``: input ``x`` (dynamic batch axis), output ``score`` = P(bad).

    Parameters
    ----------
    steps, n_features
        The input's fixed axes (``steps`` is ignored for ``rank == 2``).
    rank
        2: input ``(n, n_features)`` (a single record, seen by the network as one step); 3: ``(n, steps,
        n_features)``.
    """
    import torch

    wrapped = _scored(module, rank).eval()
    shape = (2, n_features) if rank == 2 else (2, steps, n_features)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript exporter is the one that needs no extra package (the dynamo exporter wants
        # onnxscript); it warns that it is legacy, and the LSTM export warns about batch sizes, which the
        # dynamic batch axis and the equality tests (batch sizes 1 and n) cover.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        torch.onnx.export(
            wrapped,
            (torch.zeros(shape),),
            Path(tmp) / "model.onnx",
            dynamo=False,
            input_names=["x"],
            output_names=["score"],
            dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
            opset_version=_OPSET,
        )
        return (Path(tmp) / "model.onnx").read_bytes()


def _session(onnx_bytes: bytes, threads: int) -> ort.InferenceSession:
    import onnxruntime as ort

    from finsecure.ml.contract import session_options

    try:
        return ort.InferenceSession(
            onnx_bytes, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad graph
        raise ModelError(f"cannot load the ONNX graph: {exc}") from exc


class DeepModel:
    """A network of :mod:`finsecure.ml.nn` behind the model contract; see the subclasses.

    Parameters
    ----------
    domain
        ``network``, ``cloud``, ``auth`` or ``payment``.
    feature_names
        Names of the last axis of ``X`` (default: ``f0, f1, ...`` at fit).
    epochs, batch_size, lr, patience, seed, threads, max_seconds
        Training (:class:`TrainConfig`); ``threads`` is also ONNX Runtime's thread count when scoring.
    val_fraction
        When :meth:`fit` gets no validation rows, the LAST ``val_fraction`` of the rows (the most recent,
        when rows are in time order) become the validation split.
    **arch
        Keyword arguments of the network class (``hidden=...``, ``d_model=...``).

    Online use: :meth:`learn_one` records an event in the model's rolling window of the last ``steps``
    events (one stream); it does not update the weights (deep models retrain in batch). :meth:`score_one`
    scores an event after the recorded ones.
    """

    name: str = "deep"

    def __init__(
        self,
        domain: str = "payment",
        feature_names: Sequence[str] = (),
        *,
        epochs: int = 10,
        batch_size: int = 256,
        lr: float = 3e-3,
        patience: int = 3,
        seed: int = 0,
        threads: int = 2,
        max_seconds: float | None = None,
        val_fraction: float = 0.15,
        **arch: Any,
    ) -> None:
        self.domain = domain
        self.feature_names: tuple[str, ...] = tuple(feature_names)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.seed = seed
        self.threads = threads
        self.max_seconds = max_seconds
        self.val_fraction = val_fraction
        self.arch = dict(arch)
        self._window: deque[FloatArray] = deque()

    # -- building -------------------------------------------------------------------------------------
    def build_module(self, n_features: int, steps: int, rank: int) -> nn.Module:
        """A fresh, untrained network for inputs of this shape (subclasses choose the class)."""
        raise NotImplementedError

    @property
    def config(self) -> TrainConfig:
        """The trainer's configuration from this model's hyper-parameters."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            seed=self.seed,
            threads=self.threads,
            max_seconds=self.max_seconds,
        )

    # -- contract -------------------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Self:
        """Train on ``X``/``y`` (2-D for a tabular CNN, else 3-D), stop early on the validation split."""
        import torch

        if y is None:
            raise ModelError(f"{self.name} is supervised: fit needs labels")
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(np.int64)
        if X.ndim not in (2, 3) or len(X) != len(y):
            raise ModelError(f"{self.name}: X must be 2-D or 3-D with one label per row, got {X.shape}")
        if X_val is None or y_val is None:
            cut = len(X) - max(1, int(len(X) * self.val_fraction))
            X, X_val, y, y_val = X[:cut], X[cut:], y[:cut], y[cut:]
        X_val = np.asarray(X_val, dtype=np.float32)
        y_val = np.asarray(y_val).astype(np.int64)
        if X_val.shape[1:] != X.shape[1:]:
            raise ModelError(f"{self.name}: validation shape {X_val.shape} does not match {X.shape}")
        rank = X.ndim
        steps = 1 if rank == 2 else X.shape[1]
        n_features = X.shape[-1]
        if not self.feature_names:
            self.feature_names = tuple(f"f{i}" for i in range(n_features))
        if len(self.feature_names) != n_features:
            raise ModelError(
                f"{self.name}: {len(self.feature_names)} feature names for {n_features} features"
            )
        torch.manual_seed(self.seed)
        module = self.build_module(n_features, steps, rank)
        as3d: Callable[[np.ndarray], np.ndarray] = (lambda a: a[:, None, :]) if rank == 2 else (lambda a: a)
        self.report_ = train_module(module, as3d(X), y, as3d(X_val), y_val, self.config, log=log)
        self.module_ = module
        self._set_graph(
            export_module_onnx(module, steps=steps, n_features=n_features, rank=rank), rank, steps
        )
        return self

    def _set_graph(self, onnx_bytes: bytes, rank: int, steps: int) -> None:
        self.onnx_ = onnx_bytes
        self.rank_ = rank
        self.steps_ = steps
        self.session_ = _session(onnx_bytes, self.threads)
        self._window = deque(maxlen=max(steps - 1, 0))

    @classmethod
    def from_onnx(
        cls, onnx_bytes: bytes, *, feature_names: Sequence[str], domain: str, threads: int = 2
    ) -> Self:
        """A fitted model from an exported graph (needs no PyTorch); shape and rank come from the graph."""
        model = cls(domain=domain, feature_names=feature_names, threads=threads)
        session = _session(onnx_bytes, threads)
        shape = session.get_inputs()[0].shape
        if len(shape) not in (2, 3) or shape[-1] != len(model.feature_names):
            raise ModelError(f"graph input {shape} does not match {len(model.feature_names)} features")
        model._set_graph(onnx_bytes, len(shape), 1 if len(shape) == 2 else int(shape[1]))
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "session_"):
            raise ModelError(f"{self.name} model is not fitted")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(bad) per row, ``float32`` of shape ``(n,)``, computed by ONNX Runtime."""
        self._check_fitted()
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != self.rank_ or X.shape[-1] != len(self.feature_names):
            raise ModelError(
                f"{self.name}: expected {self.rank_}-D rows of {len(self.feature_names)}, got {X.shape}"
            )
        if self.rank_ == 3 and X.shape[1] != self.steps_:
            raise ModelError(f"{self.name}: expected {self.steps_} steps, got {X.shape[1]}")
        if len(X) == 0:
            return np.zeros(0, dtype=np.float32)
        (out,) = self.session_.run(["score"], {"x": X})
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1))

    def _vector(self, x: Mapping[str, float]) -> FloatArray:
        return np.array([x.get(name, np.nan) for name in self.feature_names], dtype=np.float32)

    def learn_one(self, x: Mapping[str, float], y: int | None = None) -> None:
        """Record ``x`` as the newest event of the stream (the weights are not updated)."""
        self._check_fitted()
        if self._window.maxlen:
            self._window.append(self._vector(x))

    def score_one(self, x: Mapping[str, float]) -> float:
        """P(bad) of ``x`` as the next event after those recorded by :meth:`learn_one`."""
        self._check_fitted()
        row = self._vector(x)
        if self.rank_ == 2:
            return float(self.predict_proba(row[None, :])[0])
        seq = np.zeros((1, self.steps_, len(row)), dtype=np.float32)
        history = list(self._window)
        if history:
            seq[0, self.steps_ - 1 - len(history) : self.steps_ - 1] = np.stack(history)
        seq[0, -1] = row
        return float(self.predict_proba(seq)[0])

    def export_onnx(self, path: Path) -> None:
        """Write the graph that :meth:`predict_proba` runs."""
        self._check_fitted()
        Path(path).write_bytes(self.onnx_)


class CNNModel(DeepModel):
    """1-D CNN (:class:`~finsecure.ml.nn.SequenceCNN`): over a record's features for 2-D ``X``, over the
    steps for 3-D ``X`` (``over`` in ``arch`` overrides)."""

    name: str = "cnn"

    def build_module(self, n_features: int, steps: int, rank: int) -> nn.Module:
        from finsecure.ml.nn import SequenceCNN

        arch = {"over": "features" if rank == 2 else "steps", **self.arch}
        return SequenceCNN(n_features, **arch)


class LSTMModel(DeepModel):
    """LSTM over an entity's recent events (:class:`~finsecure.ml.nn.SequenceLSTM`); 3-D ``X``."""

    name: str = "lstm"

    def build_module(self, n_features: int, steps: int, rank: int) -> nn.Module:
        from finsecure.ml.nn import SequenceLSTM

        return SequenceLSTM(n_features, **self.arch)


class TransformerModel(DeepModel):
    """Transformer encoder over an entity's recent behaviour (:class:`~finsecure.ml.nn.SequenceTransformer`);
    3-D ``X``."""

    name: str = "transformer"

    def build_module(self, n_features: int, steps: int, rank: int) -> nn.Module:
        from finsecure.ml.nn import SequenceTransformer

        return SequenceTransformer(n_features, steps=steps, **self.arch)


# -- training on real data ---------------------------------------------------------------------------

MODELS: dict[str, type[DeepModel]] = {"cnn": CNNModel, "lstm": LSTMModel, "transformer": TransformerModel}
"""The deep model classes by kind."""

Stream = pl.DataFrame | Sequence[tuple[str, pl.DataFrame]]
"""Featured rows in stream order: one frame of one domain, or ``(domain, frame)`` batches."""


@dataclass
class DeepTraining:
    """A deep model trained on a dataset, with what serving needs to build its input, and its scores.

    Attributes
    ----------
    model
        The fitted model (its ONNX graph: :meth:`DeepModel.export_onnx`).
    designs
        Per domain, the design (:class:`~finsecure.ml.features.DesignSpec`) learned on the training rows.
    history
        The history spec of a sequence model (None: the model reads one row of the design matrix).
    threshold
        The score above which an event counts as bad, chosen on the validation split (best accuracy).
    metrics
        Per split (validation and every evaluated split): ``roc_auc``, ``average_precision``,
        ``accuracy``, ``macro_f1``, ``recall_at_1pct_fpr``, ``n``, ``positives``.
    scores
        Per evaluated split, the scores of its rows (in stream order), for split-specific metrics.
    """

    model: DeepModel
    designs: dict[str, DesignSpec]
    history: HistorySpec | None
    threshold: float
    metrics: dict[str, dict[str, float]]
    scores: dict[str, FloatArray] = field(default_factory=dict)
    fingerprint: str = "not recorded"
    """Hash of the training rows and labels (:func:`finsecure.ml.data.fingerprint`)."""

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description: what the registry stores beside the ONNX file."""
        return {
            "model": self.model.name,
            "domain": self.model.domain,
            "feature_names": list(self.model.feature_names),
            "designs": {domain: design.to_dict() for domain, design in self.designs.items()},
            "history": None if self.history is None else json.loads(self.history.fingerprint()),
            "threshold": self.threshold,
            "metrics": self.metrics,
            "data_fingerprint": self.fingerprint,
            "training": {
                "best_epoch": self.model.report_.best_epoch,
                "epochs_run": self.model.report_.epochs_run,
                "seconds": round(self.model.report_.seconds, 1),
                "history": self.model.report_.history,
            },
        }


def _batches(
    stream: pl.DataFrame | Sequence[tuple[str, pl.DataFrame]], domain: str
) -> list[tuple[str, pl.DataFrame]]:
    import polars as pl

    return [(domain, stream)] if isinstance(stream, pl.DataFrame) else list(stream)


def _design_values(frame: pl.DataFrame, design: DesignSpec | None, names: Sequence[str]) -> FloatArray:
    """Columns ``names`` for ``frame``: from the design matrix when the design has them, else from the
    frame's own columns (booleans as 0/1), else missing."""
    out = np.full((frame.height, len(names)), np.nan, dtype=np.float32)
    if design is not None:
        # Only the columns asked for (a payment design has ~95; a history uses about ten of them).
        wanted = set(names)
        design = DesignSpec(
            domain=design.domain,
            numeric=tuple(n for n in design.numeric if n in wanted),
            time_features=design.time_features and bool(wanted & {"time__hour", "time__weekday"}),
            vocab={c: words for c, words in design.vocab.items() if f"cat__{c}" in wanted},
        )
    matrix = design.matrix(frame) if design is not None else None
    position = {name: n for n, name in enumerate(design.feature_names)} if design is not None else {}
    for n, name in enumerate(names):
        if matrix is not None and name in position:
            out[:, n] = matrix[:, position[name]]
        elif name in frame.columns:
            out[:, n] = frame[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return out


def sequence_inputs(
    stream: Stream,
    spec: HistorySpec,
    designs: Mapping[str, DesignSpec],
    *,
    domain: str = "payment",
) -> FloatArray:
    """The ``(rows, steps, features)`` inputs of a whole stream, fed batch by batch, in order, through
    one fresh :class:`~finsecure.features.history.SequenceHistory` (the serving code path).

    ``spec.features`` may name design columns (``time__hour``, ``cat__merchant_category``) as well as
    frame columns; rows of all batches are concatenated in stream order.
    """
    history = SequenceHistory(spec)
    parts = []
    for batch_domain, frame in _batches(stream, domain):
        raw = _design_values(frame, designs.get(batch_domain), spec.features)
        parts.append(history.update(frame, batch_domain, raw=raw))
    return np.concatenate(parts) if parts else np.zeros((0, spec.steps, len(spec.feature_names)), np.float32)


def score_metrics(y: npt.ArrayLike, p: npt.ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """ROC-AUC, average precision, accuracy and macro-F1 at ``threshold``, recall at 1% false positives."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve

    y_true = np.asarray(y).astype(np.int64)
    scores = np.asarray(p, dtype=np.float64)
    both = 0 < int(y_true.sum()) < len(y_true)
    predicted = (scores >= threshold).astype(np.int64)
    recall_at = float("nan")
    if both:
        fpr, tpr, _ = roc_curve(y_true, scores)
        recall_at = float(tpr[np.searchsorted(fpr, 0.01, side="right") - 1])
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)) if both else float("nan"),
        "average_precision": float(average_precision_score(y_true, scores)) if both else float("nan"),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
        "recall_at_1pct_fpr": recall_at,
        "n": float(len(y_true)),
        "positives": float(y_true.sum()),
    }


def _best_threshold(y: npt.NDArray[np.int64], p: FloatArray) -> float:
    """The score threshold with the best accuracy on ``y`` (0.5 when ``y`` is empty)."""
    if len(y) == 0:
        return 0.5
    candidates = np.unique(np.quantile(p, np.linspace(0.0, 1.0, 201)))
    accuracy = [float(np.mean((p >= c) == (y == 1))) for c in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def train_sequence_model(
    name: str,
    stream: Stream,
    splits: Mapping[str, npt.NDArray[np.bool_]],
    *,
    domain: str,
    label: str = "label",
    history: HistorySpec | None = None,
    time_features: bool = True,
    max_train_rows: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    **params: Any,
) -> DeepTraining:
    """Train a deep model (``cnn``, ``lstm`` or ``transformer``) on a featured stream and score its splits.

    Parameters
    ----------
    name
        Model kind.
    stream
        Featured rows in stream order (after :class:`~finsecure.features.FeatureStep`): one frame of
        ``domain``, or ``(domain, frame)`` batches of several domains (a cross-domain history).
    splits
        Boolean row masks over the concatenated stream: ``train`` (required), ``validation`` (early
        stopping and the threshold; carved from the end of ``train`` when absent) and any number of
        evaluated splits. Only ``train`` rows are fitted on; only ``validation`` picks anything.
    domain
        The model's domain; with one frame, the frame's domain.
    label
        Label column (0/1) of every frame.
    history
        Sequence input (``(rows, steps, features)`` from the rows' entity histories); None: one design
        row per event (tabular; the CNN convolves over it).
    time_features
        Whether the design has the hour and weekday (False where timestamps are synthetic).
    max_train_rows
        Keep every positive training row and a seeded sample of the negatives up to this many rows.
    **params
        Hyper-parameters of the model class (``epochs``, ``hidden``, ...).
    """
    if name not in MODELS:
        raise ModelError(f"unknown deep model {name!r}; known: {', '.join(MODELS)}")
    batches = _batches(stream, domain)
    frames = [frame for _, frame in batches]
    rows = sum(frame.height for frame in frames)
    for split, mask in splits.items():
        if len(mask) != rows:
            raise ModelError(f"split {split!r} has {len(mask)} rows, the stream {rows}")
    if "train" not in splits:
        raise ModelError("splits need a 'train' mask")
    y_all = np.concatenate([frame[label].cast(pl.Int64).fill_null(0).to_numpy() for frame in frames])
    offsets = np.cumsum([0] + [frame.height for frame in frames])
    train_mask = np.asarray(splits["train"], dtype=np.bool_)
    designs: dict[str, DesignSpec] = {}
    for batch_domain in dict.fromkeys(d for d, _ in batches):
        parts = [
            frame.filter(pl.Series(train_mask[offsets[i] : offsets[i + 1]]))
            for i, (d, frame) in enumerate(batches)
            if d == batch_domain
        ]
        train_frame = pl.concat(parts, how="vertical_relaxed")
        designs[batch_domain] = DesignSpec.learn(train_frame, batch_domain, time_features=time_features)
    if history is None:
        design = designs[domain]
        X_all = np.concatenate([design.matrix(frame) for frame in frames])
        feature_names = design.feature_names
    else:
        X_all = sequence_inputs(batches, history, designs, domain=domain)
        feature_names = history.feature_names
    train_rows = np.flatnonzero(train_mask)
    if "validation" in splits:
        val_rows = np.flatnonzero(splits["validation"])
    else:
        cut = len(train_rows) - max(1, len(train_rows) // 7)
        train_rows, val_rows = train_rows[:cut], train_rows[cut:]
    if max_train_rows is not None and len(train_rows) > max_train_rows:
        rng = np.random.default_rng(seed)
        positive = train_rows[y_all[train_rows] == 1]
        negative = train_rows[y_all[train_rows] == 0]
        keep = max(max_train_rows - len(positive), 0)
        negative = np.sort(rng.choice(negative, size=min(keep, len(negative)), replace=False))
        train_rows = np.sort(np.concatenate([positive, negative]))
    model = MODELS[name](domain, feature_names, seed=seed, **params)
    model.fit(X_all[train_rows], y_all[train_rows], X_val=X_all[val_rows], y_val=y_all[val_rows], log=log)
    p_val = model.predict_proba(X_all[val_rows])
    threshold = _best_threshold(y_all[val_rows], p_val)
    metrics = {"validation": score_metrics(y_all[val_rows], p_val, threshold)}
    scores = {"validation": p_val}
    for split, mask in splits.items():
        if split in ("train", "validation"):
            continue
        chosen = np.flatnonzero(mask)
        scores[split] = model.predict_proba(X_all[chosen])
        metrics[split] = score_metrics(y_all[chosen], scores[split], threshold)
    from finsecure.ml.data import fingerprint

    trained_on = fingerprint(X_all[train_rows], y_all[train_rows])
    return DeepTraining(model, designs, history, threshold, metrics, scores, fingerprint=trained_on)


# -- serving sequence models -------------------------------------------------------------------------


@dataclass
class ServedSequenceModel:
    """A sequence model ready to serve: its graph, the designs and history spec it was trained with.

    Build one with :meth:`load` (the ``.onnx`` file and the JSON of :meth:`DeepTraining.metadata`) or
    :meth:`from_training`.
    """

    name: str
    model: DeepModel
    designs: dict[str, DesignSpec]
    spec: HistorySpec
    threshold: float
    version: int | None = None
    """The registry version (None: not served from the registry)."""
    path: Path | None = None
    """The registry's artefact folder it was loaded from."""

    @classmethod
    def from_artefact(cls, folder: Path | str, *, threads: int = 2) -> ServedSequenceModel:
        """Load a registered sequence model's artefact folder (checked by
        :func:`finsecure.ml.registry.load_artefact`: hash, shapes, a finite score); needs no PyTorch.

        Raises
        ------
        ModelError
            A broken artefact, or one of a tabular model.
        """
        from finsecure.ml.registry import ONNX_FILE, load_artefact

        loaded = load_artefact(folder, intra_op_threads=threads, explain=False)
        meta = loaded.metadata
        if not loaded.is_sequence:
            raise ModelError(f"{folder}: not a sequence model (the scoring step serves it)")
        try:
            spec = HistorySpec.from_dict(meta["history"])
            designs = {domain: DesignSpec.from_dict(d) for domain, d in meta["designs"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{folder}: bad history or designs in the metadata ({exc})") from exc
        model_class = MODELS.get(loaded.kind)
        if model_class is None:
            raise ModelError(f"{folder}: unknown sequence model kind {loaded.kind!r}")
        model = model_class.from_onnx(
            (loaded.path / ONNX_FILE).read_bytes(),
            feature_names=spec.feature_names,
            domain=str(meta["domain"]),
            threads=threads,
        )
        if model.rank_ != 3 or model.steps_ != spec.steps:
            raise ModelError(f"{folder}: the graph does not take {spec.steps}-step sequences")
        return cls(loaded.name, model, designs, spec, loaded.threshold, loaded.version, loaded.path)

    @classmethod
    def from_training(cls, name: str, training: DeepTraining) -> ServedSequenceModel:
        """Serve a model just trained by :func:`train_sequence_model` (with a history)."""
        if training.history is None:
            raise ModelError(f"{name}: a tabular model is served by the scoring step, not the sequence step")
        return cls(name, training.model, dict(training.designs), training.history, training.threshold)

    @classmethod
    def load(cls, onnx_path: Path, metadata_path: Path, *, threads: int = 2) -> ServedSequenceModel:
        """Load a written model (``export_onnx`` + ``metadata()`` as JSON); needs no PyTorch.

        Raises
        ------
        ModelError
            Unreadable files, metadata without a history, or a graph that does not match it.
        """
        try:
            meta = json.loads(Path(metadata_path).read_text())
            history = meta["history"]
            if not isinstance(history, dict):
                raise TypeError("no history")
            spec = HistorySpec.from_dict(history)
            designs = {domain: DesignSpec.from_dict(d) for domain, d in meta["designs"].items()}
            kind, domain, threshold = str(meta["model"]), str(meta["domain"]), float(meta["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{metadata_path}: not the metadata of a sequence model ({exc})") from exc
        model_class = MODELS.get(kind)
        if model_class is None:
            raise ModelError(f"{metadata_path}: unknown model kind {kind!r}")
        try:
            onnx_bytes = Path(onnx_path).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read {onnx_path}: {exc}") from exc
        model = model_class.from_onnx(
            onnx_bytes, feature_names=spec.feature_names, domain=domain, threads=threads
        )
        if model.rank_ != 3 or model.steps_ != spec.steps:
            raise ModelError(f"{onnx_path}: the graph does not take {spec.steps}-step sequences")
        return cls(Path(onnx_path).stem, model, designs, spec, threshold)


def _is_sequence_artefact(folder: Path) -> bool:
    try:
        return "history" in json.loads((folder / "metadata.json").read_text())
    except (OSError, ValueError, TypeError):
        return True  # let the loader say what is wrong with it


def register_training(
    *,
    db_session: Session,
    data_dir: Path,
    name: str,
    training: DeepTraining,
    dataset: str,
) -> ModelVersion:
    """Register a trained deep model (:func:`train_sequence_model`) as a new candidate version of ``name``:
    a sequence model with its history spec, a tabular CNN like any tabular model."""
    from finsecure.ml import registry

    model = training.model
    design = training.designs.get(model.domain) or next(iter(training.designs.values()))
    validation = training.metrics.get("validation", {})
    metrics: dict[str, Any] = {
        k: float(v) for k, v in validation.items() if k in ("roc_auc", "average_precision", "accuracy")
    }
    for split, values in training.metrics.items():
        if split != "validation":
            for k in ("roc_auc", "average_precision", "accuracy", "card_precision_at_100"):
                if k in values:
                    metrics[f"{split} {k}"] = float(values[k])
    report = getattr(model, "report_", None)
    extra = {"training": {"best_epoch": report.best_epoch, "epochs_run": report.epochs_run}} if report else {}
    return registry.register(
        db_session=db_session,
        data_dir=data_dir,
        name=name,
        model=model,
        design=design,
        data_fingerprint=training.fingerprint,
        metrics=metrics,
        threshold=training.threshold,
        dataset=dataset,
        extra=extra,
        history=training.history,
        designs=training.designs,
    )


def register_files(
    *,
    db_session: Session,
    data_dir: Path,
    onnx_path: Path,
    metadata_path: Path,
    name: str | None = None,
    dataset: str | None = None,
) -> ModelVersion:
    """Register a deep model written as files (``<name>.onnx`` and ``<name>.json``, as ``bench/deep.py
    train`` writes them to ``<data_dir>/deep``) as a new candidate version; needs no PyTorch.

    Raises
    ------
    ModelError
        Unreadable files or metadata that does not describe a deep model.
    """
    try:
        meta = json.loads(Path(metadata_path).read_text())
        kind, domain = str(meta["model"]), str(meta["domain"])
        designs = {d: DesignSpec.from_dict(v) for d, v in meta["designs"].items()}
        history = HistorySpec.from_dict(meta["history"]) if meta.get("history") else None
        features = tuple(str(f) for f in meta["feature_names"])
        onnx_bytes = Path(onnx_path).read_bytes()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{metadata_path}: not the metadata of a deep model ({exc})") from exc
    model_class = MODELS.get(kind)
    if model_class is None:
        raise ModelError(f"{metadata_path}: unknown deep model kind {kind!r}")
    model = model_class.from_onnx(onnx_bytes, feature_names=features, domain=domain, threads=1)
    training = DeepTraining(
        model,
        designs,
        history,
        float(meta["threshold"]),
        dict(meta.get("metrics") or {}),
        fingerprint=str(meta.get("data_fingerprint") or "not recorded"),
    )
    return register_training(
        db_session=db_session,
        data_dir=data_dir,
        name=name or Path(onnx_path).stem,
        training=training,
        dataset=dataset or f"files {Path(onnx_path).name}",
    )


DEFAULT_BAND = (0.05, 0.95)
"""The fast-tier scores routed to the deep tier in the platform: the ones it is unsure about."""


class SequenceScoringStep(Step):
    """Scores each batch with sequence models, reading every event's entity history.

    For every served model whose history covers the batch's domain (``spec.domains``, or the model's own
    domain when the spec names none), the step records the batch's events
    in that model's :class:`~finsecure.features.history.SequenceHistory` (all of them, so histories stay
    complete) and adds ``score__<model name>`` (float32, P(bad)).

    Cascade: with ``band=(low, high)``, only rows whose fast-tier ``score`` (the column the scoring step
    writes) is in ``[low, high)`` or missing are scored by the deep models; the others get a null deep
    score. Rows of a batch without a ``score`` column are all scored.

    Registry: with a ``resolver`` (:func:`finsecure.ml.step.registry_resolver`), the promoted sequence
    models of the registry are served too, re-read between batches at most every ``reload_interval_s``: a
    newly promoted version serves from the next batch on (keeping the entity histories when its history
    spec is the same), and a version that fails to load leaves the previous one serving.

    Parameters
    ----------
    models
        What to serve from the start (e.g. the files of ``<data_dir>/deep``).
    band
        The uncertain band routed to the deep tier (None: score every row).
    resolver
        Returns the registry's production artefact folders (tabular ones are ignored here).
    reload_interval_s, threads
        How often to ask the resolver, at most; ONNX Runtime threads per loaded model.
    """

    def __init__(
        self,
        models: Sequence[ServedSequenceModel],
        *,
        band: tuple[float, float] | None = None,
        step_id: str = "deep",
        resolver: Callable[[], Sequence[Path | str]] | None = None,
        reload_interval_s: float = 5.0,
        threads: int = 2,
    ) -> None:
        self.step_id = step_id
        self.band = band
        self.resolver = resolver
        self.reload_interval_s = reload_interval_s
        self.threads = threads
        self._fixed = list(models)
        self._registered: dict[str, ServedSequenceModel] = {}
        self._next_check = 0.0
        self.models = list(models)
        self.histories = {m.name: SequenceHistory(m.spec) for m in self.models}
        self.routed = 0
        self.events = 0
        self.reloads = 0
        self.load_errors = 0

    def refresh(self, *, force: bool = False) -> bool:
        """Serve the registry's promoted sequence models (see the class docstring); True on a change."""
        now = time.monotonic()
        if self.resolver is None or (not force and now < self._next_check):
            return False
        self._next_check = now + self.reload_interval_s
        try:
            wanted = [Path(p) for p in self.resolver()]
        except Exception:  # an unreachable registry must not stop scoring with what we have
            logger.exception("deep tier: could not read the model registry; keeping the current models")
            return False
        current = {m.path.resolve(): m for m in self._registered.values() if m.path is not None}
        served: dict[str, ServedSequenceModel] = {}
        failed: set[str] = set()
        for path in wanted:
            model = current.get(path.resolve())
            if model is None:
                if not _is_sequence_artefact(path):
                    continue
                try:
                    model = ServedSequenceModel.from_artefact(path, threads=self.threads)
                except (ModelError, OSError) as exc:
                    self.load_errors += 1
                    failed.add(path.parent.name)
                    logger.error("deep tier: refused model artefact %s: %s", path, exc)
                    continue
                logger.info("deep tier: now serving %s v%s", model.name, model.version)
            served[model.name] = model
        for name in failed:  # a version that cannot load leaves the previous one serving
            if name in self._registered and name not in served:
                served[name] = self._registered[name]
        before = {n: m.path for n, m in self._registered.items()}
        if before == {n: m.path for n, m in served.items()}:
            return False
        self._registered = served
        models = {m.name: m for m in self._fixed}
        models.update(served)  # a registered model replaces a file of the same name
        histories = {}
        for name, model in models.items():
            old = self.histories.get(name)
            same = old is not None and old.spec.fingerprint() == model.spec.fingerprint()
            histories[name] = old if same and old is not None else SequenceHistory(model.spec)
        self.models, self.histories = list(models.values()), histories
        self.reloads += 1
        return True

    @classmethod
    def from_folder(
        cls, folder: Path, *, band: tuple[float, float] | None = None, threads: int = 2
    ) -> SequenceScoringStep | None:
        """A step serving every sequence model written to ``folder`` (``<name>.onnx`` beside
        ``<name>.json``, as ``bench/deep.py train`` writes them); None when there is none. Tabular
        graphs there are left to the scoring step; a model that fails to load is logged and skipped."""
        models = []
        for meta_path in sorted(Path(folder).glob("*.json")):
            onnx_path = meta_path.with_suffix(".onnx")
            if not onnx_path.exists():
                continue
            try:
                if json.loads(meta_path.read_text()).get("history") is None:
                    continue
                models.append(ServedSequenceModel.load(onnx_path, meta_path, threads=threads))
            except (ModelError, OSError, ValueError, AttributeError) as exc:
                logger.error("deep tier: refused %s: %s", onnx_path, exc)
        return cls(models, band=band) if models else None

    @classmethod
    def serving(
        cls,
        folder: Path,
        resolver: Callable[[], Sequence[Path | str]] | None,
        *,
        band: tuple[float, float] | None = None,
        reload_interval_s: float = 5.0,
        threads: int = 2,
    ) -> SequenceScoringStep:
        """The platform's deep tier: the sequence models written to ``folder`` (as :meth:`from_folder`)
        and the registry's promoted ones (``resolver``), even when there are none yet."""
        files = cls.from_folder(folder, threads=threads) if Path(folder).is_dir() else None
        step = cls(
            files.models if files is not None else [],
            band=band,
            resolver=resolver,
            reload_interval_s=reload_interval_s,
            threads=threads,
        )
        step.refresh(force=True)
        return step

    def _covers(self, served: ServedSequenceModel, domain: str) -> bool:
        if served.spec.domains:
            return domain in served.spec.domains
        return domain == served.model.domain

    def process(self, batch: Batch) -> Batch:
        """Record the batch in each history and add the deep scores of the routed rows."""
        self.refresh()
        domain = str(batch.domain)
        frame = batch.frame
        if frame.height == 0:
            return batch
        routed: npt.NDArray[np.intp] | None = None
        if self.band is not None and "score" in frame.columns:
            fast = frame["score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            routed = np.flatnonzero(((fast >= self.band[0]) & (fast < self.band[1])) | np.isnan(fast))
        columns = []
        for served in self.models:
            if not self._covers(served, domain):
                continue
            raw = _design_values(frame, served.designs.get(domain), served.spec.features)
            sequences = self.histories[served.name].update(frame, domain, raw=raw)
            scores = np.full(frame.height, np.nan, dtype=np.float32)
            rows = np.arange(frame.height) if routed is None else routed
            if len(rows):
                scores[rows] = served.model.predict_proba(sequences[rows])
            self.events += frame.height
            self.routed += len(rows)
            columns.append(pl.Series(f"score__{served.name}", scores).fill_nan(None))
        if not columns:
            return batch
        return batch.with_frame(frame.with_columns(columns))

    def snapshot(self) -> bytes:
        """Every model's history, as ``.npz`` bytes."""
        return save_arrays(
            {name: np.frombuffer(h.snapshot(), dtype=np.uint8) for name, h in self.histories.items()}
        )

    def restore(self, data: bytes) -> None:
        """Load a :meth:`snapshot` (histories of models no longer served are dropped)."""
        try:
            arrays = load_arrays(data)
        except (ValueError, OSError) as exc:
            raise ValueError(f"step {self.step_id!r}: not a snapshot of this step ({exc})") from None
        for name, history in self.histories.items():
            if name in arrays:
                history.restore(arrays[name].tobytes())
