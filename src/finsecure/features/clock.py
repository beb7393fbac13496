"""Event time per entity: which time a row counts at, whether it was late, and whether state restarts.

The rules are stated in :mod:`finsecure.features.config`; this module applies the per-entity part with
one numba kernel that walks a batch in time order (and, like every feature kernel, releases the GIL).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from finsecure.features._numba import NONE_TS, kernel

__all__ = ["effective_times"]


@kernel
def _effective_times(
    order: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    clamped: npt.NDArray[np.int64],
    last_seen: npt.NDArray[np.int64],
    tolerance: int,
    ttl: int,
    te_out: npt.NDArray[np.int64],
    prev_out: npt.NDArray[np.int64],
    late_out: npt.NDArray[np.bool_],
) -> None:
    for k in range(len(order)):
        i = order[k]
        entity = idx[i]
        t = clamped[i]
        if entity < 0:
            te_out[i] = t
            prev_out[i] = NONE_TS
            continue
        seen = last_seen[entity]
        if seen == NONE_TS or t - seen > ttl:
            # New entity, or idle longer than its time-to-live: start again from nothing.
            te_out[i] = t
            prev_out[i] = NONE_TS
            last_seen[entity] = t
            continue
        if t < seen - tolerance:
            t = seen
            late_out[i] = True
        te_out[i] = t
        prev_out[i] = seen
        if t > seen:
            last_seen[entity] = t


def effective_times(
    order: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    clamped: npt.NDArray[np.int64],
    last_seen: npt.NDArray[np.int64],
    *,
    tolerance_us: int,
    ttl_us: int,
    late: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Effective time and previous ``last_seen`` of each row's entity, updating ``last_seen`` in place.

    Parameters
    ----------
    order
        Row numbers in processing order (stable sort by time).
    idx
        Entity slot per row (``-1``: no entity).
    clamped
        Row times (µs) after the watermark rule.
    last_seen
        The entity index's ``last_seen`` array; updated to each entity's newest effective time.
    tolerance_us, ttl_us
        Late tolerance and time-to-live, in µs.
    late
        If given, set to true on rows moved forward to their entity's ``last_seen``.

    Returns
    -------
    te, prev
        Effective time per row, and the entity's ``last_seen`` before the row, or ``NONE_TS`` when the
        entity starts from nothing at this row (new, or idle past its time-to-live).

    Examples
    --------
    >>> last_seen = np.full(1, NONE_TS, dtype=np.int64)
    >>> order = np.arange(3, dtype=np.int64)
    >>> te, prev = effective_times(order, np.zeros(3, np.int64), np.array([100, 50, 95], np.int64),
    ...                            last_seen, tolerance_us=10, ttl_us=1000)
    >>> te.tolist(), (prev == NONE_TS).tolist(), last_seen.tolist()
    ([100, 100, 95], [True, False, False], [100])
    """
    count = len(idx)
    te = np.empty(count, dtype=np.int64)
    prev = np.empty(count, dtype=np.int64)
    late_out = late if late is not None else np.zeros(count, dtype=np.bool_)
    _effective_times(order, idx, clamped, last_seen, int(tolerance_us), int(ttl_us), te, prev, late_out)
    return te, prev
