"""Sliding-window counts and sums, amount statistics and time since the previous event, per entity.

Semantics (the reference implementation computes exactly this)
-------------------------------------------------------------
For a row of entity *e* with effective time *t* (see :mod:`finsecure.features.config`), let
``ref = max(t, last_seen(e) before the row)``. For a window of length *L* counted in buckets of *g*
seconds, with ``n = L / g`` and ``bucket(x) = floor(x / g)``:

* ``count`` is the number of *e*'s events processed so far, this one included, whose effective time
  has ``bucket(ref) - n < bucket(time) <= bucket(ref)``: the current partial bucket plus the ``n - 1``
  full buckets before it. Counts are exact under this definition.
* ``sum`` adds a channel (amount, bytes, failed logins...) over the same events; a null value adds
  nothing but the event still counts. Sums are exact: the result is the exact sum of the values (as
  64.64 fixed point, see below) rounded once to float64, so it matches a correctly rounded summation
  (``math.fsum``) to within a unit in the last place.
* ``mean_amount`` / ``std_amount`` are the mean and population standard deviation of the non-null
  amounts of *e*'s *earlier* events (since *e* was first seen or last started afresh), null with
  fewer than 1 / 2 of them (Welford's update). ``amount_to_mean = amount / mean`` (null when the mean
  is 0); ``amount_zscore = (amount - mean) / std``, null when ``std <= 1e-9 * max(1, |mean|)`` (all
  earlier amounts equal: a z-score would only measure rounding).
* ``secs_since_last = max(0, t - last_seen before the row)`` in seconds; null when *e* starts afresh.

An entity starts afresh (empty windows and history) at its first event and after being idle more than
``entity_ttl_s``.

Implementation
--------------
Per entity, one ring of buckets per bucket width (windows of the same width share it; sized for the
longest, at most 64, rounded up to a power of two so a slot is a bit mask, not a division), a 64-bit
mask per ring saying which buckets hold events, and a running total per window. A bucket cell and a
window total hold a count and, per channel, a 128-bit fixed-point sum (64 integer bits, 64 fraction
bits; values are clamped to +-2**62 and digits below 2**-64 are dropped). Integer addition and
subtraction are exact, so a window total can be updated incrementally with no drift: a row first
takes the buckets leaving each window off its total (only non-empty ones, found through the mask;
a window left entirely is reset to zero), then adds itself to its bucket and to the total of every
window that bucket is in. The work per row is constant, whatever the window length or the entity's
rate. Everything of one entity sits in one row of ``state`` (masks, statistics, totals, cells; rows
start on cache-line boundaries), and for rows a few events ahead the kernel prefetches the entity's
header lines and the cells of its current buckets, because on a large stream nearly every row's state
is a cache miss. The kernel indexes ``state[e, j]`` (no per-row views) and has a second copy of its
loop compiled for the usual single channel, where the 128-bit updates unroll.

Windows that no sum is taken over (``dst_ip`` counts, the 1 h to 30 d counts of a network source
whose traffic is summed over 5 minutes only) get rings of their own that hold counts only: a cell is
then one word instead of ``1 + 2 * channels``. Memory per entity and key: ``8 * (rings + 3 + sum over
windows and cells of their width)`` bytes, rounded up to 64: 3,264 bytes for the default payment
keys (1 h in 1-minute buckets, 24 h in hours, 7 and 30 days in days, one amount channel), 1,664 for
a network source (7,552 when every cell held its three channels), 832 for a network destination.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.features._numba import NONE_TS, inline_kernel, kernel, prefetch
from finsecure.features.columns import key_window_names
from finsecure.features.config import FeatureConfig, KeyFeatures

__all__ = ["STD_FLOOR", "WindowState", "channel_values"]

STD_FLOOR = 1e-9
"""``amount_zscore`` is null when the standard deviation is at most ``STD_FLOOR * max(1, |mean|)``."""

_US = 1_000_000
_LINE = 64
_T = TypeVar("_T", bound=np.generic)


def _debruijn_table() -> npt.NDArray[np.int64]:
    table = np.zeros(64, dtype=np.int64)
    for bit in range(64):
        table[(((1 << bit) * _DEBRUIJN_MAGIC) & 0xFFFFFFFFFFFFFFFF) >> 58] = bit
    return table


_DEBRUIJN_MAGIC = 0x03F79D71B4CB0A89
_DEBRUIJN = _debruijn_table()
"""Position of a single set bit: ``_DEBRUIJN[(bit * magic) >> 58]`` (no division, no loop)."""


@kernel
def _ones(count: int) -> np.uint64:
    if count >= 64:
        return np.uint64(0xFFFFFFFFFFFFFFFF)
    return (np.uint64(1) << np.uint64(count)) - np.uint64(1)


@kernel
def _span(start: int, length: int, n: int) -> np.uint64:
    """Bit mask of ``length`` ring slots from ``start`` on, wrapping round a ring of ``n`` slots."""
    if length >= n:
        return _ones(n)
    end = start + length
    if end <= n:
        return _ones(length) << np.uint64(start)
    return (_ones(n - start) << np.uint64(start)) | _ones(end - n)


_TWO_64 = 18446744073709551616.0
_TWO_MINUS_64 = 1.0 / _TWO_64
_FIXED_LIMIT = 2.0**62
"""Channel values are clamped to +-2**62 so their whole part fits the signed high word."""


@kernel
def _fixed_hi(x: float) -> np.uint64:
    """High word of ``x`` as 64.64 fixed point: its floor, two's complement."""
    x = min(max(x, -_FIXED_LIMIT), _FIXED_LIMIT)
    return np.uint64(np.int64(math.floor(x)))


@kernel
def _fixed_lo(x: float) -> np.uint64:
    """Low word of ``x`` as 64.64 fixed point: its fraction times 2**64 (exact for 64 fraction bits)."""
    x = min(max(x, -_FIXED_LIMIT), _FIXED_LIMIT)
    return np.uint64((x - math.floor(x)) * _TWO_64)


@kernel
def _to_float(hi: np.uint64, lo: np.uint64) -> float:
    return float(np.int64(hi)) + float(lo) * _TWO_MINUS_64


@inline_kernel
def _add_cell(
    dst: npt.NDArray[np.uint64],
    e: int,
    at: int,
    src: npt.NDArray[np.uint64],
    se: int,
    start: int,
    n_chan: int,
    sign: int,
) -> None:
    """``dst[e, at:at+w] += sign * src[se, start:start+w]``: a count, then ``n_chan`` 128-bit (hi, lo)
    sums, with carries (``w = 1 + 2 * n_chan``)."""
    one = np.uint64(1)
    zero = np.uint64(0)
    if sign > 0:
        dst[e, at] += src[se, start]
        for c in range(n_chan):
            j = at + 1 + 2 * c
            k = start + 1 + 2 * c
            lo = src[se, k + 1]
            new = dst[e, j + 1] + lo
            carry = one if new < lo else zero
            dst[e, j + 1] = new
            dst[e, j] += src[se, k] + carry
    else:
        dst[e, at] -= src[se, start]
        for c in range(n_chan):
            j = at + 1 + 2 * c
            k = start + 1 + 2 * c
            lo = src[se, k + 1]
            borrow = one if dst[e, j + 1] < lo else zero
            dst[e, j + 1] -= lo
            dst[e, j] -= src[se, k] + borrow


_AHEAD = 8
"""How many rows ahead the kernel asks for an entity's state to be loaded."""


@inline_kernel
def _windows_loop(
    order: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    te: npt.NDArray[np.int64],
    t_buckets: npt.NDArray[np.int64],
    prev: npt.NDArray[np.int64],
    p_buckets: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    stats_channel: int,
    ring_g: npt.NDArray[np.int64],
    ring_n: npt.NDArray[np.int64],
    ring_off: npt.NDArray[np.int64],
    ring_first: npt.NDArray[np.int64],
    ring_c: npt.NDArray[np.int64],
    win_at: npt.NDArray[np.int64],
    win_order: npt.NDArray[np.int64],
    win_ring: npt.NDArray[np.int64],
    win_n: npt.NDArray[np.int64],
    chan_win: npt.NDArray[np.bool_],
    state: npt.NDArray[np.uint64],
    state_f: npt.NDArray[np.float64],
    out_cnt: npt.NDArray[np.int32],
    out_sum: npt.NDArray[np.float64],
    out_stats: npt.NDArray[np.float64],
    n_chan: int,
) -> None:
    # One state row per entity: ring masks, amount statistics (as float64 through ``state_f``, the same
    # memory), window totals, then the ring cells; so a row touches as few cache lines as possible.
    # The state is always indexed as ``state[e, j]``: taking a row view (``state[e]``) per event costs
    # reference counting that is a large share of the work per row.
    # A ring (and the totals of its windows) holds sums only if one of its windows needs them: its
    # cells are ``1 + 2 * ring_c[r]`` words (a count, then ``ring_c[r]`` 128-bit sums, 0 or n_chan).
    n_rings = len(ring_g)
    n_win = len(win_n)
    width = 1 + 2 * n_chan
    at_stats = n_rings
    at_totals = n_rings + 3
    at_cells = at_totals + win_at[n_win]
    nan = np.nan
    zero = np.uint64(0)
    one = np.uint64(1)
    magic = np.uint64(_DEBRUIJN_MAGIC)
    shift = np.uint64(58)
    # This row as one cell: count 1, then each channel as 64.64 fixed point (null adds 0).
    row_cell = np.zeros((1, width), dtype=np.uint64)
    row_cell[0, 0] = one
    ref_bucket = np.zeros(n_rings, dtype=np.int64)
    rows = len(order)
    for k in range(rows):
        if k + _AHEAD < rows:
            ahead = order[k + _AHEAD]
            coming = idx[ahead]
            if coming >= 0:
                for word in range(0, at_cells, 8):
                    prefetch(state, coming, word)
                for r in range(n_rings):
                    slot = t_buckets[r, ahead] & (ring_n[r] - 1)
                    prefetch(state, coming, at_cells + ring_off[r] + slot * (1 + 2 * ring_c[r]))
        i = order[k]
        e = idx[i]
        if e < 0:
            continue
        t = te[i]
        p = prev[i]
        for c in range(n_chan):
            v = values[c, i]
            if v == v:
                row_cell[0, 1 + 2 * c] = _fixed_hi(v)
                row_cell[0, 2 + 2 * c] = _fixed_lo(v)
            else:
                row_cell[0, 1 + 2 * c] = zero
                row_cell[0, 2 + 2 * c] = zero
        if p == NONE_TS:
            for j in range(at_cells):
                state[e, j] = zero
            for r in range(n_rings):
                ref_bucket[r] = t_buckets[r, i]
            out_stats[0, i] = nan
        else:
            out_stats[0, i] = max(t - p, 0) / 1e6
            for r in range(n_rings):
                old = p_buckets[r, i]
                new = max(old, t_buckets[r, i])
                ref_bucket[r] = new
                gap = new - old
                if gap <= 0:
                    continue
                n = ring_n[r]
                rc = ring_c[r]
                rw = 1 + 2 * rc
                base = at_cells + ring_off[r]
                # Buckets leaving a window are taken off its running total (exact: integer arithmetic).
                for q in range(ring_first[r], ring_first[r + 1]):
                    w = win_order[q]
                    nw = win_n[w]
                    total = at_totals + win_at[w]
                    if gap >= nw:
                        for j in range(total, total + rw):
                            state[e, j] = zero
                        continue
                    todo = state[e, r] & _span((old - nw + 1) & (n - 1), gap, n)
                    while todo != zero:
                        low = todo & (~todo + one)
                        cell = base + _DEBRUIJN[(low * magic) >> shift] * rw
                        _add_cell(state, e, total, state, e, cell, rc, -1)
                        todo ^= low
                # Buckets that left the ring are dropped by clearing their bits; a cell is overwritten
                # when its bit is set again, so nothing else needs clearing.
                if gap >= n:
                    state[e, r] = zero
                else:
                    state[e, r] &= ~_span((old + 1) & (n - 1), gap, n)
        # Add this row to the bucket of its own time (a late row within tolerance lands in the past)
        # and to the running total of every window that bucket is in.
        for r in range(n_rings):
            n = ring_n[r]
            bucket = t_buckets[r, i]
            if ref_bucket[r] - bucket >= n:
                continue
            slot = bucket & (n - 1)
            rc = ring_c[r]
            cell = at_cells + ring_off[r] + slot * (1 + 2 * rc)
            bit = one << np.uint64(slot)
            mask = state[e, r]
            if mask & bit:
                _add_cell(state, e, cell, row_cell, 0, 0, rc, 1)
            else:
                state[e, r] = mask | bit
                for j in range(1 + 2 * rc):
                    state[e, cell + j] = row_cell[0, j]
        for w in range(n_win):
            r = win_ring[w]
            total = at_totals + win_at[w]
            if ref_bucket[r] - t_buckets[r, i] < win_n[w]:
                _add_cell(state, e, total, row_cell, 0, 0, ring_c[r], 1)
            out_cnt[w, i] = np.int32(state[e, total])
            for c in range(n_chan):
                if chan_win[c, w]:
                    out_sum[c, w, i] = _to_float(state[e, total + 1 + 2 * c], state[e, total + 2 + 2 * c])
        if stats_channel >= 0:
            x = values[stats_channel, i]
            m = state_f[e, at_stats]
            mean = state_f[e, at_stats + 1]
            out_stats[1, i] = nan
            out_stats[2, i] = nan
            out_stats[3, i] = nan
            out_stats[4, i] = nan
            if m >= 1.0:
                out_stats[1, i] = mean
                if mean != 0.0 and x == x:
                    out_stats[3, i] = x / mean
            if m >= 2.0:
                std = math.sqrt(state_f[e, at_stats + 2] / m)
                out_stats[2, i] = std
                if std > STD_FLOOR * max(1.0, abs(mean)) and x == x:
                    out_stats[4, i] = (x - mean) / std
            if x == x:
                m += 1.0
                delta = x - mean
                mean += delta / m
                state_f[e, at_stats + 2] += delta * (x - mean)
                state_f[e, at_stats] = m
                state_f[e, at_stats + 1] = mean


@kernel
def _windows(
    order: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    te: npt.NDArray[np.int64],
    t_buckets: npt.NDArray[np.int64],
    prev: npt.NDArray[np.int64],
    p_buckets: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    stats_channel: int,
    ring_g: npt.NDArray[np.int64],
    ring_n: npt.NDArray[np.int64],
    ring_off: npt.NDArray[np.int64],
    ring_first: npt.NDArray[np.int64],
    ring_c: npt.NDArray[np.int64],
    win_at: npt.NDArray[np.int64],
    win_order: npt.NDArray[np.int64],
    win_ring: npt.NDArray[np.int64],
    win_n: npt.NDArray[np.int64],
    chan_win: npt.NDArray[np.bool_],
    state: npt.NDArray[np.uint64],
    state_f: npt.NDArray[np.float64],
    out_cnt: npt.NDArray[np.int32],
    out_sum: npt.NDArray[np.float64],
    out_stats: npt.NDArray[np.float64],
) -> None:
    # One copy of the loop for the usual single channel (amounts, failed logins): with the channel
    # count a constant, the compiler unrolls the 128-bit sum updates (much faster), the rest share one.
    if values.shape[0] == 1:
        _windows_loop(
            order,
            idx,
            te,
            t_buckets,
            prev,
            p_buckets,
            values,
            stats_channel,
            ring_g,
            ring_n,
            ring_off,
            ring_first,
            ring_c,
            win_at,
            win_order,
            win_ring,
            win_n,
            chan_win,
            state,
            state_f,
            out_cnt,
            out_sum,
            out_stats,
            1,
        )
    else:
        _windows_loop(
            order,
            idx,
            te,
            t_buckets,
            prev,
            p_buckets,
            values,
            stats_channel,
            ring_g,
            ring_n,
            ring_off,
            ring_first,
            ring_c,
            win_at,
            win_order,
            win_ring,
            win_n,
            chan_win,
            state,
            state_f,
            out_cnt,
            out_sum,
            out_stats,
            values.shape[0],
        )


def channel_values(
    domain: Domain, frame: pl.DataFrame, channels: tuple[str, ...], config: FeatureConfig
) -> npt.NDArray[np.float64]:
    """The per-row numbers of some channels (see :data:`~finsecure.features.config.CHANNELS`), as a
    ``(channels, rows)`` float array with NaN for null. Missing columns count as null."""
    out = np.empty((len(channels), frame.height), dtype=np.float64)
    names = set(frame.columns)

    def col(name: str, dtype: pl.DataType) -> pl.Expr:
        return pl.col(name) if name in names else pl.lit(None, dtype)

    exprs: list[pl.Expr] = []
    for channel in channels:
        if channel == "amount":
            expr = col("amount", pl.Float64())
        elif channel == "failed_login":
            expr = (col("action", pl.String()) == "login") & (col("outcome", pl.String()) == "failure")
        elif channel == "failure":
            expr = col("outcome", pl.String()) == "failure"
        elif channel in ("bytes", "packets"):
            expr = pl.sum_horizontal(col(f"{channel}_out", pl.Int64()), col(f"{channel}_in", pl.Int64()))
        elif channel == "failed_conn":
            expr = col("conn_state", pl.String()).is_in(list(config.failed_conn_states))
        else:
            raise ValueError(f"{domain} has no feature channel {channel!r}")
        if channel in ("failed_login", "failure", "failed_conn"):
            expr = expr.fill_null(False)
        exprs.append(expr.cast(pl.Float64).alias(channel))
    if not exprs:
        return out
    computed = frame.select(exprs)
    for position, channel in enumerate(channels):
        out[position] = computed[channel].to_numpy()
    return out


class WindowState:
    """Window state of one entity key in one domain, indexed by that key's :class:`EntityIndex` slots."""

    def __init__(self, key: KeyFeatures, config: FeatureConfig) -> None:
        self.key = key
        self.window_names = key_window_names(key)
        windows = [config.window(name) for name in self.window_names]
        summed = {name for sums in key.sums for name in sums.windows}
        # One ring per bucket width, and per "holds sums or only counts": a window with no sums over it
        # keeps counts only (one word per bucket instead of 1 + 2 per channel).
        kinds = [
            (window.bucket_s, name in summed) for window, name in zip(windows, self.window_names, strict=True)
        ]
        rings = sorted(set(kinds))
        longest = [
            max(w.buckets for w, kind in zip(windows, kinds, strict=True) if kind == ring) for ring in rings
        ]
        ring_n = [1 << (count - 1).bit_length() for count in longest]  # next power of two, at most 64
        self._ring_g = np.array([g * _US for g, _ in rings], dtype=np.int64)
        self._ring_n = np.array(ring_n, dtype=np.int64)
        self._win_ring = np.array([rings.index(kind) for kind in kinds], dtype=np.int64)
        self._win_n = np.array([window.buckets for window in windows], dtype=np.int64)
        self.window_seconds = np.array([window.length_s for window in windows], dtype=np.float64)
        channels: list[str] = []
        for sums in key.sums:
            if sums.channel not in channels:
                channels.append(sums.channel)
        if key.amount_stats and "amount" not in channels:
            channels.append("amount")
        self.channels = tuple(channels)
        self._stats_channel = channels.index("amount") if key.amount_stats else -1
        self._chan_win = np.zeros((len(channels), len(windows)), dtype=np.bool_)
        for sums in key.sums:
            for name in sums.windows:
                self._chan_win[channels.index(sums.channel), self.window_names.index(name)] = True
        self._ring_c = np.array([len(channels) if sums else 0 for _, sums in rings], dtype=np.int64)
        ring_words = [n * (1 + 2 * int(c)) for n, c in zip(ring_n, self._ring_c, strict=True)]
        self._ring_off = np.concatenate([[0], np.cumsum(ring_words)[:-1]]).astype(np.int64)
        total_words = [1 + 2 * int(self._ring_c[r]) for r in self._win_ring]
        self._win_at = np.concatenate([[0], np.cumsum(total_words)]).astype(np.int64)
        # Windows grouped by ring: ring r owns win_order[ring_first[r]:ring_first[r + 1]].
        self._win_order = np.array(
            sorted(range(len(windows)), key=lambda w: self._win_ring[w]), dtype=np.int64
        )
        self._ring_first = np.searchsorted(self._win_ring[self._win_order], np.arange(len(rings) + 1))
        self._ring_first = self._ring_first.astype(np.int64)
        words = len(rings) + 3 + int(self._win_at[-1]) + sum(ring_words)
        self._row_words = -(-words // 8) * 8  # whole 64-byte cache lines
        self.state = np.zeros((0, self._row_words), dtype=np.uint64)

    def ensure(self, capacity: int) -> None:
        """Grow the state to at least ``capacity`` entities (by half as much again each time)."""
        if len(self.state) < capacity:
            self.state = _grow_rows(self.state, capacity)

    def run(
        self,
        order: npt.NDArray[np.int64],
        idx: npt.NDArray[np.int64],
        te: npt.NDArray[np.int64],
        prev: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Update the state with one batch and return per-row window counts ``(windows, rows)``, sums
        ``(channels, windows, rows)`` and stats ``(secs_since_last, mean, std, to_mean, zscore) x rows``.

        ``values`` holds this state's :attr:`channels`, in order. Rows without an entity are left
        unspecified (the caller masks them)."""
        rows = len(idx)
        # Every entry the caller reads is written by the kernel (rows without an entity are masked).
        out_cnt = np.empty((len(self._win_n), rows), dtype=np.int32)
        out_sum = np.empty((len(self.channels), len(self._win_n), rows), dtype=np.float64)
        out_stats = np.empty((5, rows), dtype=np.float64)
        # Bucket numbers of every row in every ring, computed in one vectorised pass.
        t_buckets = np.floor_divide(te[np.newaxis, :], self._ring_g[:, np.newaxis])
        p_buckets = np.floor_divide(prev[np.newaxis, :], self._ring_g[:, np.newaxis])
        _windows(
            order,
            idx,
            te,
            t_buckets,
            prev,
            p_buckets,
            values,
            self._stats_channel,
            self._ring_g,
            self._ring_n,
            self._ring_off,
            self._ring_first,
            self._ring_c,
            self._win_at,
            self._win_order,
            self._win_ring,
            self._win_n,
            self._chan_win,
            self.state,
            self.state.view(np.float64),
            out_cnt,
            out_sum,
            out_stats,
        )
        return out_cnt, out_sum, out_stats

    def nbytes(self) -> int:
        """Memory held by the state, in bytes."""
        return int(self.state.nbytes)

    def snapshot(self, used: int) -> dict[str, npt.NDArray[np.generic]]:
        """The first ``used`` entities' state as named arrays."""
        return {"state": self.state[:used].copy()}

    def restore(self, arrays: dict[str, npt.NDArray[np.generic]], capacity: int) -> None:
        """Load :meth:`snapshot` output, sized for ``capacity`` entities."""
        saved = arrays.get("state")
        if saved is None or saved.shape[1:] != self.state.shape[1:]:
            raise ValueError(f"snapshot of {self.key.key!r} windows does not fit these feature settings")
        self.state = np.zeros((0, self._row_words), dtype=np.uint64)
        self.ensure(capacity)
        self.state[: len(saved)] = saved


def _grow_rows(array: npt.NDArray[_T], capacity: int) -> npt.NDArray[_T]:
    """``array`` with at least ``capacity`` rows (zero-filled), grown by at least half its length (not
    doubled: a row is kilobytes, and the state follows the slots in use, not the index's capacity)."""
    size = max(capacity, len(array) + len(array) // 2)
    shape = (size, *array.shape[1:])
    # Rows are whole cache lines; starting the array on a line boundary keeps each row on as few lines
    # as possible (NumPy only aligns to 16 bytes).
    nbytes = int(np.prod(shape)) * array.dtype.itemsize
    raw = np.zeros(nbytes + _LINE, dtype=np.uint8)
    skip = -raw.ctypes.data % _LINE
    grown: npt.NDArray[_T] = raw[skip : skip + nbytes].view(array.dtype).reshape(shape)
    grown[: len(array)] = array
    return grown
