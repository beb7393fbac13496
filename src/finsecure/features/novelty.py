"""Novelty flags: the first time one entity is seen with another (card x merchant, user x device ...).

Semantics (the reference implementation computes exactly this)
-------------------------------------------------------------
``novel__<pair>`` is true when the pair ``(left, right)`` has not been processed before, or was last
processed more than ``novelty_ttl_s`` before this row's clamped time (see
:mod:`finsecure.features.config`); false when it was; null when either side is null. The pair's
time is the newest clamped time of its rows (the per-entity late tolerance plays no part here).
``geo__new_country`` is the same flag for the pair (geo entity, country).

Implementation: each pair gets its own :class:`~finsecure.features.entity_index.EntityIndex` over an
unambiguous text key, ``"<byte length of left>:<left><right>"`` (a separator could occur inside a key;
a length prefix cannot be confused), built per batch with a vectorised Polars expression. Pairs idle
past the time-to-live are evicted from the index like any entity, so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.features._numba import NONE_TS
from finsecure.features.clock import effective_times
from finsecure.features.entity_index import EntityIndex

__all__ = ["NoveltyState", "pair_keys"]


def pair_keys(frame: pl.DataFrame, left: str, right: str) -> pl.Series:
    """Text key of each row's ``(left, right)`` pair; null when either is null or missing.

    Examples
    --------
    >>> frame = pl.DataFrame({"a": ["x", "xy", None], "b": ["yz", "z", "q"]})
    >>> pair_keys(frame, "a", "b").to_list()
    ['1:xyz', '2:xyz', None]
    """

    if left not in frame.columns or right not in frame.columns:
        return pl.repeat(None, frame.height, dtype=pl.String, eager=True).alias("pair")
    left_text = pl.col(left).cast(pl.String)
    expr = pl.concat_str(
        [left_text.str.len_bytes().cast(pl.String), pl.lit(":"), left_text, pl.col(right).cast(pl.String)]
    )
    return frame.select(expr.alias("pair")).to_series()


def _all_null(frame: pl.DataFrame, name: str) -> bool:
    return name not in frame.columns or frame[name].null_count() == frame.height


class NoveltyState:
    """First-seen flags for one kind of pair."""

    def __init__(self, left: str, right: str) -> None:
        self.left = left
        self.right = right
        self.index = EntityIndex()

    def run(
        self,
        frame: pl.DataFrame,
        order: npt.NDArray[np.int64],
        clamped: npt.NDArray[np.int64],
        *,
        ttl_us: int,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Novel flag per row and whether the row has a pair at all (false: the flag is null)."""
        if _all_null(frame, self.left) or _all_null(frame, self.right):
            nothing = np.zeros(frame.height, dtype=np.bool_)
            return nothing, nothing
        idx = self.index.lookup(pair_keys(frame, self.left, self.right))
        _, prev = effective_times(order, idx, clamped, self.index.last_seen, tolerance_us=0, ttl_us=ttl_us)
        return prev == NONE_TS, idx >= 0
