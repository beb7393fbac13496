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
a length prefix cannot be confused), built per batch straight from the two columns' Arrow buffers by
a numba kernel (:func:`pair_buffers`; :func:`pair_keys` is the same key as a Polars expression). Pairs
idle past the time-to-live are evicted from the index like any entity, so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.features._numba import NONE_TS, kernel
from finsecure.features.clock import effective_times
from finsecure.features.entity_index import BatchKeys, EntityIndex, KeyBuffers

__all__ = ["NoveltyState", "pair_buffers", "pair_keys"]


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


@kernel
def _pair_bytes(
    left_offsets: npt.NDArray[np.int64],
    left_data: npt.NDArray[np.uint8],
    left_valid: npt.NDArray[np.bool_],
    right_offsets: npt.NDArray[np.int64],
    right_data: npt.NDArray[np.uint8],
    right_valid: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    rows = len(left_offsets) - 1
    offsets = np.empty(rows + 1, dtype=np.int64)
    valid = np.empty(rows, dtype=np.bool_)
    offsets[0] = 0
    total = 0
    for i in range(rows):
        ok = (len(left_valid) == 0 or left_valid[i]) and (len(right_valid) == 0 or right_valid[i])
        valid[i] = ok
        if ok:
            length = left_offsets[i + 1] - left_offsets[i]
            digits = 1
            while length >= 10:
                length //= 10
                digits += 1
            total += digits + 1 + left_offsets[i + 1] - left_offsets[i]
            total += right_offsets[i + 1] - right_offsets[i]
        offsets[i + 1] = total
    data = np.empty(max(total, 1), dtype=np.uint8)
    for i in range(rows):
        if not valid[i]:
            continue
        at = offsets[i]
        start = left_offsets[i]
        length = left_offsets[i + 1] - start
        digits = 1
        rest = length
        while rest >= 10:
            rest //= 10
            digits += 1
        rest = length
        for j in range(digits - 1, -1, -1):
            data[at + j] = 48 + rest % 10
            rest //= 10
        at += digits
        data[at] = 58  # ":"
        at += 1
        data[at : at + length] = left_data[start : start + length]
        at += length
        start = right_offsets[i]
        length = right_offsets[i + 1] - start
        data[at : at + length] = right_data[start : start + length]
    return offsets, data, valid


def pair_buffers(left: KeyBuffers, right: KeyBuffers) -> KeyBuffers:
    """:func:`pair_keys` as key buffers, built from the two columns' buffers in one pass.

    Examples
    --------
    >>> from finsecure.features.entity_index import key_buffers
    >>> offsets, data, valid = pair_buffers(
    ...     key_buffers(pl.Series(["x", "xy", None])), key_buffers(pl.Series(["yz", "z", "q"]))
    ... )
    >>> [bytes(data[offsets[i] : offsets[i + 1]]).decode() for i in range(2)], valid.tolist()
    (['1:xyz', '2:xyz'], [True, True, False])
    """
    offsets, data, valid = _pair_bytes(*left, *right)
    offsets.flags.writeable = False  # the same array type as Arrow's buffers: one compiled lookup
    data.flags.writeable = False
    return offsets, data, valid if not valid.all() else np.zeros(0, dtype=np.bool_)


class NoveltyState:
    """First-seen flags for one kind of pair."""

    def __init__(self, left: str, right: str) -> None:
        self.left = left
        self.right = right
        self.index = EntityIndex()

    def run(
        self,
        keys: BatchKeys,
        order: npt.NDArray[np.int64],
        clamped: npt.NDArray[np.int64],
        *,
        ttl_us: int,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Novel flag per row and whether the row has a pair at all (false: the flag is null)."""
        left = keys.get(self.left)
        right = keys.get(self.right)
        if left is None or right is None:
            nothing = np.zeros(keys.rows, dtype=np.bool_)
            return nothing, nothing
        idx = self.index.lookup_buffers(pair_buffers(left, right))
        _, prev = effective_times(order, idx, clamped, self.index.last_seen, tolerance_us=0, ttl_us=ttl_us)
        return prev == NONE_TS, idx >= 0
