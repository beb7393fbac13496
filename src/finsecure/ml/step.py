"""The scoring step: every batch scored by its domain's promoted models through ONNX Runtime.

For a batch of domain ``d`` the step adds:

* ``score__<model name>`` per promoted model of ``d`` (e.g. ``score__payment_gbdt``);
* ``score``: the ensemble's score when one is promoted for ``d``, else the highest member score; also
  copied to ``score__<d>_<purpose>`` (``score__payment_fraud``, ``score__network_intrusion``...), the
  column ``model`` detection rules read;
* ``model_name`` / ``model_version``: which model gave ``score``;
* ``explanation`` (text, only for rows at or above the deciding model's threshold): the features that
  pushed the score up most (LightGBM contributions) in plain words, and which models voted.

Models are re-read from the registry between batches (at most every ``reload_interval_s``), so a newly
promoted version serves from the next batch on; no batch is dropped or scored half by each. A version that
fails to load is logged and the previous one keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.ml.contract import ModelError
from finsecure.ml.drift import DriftTracker
from finsecure.ml.features import describe_feature
from finsecure.ml.gbdt import top_contributions
from finsecure.ml.registry import LoadedModel, load_artefact
from finsecure.pipeline.batch import Batch, Step

__all__ = ["PURPOSE", "Resolver", "ScoringStep", "registry_resolver"]

logger = logging.getLogger(__name__)

#: ``score__<domain>_<purpose>`` is the domain's final score, as detection rules name it.
PURPOSE: dict[str, str] = {"payment": "fraud", "network": "intrusion", "auth": "takeover", "cloud": "misuse"}

#: Returns the artefact folders that should be served now (one per model name).
Resolver = Callable[[], Sequence[Path | str]]


def registry_resolver(session_factory: Callable[[], object]) -> Resolver:
    """A resolver reading the production versions from the ``models`` table."""
    from sqlalchemy.orm import Session

    from finsecure.ml import registry

    def resolve() -> list[Path | str]:
        session = session_factory()
        if not isinstance(session, Session):  # pragma: no cover - wiring error
            raise TypeError("session_factory must return a SQLAlchemy Session")
        with session:
            return [row.artefact_path for row in registry.production(db_session=session)]

    return resolve


class ScoringStep(Step):
    """Scores batches with the promoted models (see the module docstring).

    Parameters
    ----------
    resolver
        Where to find the artefacts to serve; ``None`` serves only ``models``.
    models
        Artefacts served from the start (tests, benchmarks).
    reload_interval_s
        How often to ask the resolver, at most (checked between batches).
    threads
        ONNX Runtime intra-op threads per model.
    explain_top
        How many features an explanation names.
    explain_max_rows
        At most this many flagged rows per batch get feature reasons (the highest scores; the others say
        which models flagged them), which bounds the cost of a batch full of alerts.
    on_drift
        Receives ``(model name, version, feature or "score", PSI)`` rows every ``drift_interval_s``
        (see :mod:`finsecure.ml.drift`); the platform writes them to ``system_metrics``.
    drift_sample
        At most this many rows per batch are counted for drift.
    """

    def __init__(
        self,
        resolver: Resolver | None = None,
        *,
        models: Sequence[LoadedModel] = (),
        reload_interval_s: float = 5.0,
        threads: int = 2,
        explain_top: int = 3,
        explain_max_rows: int = 64,
        on_drift: Callable[[list[tuple[str, int, str, float]]], None] | None = None,
        drift_interval_s: float = 60.0,
        drift_sample: int = 2_000,
        step_id: str = "scoring",
    ) -> None:
        self.step_id = step_id
        self.resolver = resolver
        self.reload_interval_s = reload_interval_s
        self.threads = threads
        self.explain_top = explain_top
        self.explain_max_rows = explain_max_rows
        self.on_drift = on_drift
        self.drift_interval_s = drift_interval_s
        self.drift_sample = drift_sample
        self._drift: dict[tuple[str, int], DriftTracker] = {}
        self._next_drift = time.monotonic() + drift_interval_s
        self._models: dict[str, LoadedModel] = {m.name: m for m in models if not m.is_sequence}
        self._sequence_paths: dict[Path, bool] = {}
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.reloads = 0
        self.load_errors = 0

    # --- registry ----------------------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, LoadedModel]:
        """The models served now, by name."""
        return dict(self._models)

    def refresh(self, *, force: bool = False) -> bool:
        """Ask the resolver for the production artefacts and load what changed; True when something did."""
        now = time.monotonic()
        if self.resolver is None or (not force and now < self._next_check):
            return False
        self._next_check = now + self.reload_interval_s
        try:
            wanted = [Path(p) for p in self.resolver()]
        except Exception:  # the registry being unreachable must not stop scoring with what we have
            logger.exception("scoring: could not read the model registry; keeping the current models")
            return False
        with self._lock:
            current = {m.path.resolve(): m for m in self._models.values()}
            served: dict[str, LoadedModel] = {}
            failed: set[str] = set()
            for path in wanted:
                model = current.get(path.resolve())
                if model is None:
                    if self._is_sequence(path):
                        continue  # the deep tier's SequenceScoringStep serves sequence models
                    try:
                        model = load_artefact(path, intra_op_threads=self.threads)
                    except ModelError as exc:
                        self.load_errors += 1
                        failed.add(self._name_of(path) or str(path))
                        logger.error("scoring: refused model artefact %s: %s", path, exc)
                        continue
                    logger.info("scoring: now serving %s v%d", model.name, model.version)
                served[model.name] = model
            for name in failed:  # a version that cannot load leaves the previous one serving
                if name in self._models and name not in served:
                    served[name] = self._models[name]
            changed = {n: m.path for n, m in served.items()} != {n: m.path for n, m in self._models.items()}
            if changed:
                self.reloads += 1
            self._models = served
        return changed

    def _is_sequence(self, path: Path) -> bool:
        key = path.resolve()
        if key not in self._sequence_paths:
            try:
                self._sequence_paths[key] = "history" in json.loads((path / "metadata.json").read_text())
            except (OSError, ValueError, TypeError):
                return False  # the loader reports what is wrong with it
        return self._sequence_paths[key]

    @staticmethod
    def _name_of(path: Path) -> str | None:
        try:
            return str(json.loads((path / "metadata.json").read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- scoring -----------------------------------------------------------------------------------------
    def process(self, batch: Batch) -> Batch:
        self.refresh()
        if self.on_drift is not None and time.monotonic() >= self._next_drift:
            self.report_drift()
        domain = Domain(batch.domain).value
        with self._lock:
            models = [m for m in self._models.values() if m.metadata["domain"] == domain]
        if not models or batch.frame.height == 0:
            return batch
        members = sorted((m for m in models if m.kind != "ensemble"), key=lambda m: m.name)
        fusions = [m for m in models if m.kind == "ensemble"]
        frame = batch.frame
        matrices: dict[str, np.ndarray] = {}
        scores: dict[str, np.ndarray] = {}
        for model in [*members, *fusions]:
            if model.scorer.rank != 2:
                continue  # sequence models are served by the deep tier's own step
            key = json.dumps(model.metadata["design"], sort_keys=True)
            if model.kind == "ensemble":
                X = model.design.matrix(frame)
            else:
                if key not in matrices:
                    matrices[key] = model.design.matrix(frame)
                X = matrices[key]
            p = model.scorer.predict_proba(X)
            scores[model.name] = p
            self._observe(model, X, p)
            frame = frame.with_columns(pl.Series(f"score__{model.name}", p, dtype=pl.Float32))
        if not scores:
            return batch
        deciding = next((m for m in fusions if m.name in scores), None)
        if deciding is None:
            stacked = np.column_stack([scores[m.name] for m in members if m.name in scores])
            best = stacked.argmax(axis=1)
            final = stacked[np.arange(len(best)), best]
            served = [m for m in members if m.name in scores]
            name_col = np.array([served[i].name for i in best], dtype=object)
            version_col = np.array([served[i].version for i in best], dtype=np.int32)
            thresholds = np.array([served[i].threshold for i in best])
        else:
            final = scores[deciding.name]
            name_col = np.full(len(final), deciding.name, dtype=object)
            version_col = np.full(len(final), deciding.version, dtype=np.int32)
            thresholds = np.full(len(final), deciding.threshold)
        flagged = np.flatnonzero(final >= thresholds)
        explanation = np.full(len(final), None, dtype=object)
        if flagged.size:
            for row, text in zip(
                flagged, self._explain(frame, members, scores, flagged, matrices), strict=True
            ):
                explanation[row] = text
        purpose = PURPOSE.get(domain, "risk")
        frame = frame.with_columns(
            pl.Series("score", final.astype(np.float64), dtype=pl.Float64),
            pl.Series(f"score__{domain}_{purpose}", final.astype(np.float64), dtype=pl.Float64),
            pl.Series("model_name", name_col.tolist(), dtype=pl.String),
            pl.Series("model_version", version_col, dtype=pl.Int32),
            pl.Series("explanation", explanation.tolist(), dtype=pl.String),
        )
        return batch.with_frame(frame)

    def _observe(self, model: LoadedModel, X: np.ndarray, p: np.ndarray) -> None:
        """Count a sample of this batch's inputs and scores for drift."""
        if self.on_drift is None:
            return
        key = (model.name, model.version)
        tracker = self._drift.get(key)
        if tracker is None:
            reference = model.metadata.get("extra", {}).get("reference")
            if not reference:
                return
            tracker = self._drift[key] = DriftTracker(reference)
        rows = slice(0, self.drift_sample)
        tracker.observe("score", p[rows])
        for i, name in enumerate(model.design.feature_names):
            tracker.observe(name, X[rows, i])

    def report_drift(self) -> list[tuple[str, int, str, float]]:
        """PSI rows since the last report, for every tracked model (and hand them to ``on_drift``)."""
        self._next_drift = time.monotonic() + self.drift_interval_s
        out = [
            (name, version, feature, value)
            for (name, version), tracker in self._drift.items()
            for feature, value in tracker.report().items()
        ]
        served = {(m.name, m.version) for m in self._models.values()}
        self._drift = {k: v for k, v in self._drift.items() if k in served}
        if out and self.on_drift is not None:
            try:
                self.on_drift(out)
            except Exception:  # drift metrics must never stop scoring
                logger.exception("scoring: could not record drift metrics")
        return out

    def _explain(
        self,
        frame: pl.DataFrame,
        members: list[LoadedModel],
        scores: dict[str, np.ndarray],
        rows: np.ndarray,
        matrices: dict[str, np.ndarray],
    ) -> list[str]:
        """Plain-words reasons for the flagged ``rows``."""
        reasons: list[list[str]] = [[] for _ in rows]
        explainer = next((m for m in members if m.explainer is not None and m.name in scores), None)
        if explainer is not None:
            key = json.dumps(explainer.metadata["design"], sort_keys=True)
            top = np.argsort(-scores[explainer.name][rows], kind="stable")[: self.explain_max_rows]
            X = matrices[key][rows[top]]
            contrib = explainer.explainer.contributions(X)  # type: ignore[union-attr]
            names = explainer.design.feature_names
            for j, (i, row) in enumerate(zip(top, rows[top], strict=True)):
                for feature, _push in top_contributions(contrib[j], names, k=self.explain_top):
                    column = feature.removeprefix("cat__")
                    value = frame[column][int(row)] if column in frame.columns else X[j, names.index(feature)]
                    reasons[i].append(_reason(explainer.design.domain, feature, value))
        texts = []
        for i, row in enumerate(rows):
            voted = [m.name for m in members if m.name in scores and scores[m.name][row] >= m.threshold]
            parts = []
            if reasons[i]:
                parts.append("Main reasons: " + "; ".join(reasons[i]) + ".")
            if voted:
                parts.append("Models that flagged it: " + ", ".join(voted) + ".")
            texts.append(" ".join(parts) or "Scored as risky by the models.")
        return texts


def _reason(domain: Domain, feature: str, value: object) -> str:
    """``"<what the feature means>: <its value here>"``.

    >>> _reason(Domain.payment, "card_id__count_1h", 6.0)
    'How many payments this card had in the last hour (counted by the minute), this one included: 6'
    """
    description = describe_feature(domain, feature).rstrip(".")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        shown = "unknown"
    elif isinstance(value, bool):
        shown = "yes" if value else "no"
    elif not isinstance(value, int | float):
        shown = str(value)
    elif float(value).is_integer():
        shown = f"{int(value):,}"
    else:
        shown = f"{value:,.2f}"
    return f"{description}: {shown}"
