"""Small featured payment frames and a fast tier fitted on them (about a second)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.features import FeatureStep
from finsecure.ml.train import FittedTier, fit_tier
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import sample_frame

SMALL: dict[str, dict[str, object]] = {
    "gbdt": {"n_estimators": 20, "num_leaves": 7},
    "iforest": {"n_estimators": 20},
    "hst": {"n_trees": 5, "height": 6},
}


def featured_payments(rows: int, seed: int) -> pl.DataFrame:
    """Sample payments through the feature step; label 1 on large amounts at night (about 5%)."""
    frame = sample_frame("payment", rows, entities=200, seed=seed, interval_s=30.0)
    rng = np.random.default_rng(seed)
    amount = frame["amount"].to_numpy() * np.where(rng.random(rows) < 0.05, 8.0, 1.0)
    frame = frame.with_columns(pl.Series("amount", amount))
    frame = frame.with_columns(label=(pl.col("amount") > 250).cast(pl.Int8))
    return FeatureStep(threads=1).process(Batch(Domain.payment, frame, source="test")).frame


@pytest.fixture(scope="session")
def payments() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Train, validation and test frames."""
    return featured_payments(3000, 1), featured_payments(1000, 2), featured_payments(1000, 3)


@pytest.fixture(scope="session")
def tier(payments: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]) -> FittedTier:
    train, validation, _ = payments
    return fit_tier(train, validation, "payment", params=SMALL)
