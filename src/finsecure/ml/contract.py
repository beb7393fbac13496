"""The one contract every model follows, and the ONNX scorer every model is served through.

Shapes (final; every model and test relies on them):

* Tabular models (``rank == 2``): ``X`` is ``float32`` of shape ``(n, len(feature_names))``.
* Sequence models (``rank == 3``): ``X`` is ``float32`` of shape ``(n, steps, len(feature_names))``; the
  LAST step (``X[:, -1, :]``) is the event being scored, earlier steps are that entity's previous events,
  oldest first, zero-padded at the front when the entity has fewer events.
* Missing values are ``NaN`` in ``X``; a model replaces them as it needs (LightGBM handles them natively).
* ``y`` is ``int`` 0/1 of shape ``(n,)`` (1 = bad), or ``None`` for unsupervised models.
* ``predict_proba(X)`` returns ``float32`` of shape ``(n,)``: P(bad), or a calibrated anomaly score, in
  ``[0, 1]``; higher is worse.
* Online: ``learn_one(x)`` / ``score_one(x)`` take one event as ``{feature name: value}``. A sequence model
  keeps its own rolling window of the last ``steps`` events it was given (a single stream) for ``score_one``.
* ``export_onnx(path)`` writes a model with ONE float input of the same shape as ``X`` (dynamic batch axis)
  whose output named ``score`` (or, for converted classifiers, ``probabilities`` of shape ``(n, 2)``) gives
  the same numbers as ``predict_proba`` (within 1e-5 for tree models, 1e-4 for neural ones).
  :class:`OnnxScorer` reads any of those.

``__init__`` only stores hyper-parameters; fitted state ends in ``_`` (scikit-learn's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Model", "ModelError", "OnnxScorer", "session_options"]

FloatArray = npt.NDArray[np.float32]


class ModelError(ValueError):
    """A model or artefact cannot be used (not fitted, wrong shape, malformed ONNX file)."""


@runtime_checkable
class Model(Protocol):
    """What every model (GBDT, anomaly detectors, CNN, LSTM, Transformer, ensemble) provides."""

    #: Kind of model: ``gbdt``, ``iforest``, ``hst``, ``cnn``, ``lstm``, ``transformer``, ``ensemble``.
    name: str
    #: ``network``, ``cloud``, ``auth`` or ``payment``.
    domain: str
    #: The feature columns, in the order of the last axis of ``X``.
    feature_names: tuple[str, ...]

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> Self:
        """Fit on ``X`` (and labels ``y`` for supervised models); validation data only for early stopping."""
        ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``float32`` of shape ``(n,)`` in ``[0, 1]``, higher = more likely bad."""
        ...

    def learn_one(self, x: Mapping[str, float], y: int | None = None) -> None:
        """Update on one event (online models learn; batch-only models may only record the event)."""
        ...

    def score_one(self, x: Mapping[str, float]) -> float:
        """Score one event, in ``[0, 1]``."""
        ...

    def export_onnx(self, path: Path) -> None:
        """Write the fitted model as ONNX (see the module docstring for the input/output contract)."""
        ...


class OnnxScorer:
    """Scores batches with an ONNX file through ONNX Runtime.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    intra_op_threads
        Threads ONNX Runtime may use inside one call (the pipeline gives scoring two).

    Raises
    ------
    ModelError
        When the file is missing, not ONNX, or has no usable float input/output.
    """

    def __init__(self, path: Path, *, intra_op_threads: int = 2) -> None:
        self.path = Path(path)
        self._session = _session(str(self.path), intra_op_threads, self.path)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or "float" not in inputs[0].type:
            raise ModelError(f"{self.path}: expected one float input, got {[i.type for i in inputs]}")
        self.input_name: str = inputs[0].name
        self.input_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)
        outputs = {o.name: o for o in self._session.get_outputs()}
        if "score" in outputs:
            self._output, self._column = "score", None
        elif "probabilities" in outputs:
            self._output, self._column = "probabilities", 1
        else:
            floats = [o.name for o in outputs.values() if o.type == "tensor(float)"]
            if not floats:
                raise ModelError(f"{self.path}: no float tensor output in {list(outputs)}")
            self._output, self._column = floats[0], None

    @property
    def rank(self) -> int:
        """2 for tabular models, 3 for sequence models."""
        return len(self.input_shape)

    def predict_proba(self, X: np.ndarray) -> FloatArray:
        """``float32`` scores of shape ``(n,)`` for ``X`` (2-D or 3-D, as the model was exported)."""
        if X.ndim != self.rank:
            raise ModelError(f"{self.path}: expected a {self.rank}-D input, got shape {X.shape}")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        feed = np.ascontiguousarray(X, dtype=np.float32)
        (out,) = self._session.run([self._output], {self.input_name: feed})
        arr = np.asarray(out, dtype=np.float32)
        if self._column is not None:
            arr = arr[:, self._column]
        return np.ascontiguousarray(arr.reshape(-1))


def session_options(intra_op_threads: int) -> Any:
    """ONNX Runtime options for scoring: ``intra_op_threads`` threads that do NOT spin while waiting.

    Spinning threads burn their core between calls; on a machine whose cores are shared (the pipeline's
    other steps, other processes) that time is taken from the work itself: measured here, a 2-thread
    GBDT session scored 68 k rows/s spinning and 454 k rows/s not spinning on a loaded machine.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, intra_op_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _session(model: str | bytes, intra_op_threads: int, where: object) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            model, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
        raise ModelError(f"cannot load ONNX model {where}: {exc}") from exc
