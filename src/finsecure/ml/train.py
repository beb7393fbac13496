"""Fitting the fast tier of one domain: members on a training split, threshold and ensemble on validation.

Nothing here sees a test split: :func:`fit_tier` takes a training and a validation frame only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.ml.catalog import get_spec
from finsecure.ml.contract import Model
from finsecure.ml.ensemble import FusionModel
from finsecure.ml.features import DesignSpec
from finsecure.ml.metrics import best_f1_threshold

__all__ = ["FittedTier", "fit_tier", "score_column"]

logger = logging.getLogger(__name__)

FAST_KINDS: tuple[str, ...] = ("gbdt", "iforest", "hst")
_UNSUPERVISED_ROWS = 200_000


def score_column(name: str) -> str:
    """The column a model named ``name`` writes its score to.

    >>> score_column("payment_gbdt")
    'score__payment_gbdt'
    """
    return f"score__{name}"


@dataclass
class FittedTier:
    """The members, their validation scores, the ensemble and each model's threshold."""

    domain: Domain
    design: DesignSpec
    members: dict[str, Model] = field(default_factory=dict)
    ensemble: FusionModel | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""

    def member_name(self, kind: str) -> str:
        return f"{self.domain.value}_{kind}"

    def score(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Every member's and the ensemble's score for ``frame`` (a featured frame of this domain)."""
        X = self.design.matrix(frame)
        out = {kind: model.predict_proba(X) for kind, model in self.members.items()}
        if self.ensemble is not None:
            kinds = [n.removeprefix(f"score__{self.domain.value}_") for n in self.ensemble.feature_names]
            out["ensemble"] = self.ensemble.predict_proba(np.column_stack([out[k] for k in kinds]))
        return out


def fit_tier(
    train: pl.DataFrame,
    validation: pl.DataFrame,
    domain: Domain | str,
    *,
    kinds: Sequence[str] = FAST_KINDS,
    label: str = "label",
    time_features: bool = True,
    seed: int = 0,
    params: dict[str, dict[str, object]] | None = None,
    extra_features: tuple[str, ...] = (),
) -> FittedTier:
    """Fit each kind on ``train`` (unsupervised ones on its label-0 rows when labels exist), pick each
    model's threshold (best F1) and fit the ensemble on ``validation``."""
    from finsecure.ml.data import fingerprint

    d = Domain(domain)
    design = DesignSpec.learn(train, d, time_features=time_features, extra=extra_features)
    X = design.matrix(train)
    y = train[label].fill_null(0).cast(pl.Int32).to_numpy()
    X_val = design.matrix(validation)
    y_val = validation[label].fill_null(0).cast(pl.Int32).to_numpy()
    tier = FittedTier(d, design, fingerprint=fingerprint(X, y))
    rng = np.random.default_rng(seed)
    for kind in kinds:
        spec = get_spec(kind)
        model = spec.build(d.value, design.feature_names, **(params or {}).get(kind, {}))
        if spec.supervised:
            model.fit(X, y, X_val=X_val, y_val=y_val)
        else:
            normal = np.flatnonzero(y == 0)
            pick = (
                normal if len(normal) <= _UNSUPERVISED_ROWS else rng.choice(normal, _UNSUPERVISED_ROWS, False)
            )
            model.fit(X[np.sort(pick)], None)
        tier.members[kind] = model
        logger.info("fitted %s %s on %d rows", d.value, kind, len(X))
    val_scores = {kind: m.predict_proba(X_val) for kind, m in tier.members.items()}
    for kind, p in val_scores.items():
        tier.thresholds[kind] = best_f1_threshold(y_val, p)
    if len(tier.members) > 1 and len(np.unique(y_val)) > 1:
        names = tuple(score_column(tier.member_name(k)) for k in tier.members)
        Z = np.column_stack([val_scores[k] for k in tier.members])
        tier.ensemble = FusionModel(d.value, names).fit(Z, y_val)
        tier.thresholds["ensemble"] = best_f1_threshold(y_val, tier.ensemble.predict_proba(Z))
    return tier
