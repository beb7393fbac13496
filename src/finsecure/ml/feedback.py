"""Features from confirmed labels that arrive late: how much known fraud an entity (a terminal) had.

Fraud is confirmed days after it happens (chargebacks, analysts' verdicts). A feature may only use what
was known at the time: for an event on day ``d`` it counts the labels of the entity's events on days
``[d - delay - w, d - delay)``. This is the fraud handbook's "terminal risk" with its 7-day delay; in
the live platform the same counts come from analysts' true/false-positive verdicts.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

__all__ = ["delayed_label_features", "describe", "feedback_columns"]

_PATTERN = re.compile(r"feedback__(?P<key>.+)_(?P<what>events|fraud_share)_(?P<days>\d+)d$")


def describe(name: str) -> str | None:
    """Plain words for a feedback column (``None`` for other names).

    >>> describe("feedback__terminal_id_fraud_share_7d")
    "Share of this terminal's events confirmed as fraud in the 7 days that ended a week before."
    """
    match = _PATTERN.match(name)
    if match is None:
        return None
    who = match["key"].removesuffix("_id").replace("_", " ")
    days = int(match["days"])
    span = "day" if days == 1 else f"{days} days"
    if match["what"] == "events":
        return f"How many events this {who} had in the {span} that ended a week before."
    return f"Share of this {who}'s events confirmed as fraud in the {span} that ended a week before."


def feedback_columns(key: str, windows: tuple[int, ...] = (1, 7, 30)) -> tuple[str, ...]:
    """The columns :func:`delayed_label_features` adds.

    >>> feedback_columns("terminal_id", (7,))
    ('feedback__terminal_id_events_7d', 'feedback__terminal_id_fraud_share_7d')
    """
    out: list[str] = []
    for w in windows:
        out += [f"feedback__{key}_events_{w}d", f"feedback__{key}_fraud_share_{w}d"]
    return tuple(out)


def delayed_label_features(
    frame: pl.DataFrame,
    key: str,
    *,
    label: str = "label",
    delay_days: int = 7,
    windows: tuple[int, ...] = (1, 7, 30),
) -> pl.DataFrame:
    """``frame`` with, per window ``w``, the entity's event count and fraud share over the ``w`` days that
    ended ``delay_days`` before the event's day (whole UTC days; no event's own label is ever used).

    >>> import datetime as dt
    >>> days = [dt.datetime(2018, 8, d, tzinfo=dt.UTC) for d in (1, 1, 9, 9)]
    >>> f = pl.DataFrame({"ts": days, "terminal_id": ["t", "t", "t", "u"], "label": [1, 0, 0, 0]})
    >>> out = delayed_label_features(f, "terminal_id", windows=(7,))
    >>> out["feedback__terminal_id_fraud_share_7d"].to_list()
    [None, None, 0.5, None]
    """
    day = (pl.col("ts").dt.epoch("d")).alias("_day")
    keyed = frame.select(
        pl.col(key).cast(pl.String).alias("_key"), day, pl.col(label).fill_null(0).alias("_y")
    )
    _, uniques = np.unique(keyed["_key"].fill_null("").to_numpy().astype(str), return_inverse=True)
    days = keyed["_day"].to_numpy().astype(np.int64)
    first = int(days.min()) if len(days) else 0
    day_index = days - first
    n_days = int(day_index.max()) + 1 if len(days) else 1
    n_keys = int(uniques.max()) + 1 if len(uniques) else 1
    events = np.zeros((n_keys, n_days + 1), dtype=np.float64)
    frauds = np.zeros((n_keys, n_days + 1), dtype=np.float64)
    np.add.at(events, (uniques, day_index + 1), 1.0)
    np.add.at(frauds, (uniques, day_index + 1), keyed["_y"].to_numpy().astype(np.float64))
    # Cumulative sums over days: column j + 1 holds the totals of days 0..j.
    events_cum, frauds_cum = np.cumsum(events, axis=1), np.cumsum(frauds, axis=1)
    missing_key = frame[key].is_null().to_numpy()
    columns = []
    for w in windows:
        hi = np.clip(day_index - delay_days, 0, n_days)  # days < d - delay
        lo = np.clip(day_index - delay_days - w, 0, n_days)  # days >= d - delay - w
        n = events_cum[uniques, hi] - events_cum[uniques, lo]
        k = frauds_cum[uniques, hi] - frauds_cum[uniques, lo]
        share = np.where(n > 0, k / np.maximum(n, 1.0), np.nan)
        n = np.where(missing_key, np.nan, n)
        share = np.where(missing_key, np.nan, share)
        columns += [
            pl.Series(f"feedback__{key}_events_{w}d", n, dtype=pl.Float64),
            pl.Series(f"feedback__{key}_fraud_share_{w}d", share, dtype=pl.Float64).fill_nan(None),
        ]
    return frame.with_columns(columns)
