"""Fitting the fast tier of one domain: members on a training split, threshold and ensemble on validation.

Nothing here sees a test split: :func:`fit_tier` takes a training and a validation frame only.

Unseen kinds of attack (``novelty``): a supervised model scores the kinds of attack it was trained on very
well and new kinds much worse, so weights and thresholds chosen on validation rows of known kinds trust it
too much. With ``novelty`` naming a column (e.g. the attack name), the kinds are dealt into ``folds``
groups; for each group a copy of every supervised member is trained WITHOUT that group's kinds and scores
the validation rows of that group (and a share of the normal ones). Those out-of-group scores, which look
like scores of attacks never seen before, choose the thresholds and the ensemble weights (cross-fitted
stacking); the members that serve are trained on every training row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.ml.catalog import get_spec
from finsecure.ml.contract import Model
from finsecure.ml.ensemble import FusionModel
from finsecure.ml.features import DesignSpec
from finsecure.ml.metrics import best_f1_threshold

__all__ = ["FittedTier", "fit_tier", "kind_folds", "score_column"]

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
    novelty: str | None = None,
    folds: int = 3,
) -> FittedTier:
    """Fit each kind on ``train`` (unsupervised ones on its label-0 rows when labels exist), pick each
    model's threshold (best F1) and fit the ensemble on ``validation``.

    ``novelty``: a column of ``train`` and ``validation`` naming the kind of each bad row (null for good
    rows); the thresholds and ensemble are then chosen on scores of kinds the scoring copy of a supervised
    model never saw (see the module docstring), split into ``folds`` groups of kinds.
    """
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
    if novelty is not None:
        for kind in tier.members:
            spec = get_spec(kind)
            if spec.supervised:
                val_scores[kind] = _unseen_kind_scores(
                    lambda spec=spec, kind=kind: spec.build(  # type: ignore[misc]
                        d.value, design.feature_names, **(params or {}).get(kind, {})
                    ),
                    (X, y, train[novelty]),
                    (X_val, y_val, validation[novelty]),
                    folds=folds,
                    seed=seed,
                )
    for kind, p in val_scores.items():
        tier.thresholds[kind] = best_f1_threshold(y_val, p)
    if len(tier.members) > 1 and len(np.unique(y_val)) > 1:
        names = tuple(score_column(tier.member_name(k)) for k in tier.members)
        Z = np.column_stack([val_scores[k] for k in tier.members])
        tier.ensemble = FusionModel(d.value, names).fit(Z, y_val)
        tier.thresholds["ensemble"] = best_f1_threshold(y_val, tier.ensemble.predict_proba(Z))
    return tier


def kind_folds(kinds: pl.Series, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each row's kind, dealt at random by ``seed``; -1 for rows without a kind.

    >>> kind_folds(pl.Series(["a", None, "b", "a"]), 2, 0).tolist()
    [0, -1, 1, 0]
    """
    names = sorted(str(n) for n in kinds.drop_nulls().unique().to_list())
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {name: int(order[i] % folds) for i, name in enumerate(names)}
    return np.array([-1 if n is None else fold_of[str(n)] for n in kinds.to_list()], dtype=np.int64)


def _unseen_kind_scores(
    build: Callable[[], Model],
    train: tuple[np.ndarray, np.ndarray, pl.Series],
    validation: tuple[np.ndarray, np.ndarray, pl.Series],
    *,
    folds: int,
    seed: int,
) -> np.ndarray:
    """Validation scores of a supervised model, each row scored by a copy trained without its kind's fold
    (the good validation rows are dealt over the folds at random)."""
    X, y, kinds = train
    X_val, y_val, val_kinds = validation
    all_kinds = pl.concat([kinds.cast(pl.String), val_kinds.cast(pl.String)])
    fold = kind_folds(all_kinds, folds, seed)
    fold_train, fold_val = fold[: len(kinds)], fold[len(kinds) :].copy()
    rng = np.random.default_rng(seed + 1)
    no_kind = fold_val < 0
    fold_val[no_kind] = rng.integers(0, folds, int(no_kind.sum()))
    out = np.zeros(len(y_val), dtype=np.float32)
    for k in range(folds):
        held = fold_val == k
        if not held.any():
            continue
        keep = fold_train != k
        seen = ~held
        model = build()
        if len(np.unique(y[keep])) < 2:  # every bad kind in this fold: nothing to learn from
            out[held] = 0.5
            continue
        model.fit(X[keep], y[keep], X_val=X_val[seen], y_val=y_val[seen])
        out[held] = model.predict_proba(X_val[held])
        logger.info("fold %d: scored %d validation rows of unseen kinds", k, int(held.sum()))
    return out
