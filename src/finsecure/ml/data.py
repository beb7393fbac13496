"""Training and evaluation data: a dataset file replayed through the SAME code as the live pipeline.

A raw file is read by its YAML mapping (:func:`finsecure.ingest.sources.open_source`), every chunk goes
through a fresh :class:`~finsecure.features.FeatureStep` in file order, and the featured rows are kept. So a
model trains on exactly the columns the pipeline computes when it serves (no train/serve skew). A new
dataset is evaluable by adding its YAML mapping and one :class:`DatasetInfo` entry (or calling
:func:`featured_frame` with a path and a format name).

The featured frame is cached as Parquet under ``<data_dir>/cache/ml`` keyed by the file's size and
modification time, so a second evaluation does not replay the file again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.features import FeatureStep
from finsecure.ingest.sources import open_source
from finsecure.pipeline.batch import Batch

__all__ = ["DATASETS", "DatasetInfo", "featured_frame", "fingerprint", "iter_featured"]


@dataclass(frozen=True)
class DatasetInfo:
    """A real dataset: its files (relative to the datasets directory) and mapping."""

    name: str
    format_name: str
    files: dict[str, str]
    """Part name (e.g. ``KDDTrain+``) to file path."""
    label: str = "label"
    time_features: bool = True
    """False where timestamps are synthetic (NSL-KDD): the hour of day would mean nothing."""
    feedback_key: str | None = None
    """Entity whose confirmed fraud, known 7 days late, becomes features (:mod:`finsecure.ml.feedback`)."""
    params: dict[str, dict[str, object]] = field(default_factory=dict)
    """Hyper-parameters per model kind for this dataset (default: the serving defaults)."""
    novelty: str | None = None
    """Column naming each bad row's kind (attack name): the ensemble is then chosen on scores of kinds the
    model did not see in training (:func:`finsecure.ml.train.fit_tier`), as the test files hold new ones."""


_LARGER_GBDT: dict[str, object] = {"n_estimators": 300, "learning_rate": 0.05}
"""Up to 300 trees (early stopping decides) where the payment data is large enough to use them."""

DATASETS: dict[str, DatasetInfo] = {
    "nsl-kdd": DatasetInfo(
        "nsl-kdd",
        "nsl-kdd",
        {
            "KDDTrain+": "nsl-kdd/KDDTrain+.txt.gz",
            "KDDTest+": "nsl-kdd/KDDTest+.txt.gz",
            "KDDTest-21": "nsl-kdd/KDDTest-21.txt.gz",
        },
        time_features=False,
        novelty="label_detail",
    ),
    "fraud-handbook": DatasetInfo(
        "fraud-handbook",
        "fraud-handbook",
        {"all": "fraud-handbook/transactions_2018-04-01_to_2018-08-31.csv.gz"},
        feedback_key="terminal_id",
        params={"gbdt": _LARGER_GBDT},
    ),
    "sparkov": DatasetInfo(
        "sparkov", "sparkov", {"all": "sparkov-geo/transactions_2023.csv.gz"}, params={"gbdt": _LARGER_GBDT}
    ),
}
"""Datasets ``finsecure evaluate`` knows by name."""


def iter_featured(path: Path, format_name: str, *, chunk_rows: int = 50_000) -> Iterator[pl.DataFrame]:
    """Featured frames of a raw file, chunk by chunk, in file order (rejected records are left out)."""
    source = open_source(path, format_name, chunk_rows=chunk_rows)
    step = FeatureStep()
    try:
        for seq, chunk in enumerate(source.chunks()):
            if chunk.frame.height == 0:
                continue
            out = step.process(Batch(chunk.domain, chunk.frame, source=source.source_id, seq=seq))
            yield out.frame
    finally:
        step.close()
        source.close()


def featured_frame(path: Path, format_name: str, *, cache_dir: Path | None = None) -> pl.DataFrame:
    """The whole file, featured (see the module docstring); cached under ``cache_dir`` when given."""
    cache: Path | None = None
    if cache_dir is not None:
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v1".encode()).hexdigest()[
            :16
        ]
        cache = cache_dir / f"{path.name}.{key}.parquet"
        if cache.exists():
            return pl.read_parquet(cache)
    frame = pl.concat(list(iter_featured(path, format_name)), how="vertical_relaxed")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        frame.write_parquet(tmp)
        tmp.replace(cache)
    return frame


def fingerprint(X: np.ndarray, y: np.ndarray | None = None) -> str:
    """A short hash of the training matrix and labels (the model's training-data fingerprint).

    >>> fingerprint(np.zeros((2, 2), np.float32)) == fingerprint(np.zeros((2, 2), np.float32))
    True
    """
    h = hashlib.sha256()
    h.update(str(X.shape).encode())
    h.update(np.ascontiguousarray(X).tobytes())
    if y is not None:
        h.update(np.ascontiguousarray(y).tobytes())
    return "sha256:" + h.hexdigest()[:32]
