from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.features import FeatureStep
from finsecure.ml.data import DATASETS, DatasetInfo, iter_featured
from finsecure.ml.evaluate import (
    Protocol,
    check_no_overlap,
    evaluate_dataset,
    fraud_book_protocol,
    fraud_monthly_protocols,
    report_markdown,
    sparkov_protocol,
)
from finsecure.ml.metrics import card_precision_at_k, recall_at_fpr
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import sample_frame

UTC = dt.UTC


def _payments(start: dt.datetime, end: dt.datetime, rows: int = 4000, seed: int = 0) -> pl.DataFrame:
    interval = (end - start).total_seconds() / rows
    frame = sample_frame("payment", rows, entities=300, start=start, interval_s=interval, seed=seed)
    rng = np.random.default_rng(seed)
    amount = frame["amount"].to_numpy() * np.where(rng.random(rows) < 0.05, 8.0, 1.0)
    return frame.with_columns(pl.Series("amount", amount), label=pl.Series(amount > 250).cast(pl.Int8))


def test_fraud_protocols__train_and_test_windows_do_not_overlap() -> None:
    frame = _payments(dt.datetime(2018, 4, 1, tzinfo=UTC), dt.datetime(2018, 9, 1, tzinfo=UTC))
    book = fraud_book_protocol(frame)
    check_no_overlap(book)
    test = book.tests["book_test_week"]
    assert book.train["ts"].max() < dt.datetime(2018, 8, 1, tzinfo=UTC)
    assert test["ts"].min() >= dt.datetime(2018, 8, 8, tzinfo=UTC)
    assert test["ts"].max() < dt.datetime(2018, 8, 15, tzinfo=UTC)
    assert book.validation["ts"].max() < book.train["ts"].min()
    months = list(fraud_monthly_protocols(frame))
    assert [next(iter(p.tests)) for p in months] == [f"month_2018-0{m}" for m in (5, 6, 7, 8)]
    for protocol in months:
        check_no_overlap(protocol)
        (split,) = protocol.tests.values()
        assert pl.concat([protocol.train, protocol.validation])["ts"].max() < split["ts"].min()


def test_sparkov_protocol__holds_out_whole_cards_and_later_time() -> None:
    frame = _payments(dt.datetime(2023, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC))
    protocol = sparkov_protocol(frame)
    check_no_overlap(protocol)
    test = protocol.tests["holdout_cards"]
    fitted = pl.concat([protocol.train, protocol.validation])
    assert set(fitted["card_id"]).isdisjoint(test["card_id"])
    assert fitted["ts"].max() < test["ts"].min()


def test_check_no_overlap__refuses_overlapping_windows_and_shared_cards() -> None:
    frame = _payments(dt.datetime(2023, 1, 1, tzinfo=UTC), dt.datetime(2023, 3, 1, tzinfo=UTC), rows=500)
    early, late = frame[:300], frame[300:]
    with pytest.raises(ValueError, match="starts"):
        check_no_overlap(Protocol("p", late, late[:10], {"test": early}))
    with pytest.raises(ValueError, match="card_id values in train"):
        check_no_overlap(Protocol("p", early, early[:10], {"test": late}, entity="card_id"))
    book_like = Protocol("p", early, early[:10], {"test": late}, min_gap=dt.timedelta(days=7))
    with pytest.raises(ValueError, match="starts"):
        check_no_overlap(book_like)


def test_evaluate_dataset__reports_every_model_and_the_ensemble(tmp_path: Path) -> None:
    raw = _payments(dt.datetime(2023, 6, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC), rows=5000)
    featured = FeatureStep(threads=1).process(Batch(Domain.payment, raw, source="t")).frame

    def loader(info: DatasetInfo) -> dict[str, pl.DataFrame]:
        assert info.name == "sparkov"
        return {"all": featured}

    report = evaluate_dataset("sparkov", datasets_dir=tmp_path, kinds=("gbdt", "iforest"), loader=loader)
    assert report["dataset"] == "sparkov"
    assert set(report["splits"]) == {"holdout_cards"}
    models = report["splits"]["holdout_cards"]
    assert set(models) == {"gbdt", "iforest", "ensemble"}
    keys = {"accuracy", "roc_auc", "average_precision", "macro_f1", "recall_at_1pct_fpr", "n", "positives"}
    assert keys <= set(models["ensemble"])
    assert models["gbdt"]["average_precision"] > 0.8
    assert models["ensemble"]["n"] == report["windows"]["holdout_cards"]["test_rows"]
    json.dumps(report)
    markdown = report_markdown(report)
    assert "| ensemble |" in markdown
    assert "average_precision ≥ 0.95" in markdown


def test_card_precision_at_k__leaves_out_cards_found_on_earlier_days() -> None:
    days = [dt.datetime(2018, 8, 8, tzinfo=UTC), dt.datetime(2018, 8, 9, tzinfo=UTC)]
    frame = pl.DataFrame(
        {"ts": [days[0], days[0], days[1], days[1]], "card_id": ["a", "b", "a", "b"], "label": [1, 0, 1, 1]}
    )
    # Day 1: a is top and fraudulent (1/1). Day 2: a was already found, so b alone is ranked (1/1).
    assert card_precision_at_k(frame, np.array([0.9, 0.1, 0.9, 0.2]), k=1) == 1.0


def test_recall_at_fpr__counts_positives_above_the_allowed_negatives() -> None:
    y = np.array([0] * 100 + [1] * 4)
    p = np.concatenate([np.linspace(0, 0.5, 100), [0.6, 0.49, 0.7, 0.1]])
    assert recall_at_fpr(y, p, 0.01) == 0.5


def test_iter_featured__real_nsl_kdd_rows_go_through_the_feature_step(datasets_dir: Path) -> None:
    info = DATASETS["nsl-kdd"]
    first = next(iter_featured(datasets_dir / info.files["KDDTest-21"], info.format_name, chunk_rows=2_000))
    assert first.height == 2_000
    assert "dst_ip__count_5m" in first.columns or any(c.endswith("_5m") for c in first.columns)
    assert first["label"].sum() > 0
