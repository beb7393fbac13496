"""Drift: how far the live inputs and scores have moved from what a model saw at validation.

At registration each model stores, per input feature and for its score, ten equal-frequency bins of the
validation data (plus the share of missing values). The scoring step counts live values into the same
bins; the population stability index ``PSI = sum((live - ref) * ln(live / ref))`` per feature and for the
score is written to ``system_metrics`` (``model_psi`` with labels model, version, feature) every minute.
Rule of thumb: below 0.1 stable, 0.1 to 0.25 moving, above 0.25 the model should be retrained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["DriftTracker", "psi", "reference_bins"]

_BINS = 10
_FLOOR = 1e-4


def reference_bins(values: np.ndarray) -> dict[str, Any]:
    """Equal-frequency bin edges of ``values`` and the share in each bin, the last share for missing.

    >>> ref = reference_bins(np.arange(100.0))
    >>> len(ref["edges"]), len(ref["shares"]), ref["shares"][-1]
    (9, 11, 0.0)
    """
    v = np.asarray(values, dtype=np.float64)
    present = v[~np.isnan(v)]
    if present.size == 0:
        return {"edges": [], "shares": [0.0, 1.0]}
    cuts = np.unique(np.quantile(present, np.linspace(0, 1, _BINS + 1)[1:-1]))
    # Put each edge halfway to the next distinct value: scores of tree models take few distinct values,
    # and the same value computed by ONNX Runtime (float32) must not fall on the other side of an edge.
    distinct = np.unique(present)
    above = np.searchsorted(distinct, cuts, side="right")
    edges = np.where(above < len(distinct), (cuts + distinct[np.minimum(above, len(distinct) - 1)]) / 2, cuts)
    edges = np.unique(edges)
    return {"edges": edges.tolist(), "shares": _shares(v, edges).tolist()}


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    missing = np.isnan(v)
    idx = np.searchsorted(edges, v[~missing], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return np.append(counts, float(missing.sum()))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = _counts(values, edges)
    return np.asarray(counts / max(float(counts.sum()), 1.0), dtype=np.float64)


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index between two share vectors (empty bins floored at 0.01%).

    >>> psi(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    0.0
    >>> round(psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])), 3)
    0.879
    """
    ref = np.maximum(np.asarray(reference, dtype=np.float64), _FLOOR)
    cur = np.maximum(np.asarray(live, dtype=np.float64), _FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


class DriftTracker:
    """Counts live values of one model into its reference bins (see the module docstring)."""

    def __init__(self, reference: Mapping[str, Mapping[str, Any]]) -> None:
        self._edges = {name: np.asarray(ref["edges"], dtype=np.float64) for name, ref in reference.items()}
        self._ref = {name: np.asarray(ref["shares"], dtype=np.float64) for name, ref in reference.items()}
        self._live = {name: np.zeros(len(edges) + 2) for name, edges in self._edges.items()}

    def observe(self, name: str, values: np.ndarray) -> None:
        """Count live ``values`` of feature (or ``score``) ``name``; unknown names are ignored."""
        edges = self._edges.get(name)
        if edges is not None:
            self._live[name] += _counts(values, edges)

    @property
    def observed(self) -> int:
        return int(max((c.sum() for c in self._live.values()), default=0))

    def report(self, *, reset: bool = True) -> dict[str, float]:
        """PSI per tracked name since the last report (names with no live value left out)."""
        out = {}
        for name, counts in self._live.items():
            total = counts.sum()
            if total > 0:
                out[name] = psi(self._ref[name], counts / total)
            if reset:
                counts[:] = 0
        return out
