"""The model input: the same columns in training and serving, built from a featured batch.

A model reads a batch AFTER :class:`finsecure.features.FeatureStep` has appended its columns. Its input row
is, in order: the domain's numeric canonical fields (amount, bytes, duration...), the feature step's
columns (:data:`finsecure.features.FEATURE_COLUMNS`), optionally the hour of day and day of week, and each
categorical canonical field (service, channel, category...) as the rank of its value in a vocabulary
learned at training time (most frequent first; unseen or empty values are missing). The
:class:`DesignSpec` is saved with the model, so serving builds exactly the rows training saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features import FEATURE_COLUMNS, FEATURE_DESCRIPTIONS
from finsecure.ml.contract import FloatArray

__all__ = ["CATEGORICAL", "NUMERIC", "DesignSpec", "describe_feature"]

NUMERIC: Mapping[Domain, tuple[str, ...]] = {
    Domain.network: (
        "src_port",
        "dst_port",
        "duration_s",
        "bytes_out",
        "bytes_in",
        "packets_out",
        "packets_in",
        "wrong_fragments",
        "urgent_packets",
        "failed_logins",
        "logged_in",
    ),
    Domain.cloud: ("read_only", "mfa_used"),
    Domain.auth: ("mfa_used",),
    Domain.payment: ("amount", "card_present"),
}
"""Canonical numeric (and boolean) fields used as model inputs, per domain."""

CATEGORICAL: Mapping[Domain, tuple[str, ...]] = {
    Domain.network: ("protocol", "service", "conn_state", "direction"),
    Domain.cloud: ("service", "action", "outcome", "principal_type", "error_code"),
    Domain.auth: ("action", "outcome", "auth_method", "app", "failure_reason"),
    Domain.payment: ("channel", "merchant_category", "entry_mode", "auth_result"),
}
"""Canonical text fields turned into vocabulary ranks, per domain."""

_MAX_VOCAB = 200
_TIME_WORDS = {
    "time__hour": "Hour of the day (0-23, UTC) when it happened.",
    "time__weekday": "Day of the week when it happened (0 Monday to 6 Sunday).",
}


@dataclass(frozen=True)
class DesignSpec:
    """How to turn a featured frame of one domain into the model's ``float32`` matrix."""

    domain: Domain
    numeric: tuple[str, ...]
    time_features: bool = True
    vocab: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def learn(
        cls,
        frame: pl.DataFrame,
        domain: Domain | str,
        *,
        time_features: bool = True,
        extra: tuple[str, ...] = (),
    ) -> DesignSpec:
        """Learn the categorical vocabularies from a training frame (a column never filled is left out);
        ``extra`` numeric columns (e.g. label feedback) follow the domain's own.

        >>> frame = pl.DataFrame({"channel": ["pos", "pos", "ecommerce", None], "amount": [1.0, 2, 3, 4]})
        >>> spec = DesignSpec.learn(frame, "payment", time_features=False)
        >>> spec.vocab["channel"]
        ('pos', 'ecommerce')
        >>> spec.matrix(pl.DataFrame({"channel": ["ecommerce", "atm"], "amount": [5.0, 6.0]}))[:, :1].tolist()
        [[5.0], [6.0]]
        """
        d = Domain(domain)
        vocab: dict[str, tuple[str, ...]] = {}
        for column in CATEGORICAL[d]:
            if column not in frame.columns:
                continue
            counts = (
                frame.select(pl.col(column).cast(pl.String))
                .drop_nulls()
                .group_by(column)
                .len()
                .sort(["len", column], descending=[True, False])
                .head(_MAX_VOCAB)
            )
            if counts.height > 1:
                vocab[column] = tuple(counts[column].to_list())
        numeric = NUMERIC[d] + FEATURE_COLUMNS[d] + tuple(extra)
        return cls(domain=d, numeric=numeric, time_features=time_features, vocab=vocab)

    @property
    def feature_names(self) -> tuple[str, ...]:
        times = tuple(_TIME_WORDS) if self.time_features else ()
        return self.numeric + times + tuple(f"cat__{c}" for c in self.vocab)

    def matrix(self, frame: pl.DataFrame) -> FloatArray:
        """``float32`` of shape ``(rows, len(feature_names))``; absent columns and nulls become NaN."""
        exprs: list[pl.Expr] = []
        for name in self.numeric:
            if name in frame.columns:
                exprs.append(pl.col(name).cast(pl.Float32, strict=False).fill_nan(None).alias(name))
            else:
                exprs.append(pl.lit(None, pl.Float32).alias(name))
        if self.time_features:
            if "ts" in frame.columns:
                exprs.append(pl.col("ts").dt.hour().cast(pl.Float32).alias("time__hour"))
                exprs.append((pl.col("ts").dt.weekday() - 1).cast(pl.Float32).alias("time__weekday"))
            else:
                exprs += [pl.lit(None, pl.Float32).alias(n) for n in _TIME_WORDS]
        for column, words in self.vocab.items():
            name = f"cat__{column}"
            if column in frame.columns:
                mapping = pl.DataFrame(
                    {"_word": list(words), "_rank": np.arange(len(words), dtype=np.float32)},
                    schema={"_word": pl.String, "_rank": pl.Float32},
                )
                exprs.append(
                    pl.col(column)
                    .cast(pl.String)
                    .replace_strict(mapping["_word"], mapping["_rank"], default=None, return_dtype=pl.Float32)
                    .alias(name)
                )
            else:
                exprs.append(pl.lit(None, pl.Float32).alias(name))
        if frame.height == 0:
            return np.zeros((0, len(self.feature_names)), dtype=np.float32)
        out = frame.select(exprs).to_numpy(order="c")
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain.value,
            "numeric": list(self.numeric),
            "time_features": self.time_features,
            "vocab": {k: list(v) for k, v in self.vocab.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DesignSpec:
        return cls(
            domain=Domain(data["domain"]),
            numeric=tuple(str(x) for x in data["numeric"]),
            time_features=bool(data.get("time_features", True)),
            vocab={str(k): tuple(str(w) for w in v) for k, v in dict(data.get("vocab", {})).items()},
        )


def describe_feature(domain: Domain | str, name: str) -> str:
    """What a model input means in plain words.

    >>> describe_feature("payment", "cat__merchant_category")
    "The payment's merchant category."
    >>> describe_feature("payment", "amount")
    "The payment's amount."
    """
    d = Domain(domain)
    if name in FEATURE_DESCRIPTIONS[d]:
        return FEATURE_DESCRIPTIONS[d][name]
    if name in _TIME_WORDS:
        return _TIME_WORDS[name]
    from finsecure.ml.feedback import describe

    feedback = describe(name)
    if feedback is not None:
        return feedback
    from finsecure.graph.risk import describe as describe_graph

    graph = describe_graph(name)
    if graph is not None:
        return graph
    noun = {"payment": "payment", "auth": "sign-in", "cloud": "cloud call", "network": "connection"}[d.value]
    column = name.removeprefix("cat__")
    if name.startswith("cat__") or name in arrow_schema(d).names:
        return f"The {noun}'s {column.replace('_', ' ')}."
    return name
