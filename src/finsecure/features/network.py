"""Network and sign-in security features: fan-out, traffic rates, failed connections, failed logins.

What is computed where
----------------------
* **Distinct destinations** (``src_ip__distinct_dst_ip_5m``, ``src_ip__distinct_dst_port_5m``): this
  module, exactly (no sketch). Semantics: for a row of source *s* with effective time *t* and
  reference time ``ref`` (see :mod:`finsecure.features.windows`), the number of different non-null
  targets among *s*'s events processed so far, this one included, whose bucket is one of the last
  ``n = window / bucket`` buckets up to ``bucket(ref)``.

  Implementation: a pair index (source x target, see :func:`~finsecure.features.novelty.pair_buffers`)
  remembers each pair's newest effective time; per source, a ring of ``n`` buckets counts the pairs
  whose *newest* occurrence falls in each bucket. A repeat of a pair in a later bucket moves its one
  count from the old bucket to the new one, so the ring always sums to the number of distinct targets
  in the window. Cost: one hash lookup and O(1) ring work per row, memory one slot per live pair
  (pairs idle longer than the window are evicted).
* **Bytes and packets per second, failed-connection ratio** (``src_ip__bytes_per_s_5m``,
  ``src_ip__packets_per_s_5m``, ``src_ip__failed_ratio_5m``): window sums of the channels ``bytes``,
  ``packets`` and ``failed_conn`` (see :data:`~finsecure.features.config.CHANNELS`), divided by the
  window length or by the number of connections in the window. ``conn_state`` values that mean
  failure are :data:`~finsecure.features.config.FAILED_CONN_STATES` (``S0`` no answer, ``REJ``
  refused, ``RSTO``/``RSTR``/``RSTOS0``/``RSTRH`` reset, ``SH``/``SHR`` half-open).
* **Failed-login bursts** (auth: ``user_id__failed_logins_10m``, ``src_ip__failed_logins_1h`` ...):
  window sums of the ``failed_login`` channel, 1 for an event with ``action == "login"`` and
  ``outcome == "failure"``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from finsecure.features._numba import NONE_TS, kernel
from finsecure.features.config import Window
from finsecure.features.entity_index import BatchKeys, EntityIndex
from finsecure.features.novelty import pair_buffers

__all__ = ["DistinctState"]

_US = 1_000_000


@kernel
def _distinct(
    order: npt.NDArray[np.int64],
    src: npt.NDArray[np.int64],
    te: npt.NDArray[np.int64],
    prev: npt.NDArray[np.int64],
    pair: npt.NDArray[np.int64],
    pair_last: npt.NDArray[np.int64],
    g: int,
    n: int,
    ring: npt.NDArray[np.int32],
    out: npt.NDArray[np.int32],
) -> None:
    for k in range(len(order)):
        i = order[k]
        e = src[i]
        if e < 0:
            continue
        t = te[i]
        p = prev[i]
        row = ring[e]
        if p == NONE_TS:
            row[:] = 0
            ref = t
        else:
            ref = max(p, t)
            if ref > p:
                old = p // g
                new = ref // g
                if new - old >= n:
                    row[:] = 0
                else:
                    for b in range(old + 1, new + 1):
                        row[b % n] = 0
        newest = ref // g
        q = pair[i]
        if q >= 0:
            bucket = t // g
            last = pair_last[q]
            if last == NONE_TS or bucket > last // g:
                if last != NONE_TS and newest - last // g < n:
                    row[(last // g) % n] -= 1
                if newest - bucket < n:
                    row[bucket % n] += 1
            if last == NONE_TS or t > last:
                pair_last[q] = t
        total = 0
        for s in range(n):
            total += row[s]
        out[i] = total


class DistinctState:
    """Distinct targets (hosts, ports) per source over one window, exactly."""

    def __init__(self, key: str, target: str, window: Window) -> None:
        self.key = key
        self.target = target
        self.window = window
        self.index = EntityIndex()
        self.ring = np.zeros((0, window.buckets), dtype=np.int32)

    def ensure(self, capacity: int) -> None:
        """Grow the per-source rings to at least ``capacity`` sources."""
        if len(self.ring) >= capacity:
            return
        size = max(len(self.ring), 1)
        while size < capacity:
            size *= 2
        grown = np.zeros((size, self.window.buckets), dtype=np.int32)
        grown[: len(self.ring)] = self.ring
        self.ring = grown

    def run(
        self,
        keys: BatchKeys,
        order: npt.NDArray[np.int64],
        src: npt.NDArray[np.int64],
        te: npt.NDArray[np.int64],
        prev: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int32]:
        """Distinct-target count per row (unspecified where the source is null)."""
        left = keys.get(self.key)
        right = keys.get(self.target)
        if left is None or right is None:
            pair = np.full(len(src), -1, dtype=np.int64)
        else:
            pair = self.index.lookup_buffers(pair_buffers(left, right))
        out = np.zeros(len(src), dtype=np.int32)
        _distinct(
            order,
            src,
            te,
            prev,
            pair,
            self.index.last_seen,
            self.window.bucket_s * _US,
            self.window.buckets,
            self.ring,
            out,
        )
        return out

    def nbytes(self) -> int:
        """Memory held by the rings and the pair index, in bytes."""
        return self.ring.nbytes + self.index.nbytes()
