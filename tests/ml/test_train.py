"""Choosing thresholds and the ensemble on scores of kinds of attack the model never saw (``novelty``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import polars as pl

from finsecure.ml.evaluate import nsl_kdd_protocol
from finsecure.ml.train import _unseen_kind_scores, fit_tier, kind_folds

from .conftest import SMALL


class _Recorder:
    """A stand-in model scoring each row with the share of training rows of the same kind (column 0)."""

    name = "recorder"

    def __init__(self) -> None:
        self.kinds: set[float] = set()

    def fit(self, X: np.ndarray, y: np.ndarray | None, **_: object) -> Self:
        self.kinds = set(X[:, 0].tolist())
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.array([1.0 if k in self.kinds else 0.0 for k in X[:, 0]], dtype=np.float32)


def test_unseen_kind_scores__each_bad_row_is_scored_by_a_model_that_never_saw_its_kind() -> None:
    kinds = ["a", "b", "c", "d", "e", "f"]
    train_kinds = pl.Series([None] * 6 + kinds * 3, dtype=pl.String)
    code = {k: float(i + 1) for i, k in enumerate(kinds)}
    X = np.array([[code.get(k, 0.0)] for k in train_kinds.to_list()], dtype=np.float32)
    y = (X[:, 0] > 0).astype(np.int32)
    val_kinds = pl.Series([None, None, None, *kinds], dtype=pl.String)
    X_val = np.array([[code.get(k, 0.0)] for k in val_kinds.to_list()], dtype=np.float32)
    y_val = (X_val[:, 0] > 0).astype(np.int32)
    built: list[_Recorder] = []

    def build() -> _Recorder:
        built.append(_Recorder())
        return built[-1]

    scores = _unseen_kind_scores(build, (X, y, train_kinds), (X_val, y_val, val_kinds), folds=3, seed=0)  # type: ignore[arg-type]
    assert len(built) == 3
    assert scores[3:].tolist() == [0.0] * 6  # every attack kind scored by a copy that never trained on it
    assert scores[:3].tolist() == [1.0] * 3  # good rows: every copy trained on good rows
    assert all(len(m.kinds - {0.0}) == 4 for m in built)  # each copy saw two thirds of the kinds


def test_kind_folds__deals_kinds_evenly_and_reproducibly() -> None:
    kinds = pl.Series([f"k{i % 9}" for i in range(90)] + [None] * 10)
    folds = kind_folds(kinds, 3, seed=4)
    assert np.bincount(folds[folds >= 0]).tolist() == [30, 30, 30]
    assert (folds[90:] == -1).all()
    assert folds.tolist() == kind_folds(kinds, 3, seed=4).tolist()


def test_fit_tier__novelty_changes_only_what_validation_chooses(
    payments: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
) -> None:
    train, validation, test = payments

    def named(frame: pl.DataFrame) -> pl.DataFrame:  # two kinds of bad payment, by amount
        kind = pl.when(pl.col("label") == 1).then(
            pl.when(pl.col("amount") > 400).then(pl.lit("huge")).otherwise(pl.lit("large"))
        )
        return frame.with_columns(kind=kind)

    plain = fit_tier(train, validation, "payment", params=SMALL)
    novel = fit_tier(named(train), named(validation), "payment", params=SMALL, novelty="kind", folds=2)
    served_plain, served_novel = plain.score(test), novel.score(test)
    # The served members are the same (trained on every training row); the choices on validation differ.
    np.testing.assert_allclose(served_plain["gbdt"], served_novel["gbdt"], atol=1e-6)
    assert plain.ensemble is not None
    assert novel.ensemble is not None
    assert plain.ensemble.voters() != novel.ensemble.voters()


def test_nsl_kdd_protocol__trains_on_every_attack_name(tmp_path: Path) -> None:
    names = ["neptune", "smurf", "satan", None, None, None]
    train = pl.DataFrame({"label": [1, 1, 1, 0, 0, 0] * 50, "label_detail": names * 50})
    parts = {"KDDTrain+": train, "KDDTest+": train.head(5), "KDDTest-21": train.head(3)}
    (protocol,) = nsl_kdd_protocol(parts, seed=1)
    assert protocol.train.height + protocol.validation.height == train.height
    assert set(protocol.train["label_detail"].drop_nulls()) == {"neptune", "smurf", "satan"}
    assert 0.1 < protocol.validation.height / train.height < 0.3
