"""Evaluation measures: ROC-AUC, average precision, accuracy, macro-F1, recall at 1% FPR, confusion matrix,
and the fraud handbook's card precision@k per day."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

__all__ = ["best_f1_threshold", "card_precision_at_k", "classification_metrics", "recall_at_fpr"]


def recall_at_fpr(y: np.ndarray, p: np.ndarray, fpr: float = 0.01) -> float:
    """Share of bad rows caught when the threshold lets through at most ``fpr`` of the good rows.

    >>> recall_at_fpr(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9, 0.25]), fpr=0.0)
    0.5
    """
    y = np.asarray(y).astype(bool)
    neg, pos = np.sort(np.asarray(p)[~y]), np.asarray(p)[y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allowed = int(np.floor(fpr * len(neg)))
    # A threshold strictly above the (allowed+1)-th highest negative score.
    cut = neg[len(neg) - 1 - allowed]
    return float(np.mean(pos > cut))


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The score threshold with the best F1 on (validation) labels; 0.5 without both classes.

    >>> best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))  # F1 0.8 beats 0.67 at 0.8
    0.35
    """
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """The report's measures for labels ``y`` and scores ``p`` (decisions at ``p >= threshold``).

    >>> m = classification_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.6, 0.7]), 0.65)
    >>> m["accuracy"], m["roc_auc"], m["confusion_matrix"]
    (1.0, 1.0, [[2, 0], [0, 2]])
    """
    from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    decision = (p >= threshold).astype(int)
    both = len(np.unique(y)) > 1
    return {
        "accuracy": float(np.mean(decision == y)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
        "macro_f1": float(f1_score(y, decision, average="macro", zero_division=0)),
        "recall_at_1pct_fpr": recall_at_fpr(y, p, 0.01),
        "threshold": float(threshold),
        "n": len(y),
        "positives": int(y.sum()),
        "confusion_matrix": confusion_matrix(y, decision, labels=[0, 1]).tolist(),
    }


def card_precision_at_k(
    frame: pl.DataFrame, score: np.ndarray, *, k: int = 100, card: str = "card_id"
) -> float:
    """The fraud handbook's card precision@k, averaged over days.

    Each day, cards are ranked by their highest score of the day; precision is the share of the top ``k``
    with a fraud that day. As in the book, cards found compromised on an earlier day (a true positive in
    an earlier top ``k``) are left out of later days.

    >>> import datetime as dt
    >>> f = pl.DataFrame({"ts": [dt.datetime(2018, 8, 8, h) for h in (1, 2, 3)], "card_id": ["a", "b", "c"],
    ...                   "label": [1, 0, 0]})
    >>> card_precision_at_k(f, np.array([0.9, 0.1, 0.5]), k=2)
    0.5
    """
    days = frame.select(
        pl.col("ts").dt.date().alias("day"),
        pl.col(card).alias("card"),
        pl.col("label").fill_null(0).alias("y"),
    ).with_columns(pl.Series("p", np.asarray(score, dtype=np.float64)))
    per_card = days.group_by("day", "card").agg(pl.col("p").max(), pl.col("y").max()).sort("day")
    found: set[str] = set()
    precisions = []
    for (_day,), group in per_card.group_by("day", maintain_order=True):
        candidates = group.filter(~pl.col("card").is_in(list(found))).sort("p", descending=True).head(k)
        hits = candidates.filter(pl.col("y") == 1)
        precisions.append(hits.height / k)
        found.update(hits["card"].to_list())
    return float(np.mean(precisions)) if precisions else float("nan")
