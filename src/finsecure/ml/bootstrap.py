"""Real models on a fresh machine: the fast tier trained on the built-in simulator at first start.

``make run`` must score with real models without PyTorch and without the shared datasets (see
``docs/decisions/0002-ml-artefacts.md``). When the registry has no model in production, the platform calls
:func:`ensure_models` in a background thread: a seeded simulated bank day goes through the same feature
step as the live stream, the fast tier (LightGBM, Isolation Forest, half-space trees and their ensemble)
is fitted per domain on a random 80% of the day and validated on the rest, registered and promoted. The
scoring step picks the models up at its next registry check; until then events flow unscored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from finsecure.event.schemas import Domain
from finsecure.features import FeatureStep
from finsecure.ml import registry
from finsecure.ml.drift import reference_bins
from finsecure.ml.features import DesignSpec
from finsecure.ml.metrics import classification_metrics
from finsecure.ml.train import FAST_KINDS, FittedTier, fit_tier
from finsecure.model.models import ModelVersion
from finsecure.pipeline.batch import Batch

__all__ = ["ensure_models", "fit_simulated", "register_tier", "simulated_frames", "train_simulated"]

logger = logging.getLogger(__name__)


def simulated_frames(
    *, customers: int = 10_000, hours: float = 24.0, seed: int = 7
) -> dict[Domain, pl.DataFrame]:
    """A seeded simulated run, featured, one frame per domain (in time order)."""
    from finsecure.sim import SimConfig, SimulatorSource

    source = SimulatorSource(SimConfig(customers=customers, duration_s=hours * 3600.0, seed=seed))
    step = FeatureStep()
    parts: dict[Domain, list[pl.DataFrame]] = {}
    try:
        for chunk in source.chunks():
            if chunk.frame.height:
                parts.setdefault(chunk.domain, []).append(
                    step.process(Batch(chunk.domain, chunk.frame, source="sim")).frame
                )
    finally:
        step.close()
        source.close()
    return {d: pl.concat(frames, how="vertical_relaxed") for d, frames in parts.items()}


def register_tier(
    *,
    db_session: Session,
    data_dir: Path,
    tier: FittedTier,
    validation: pl.DataFrame,
    dataset: str,
    promote: bool,
    label: str = "label",
) -> list[ModelVersion]:
    """Register every member and the ensemble of ``tier`` (metrics on ``validation``), optionally promote."""
    y = validation[label].fill_null(0).cast(pl.Int32).to_numpy()
    scores = tier.score(validation)
    X_val = tier.design.matrix(validation)
    # Reference distributions for drift (finsecure.ml.drift): every input and the score, on validation.
    inputs = {name: reference_bins(X_val[:, i]) for i, name in enumerate(tier.design.feature_names)}
    rows = []
    for kind, model in tier.members.items():
        metrics = _clean(classification_metrics(y, scores[kind], tier.thresholds[kind]))
        rows.append(
            registry.register(
                db_session=db_session,
                data_dir=data_dir,
                name=tier.member_name(kind),
                model=model,
                design=tier.design,
                data_fingerprint=tier.fingerprint,
                metrics=metrics,
                threshold=tier.thresholds[kind],
                dataset=dataset,
                extra={"reference": {**inputs, "score": reference_bins(scores[kind])}},
            )
        )
    if tier.ensemble is not None:
        design = DesignSpec(tier.domain, numeric=tier.ensemble.feature_names, time_features=False, vocab={})
        rows.append(
            registry.register(
                db_session=db_session,
                data_dir=data_dir,
                name=tier.member_name("ensemble"),
                model=tier.ensemble,
                design=design,
                data_fingerprint=tier.fingerprint,
                metrics=_clean(classification_metrics(y, scores["ensemble"], tier.thresholds["ensemble"])),
                threshold=tier.thresholds["ensemble"],
                dataset=dataset,
                extra={
                    "weights": tier.ensemble.voters(),
                    "reference": {
                        **{f"score__{tier.member_name(k)}": reference_bins(scores[k]) for k in tier.members},
                        "score": reference_bins(scores["ensemble"]),
                    },
                },
            )
        )
    if promote:
        for row in rows:
            registry.promote(db_session=db_session, name=row.name, version=row.version)
    return rows


def _clean(metrics: dict[str, object]) -> dict[str, object]:
    """JSON-safe metrics (NaN becomes None: PostgreSQL JSONB refuses NaN)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()}


def fit_simulated(
    *, kinds: Sequence[str] = FAST_KINDS, customers: int = 10_000, hours: float = 24.0, seed: int = 7
) -> list[tuple[FittedTier, pl.DataFrame]]:
    """The fast tier of every domain fitted on a simulated day, with each domain's validation rows."""
    from finsecure.graph.risk import GRAPH_RISK_COLUMNS, risk_history

    fitted = []
    for domain, frame in simulated_frames(customers=customers, hours=hours, seed=seed).items():
        # propagated graph risk as the live pipeline adds it, from earlier hours' labels only
        frame = risk_history(frame, domain, period_s=3600.0, window_s=hours * 3600.0)
        # Campaigns come in bursts: a random (seeded) 80/20 split gives both sides labelled events.
        is_val = pl.Series(np.random.default_rng(seed).random(frame.height) < 0.2)
        train, validation = frame.filter(~is_val), frame.filter(is_val)
        if int(train["label"].fill_null(0).sum()) < 10 or int(validation["label"].fill_null(0).sum()) < 5:
            logger.warning("simulated %s: too few labelled events to train on; skipped", domain.value)
            continue
        extra = GRAPH_RISK_COLUMNS[domain]
        tier = fit_tier(train, validation, domain, kinds=kinds, seed=seed, extra_features=extra)
        fitted.append((tier, validation))
    return fitted


def _dataset(customers: int, hours: float, seed: int) -> str:
    return f"simulated (seed {seed}, {customers} customers, {hours:g} h)"


def train_simulated(
    *,
    db_session: Session,
    data_dir: Path,
    kinds: Sequence[str] = FAST_KINDS,
    customers: int = 10_000,
    hours: float = 24.0,
    seed: int = 7,
    promote: bool = True,
) -> list[ModelVersion]:
    """Fit, register (and promote) the fast tier of every domain on a simulated day."""
    rows: list[ModelVersion] = []
    for tier, validation in fit_simulated(kinds=kinds, customers=customers, hours=hours, seed=seed):
        rows += register_tier(
            db_session=db_session,
            data_dir=data_dir,
            tier=tier,
            validation=validation,
            dataset=_dataset(customers, hours, seed),
            promote=promote,
        )
    return rows


_REGISTER_ATTEMPTS = 5


def ensure_models(
    session_factory: Callable[[], Session],
    data_dir: Path,
    *,
    customers: int = 10_000,
    hours: float = 24.0,
    kinds: Sequence[str] = FAST_KINDS,
    seed: int = 7,
) -> list[ModelVersion]:
    """Train and promote the simulated fast tier when nothing is in production (first start).

    Fitting happens outside any transaction (it takes a while, and SQLite has one writer); each
    domain's models are then registered and promoted in one short transaction.
    """
    with session_factory() as session:
        if registry.production(db_session=session):
            return []
    logger.info("no model in production: training the fast tier on a simulated day")
    rows: list[ModelVersion] = []
    for tier, validation in fit_simulated(kinds=kinds, customers=customers, hours=hours, seed=seed):
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                with session_factory() as session, session.begin():
                    rows += register_tier(
                        db_session=session,
                        data_dir=data_dir,
                        tier=tier,
                        validation=validation,
                        dataset=_dataset(customers, hours, seed),
                        promote=True,
                    )
                break
            except OperationalError:
                # SQLite has one writer and the live pipeline writes all the time: a busy database only
                # means "later" (a version folder left by the failed try is replaced on the next one)
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
                logger.warning("the database is busy; registering the first models again shortly")
                time.sleep(2.0 * 2**attempt)
    logger.info("trained and promoted %d models on simulated data", len(rows))
    return rows
