"""The feature step: stateful per-entity features appended to every batch.

One :class:`FeatureStep` serves all four domains. It keeps one independent engine per domain
(created on that domain's first batch), because a batch holds one domain and the features differ by
domain: "how many payments this user made" must not count their sign-ins. One step still means one
name in metrics, one snapshot to save and one set of settings to configure. In scale-out mode each
worker runs its own step over the partitions it owns (state is partitioned by entity key upstream).

Per batch (all columnar; no Python loop over rows):

1. Row times as int64 µs, a stable sort order by time, and the watermark clamp.
2. Every ``evict_every_s`` of event time, idle entities are evicted from every index (each by the
   task that uses it, before using it), at a cut-off that makes eviction invisible in the results
   (see ``_DomainEngine._cutoffs``).
3. Per key column: dense indices (:class:`~finsecure.features.entity_index.EntityIndex`), effective
   times (:mod:`~finsecure.features.clock`), window kernel (:mod:`~finsecure.features.windows`), then
   its distinct counts and (geo key) travel. Per novelty pair: pair keys, index, first-seen flags.
4. Each task converts its columns to Polars itself (features with no data in the batch are shared
   all-null columns), and all are appended in one ``hstack``.

Threads: the work of step 3 is a set of tasks that touch disjoint state (one key's index and windows,
one pair's index). A small scheduler runs them costliest first on the pipeline's thread and
``threads - 1`` helper threads, each taking the next task when free; the numba kernels release the
GIL, so they run side by side. Results are the same with any number of threads. (Splitting one key's
windows further, by entity, was tried: both threads then write the same cache lines of the output
columns, and it was no faster.)
"""

from __future__ import annotations

import heapq
import json
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain
from finsecure.features._numba import NONE_TS
from finsecure.features.clock import effective_times
from finsecure.features.columns import ColumnInfo, arrow_type, domain_columns, key_columns
from finsecure.features.config import DEFAULT_CONFIG, DomainFeatures, FeatureConfig
from finsecure.features.entity_index import BatchKeys, EntityIndex, load_arrays, save_arrays
from finsecure.features.geo import GeoState
from finsecure.features.network import DistinctState
from finsecure.features.novelty import NoveltyState
from finsecure.features.windows import WindowState, channel_values
from finsecure.pipeline.batch import Batch, Step

__all__ = ["FeatureStep", "event_times_us"]

_US = 1_000_000
_SNAPSHOT_VERSION = 3
"""3: window rings without sums keep counts only (2: keys hashed a word at a time; 1: byte-wise)."""


def event_times_us(frame: pl.DataFrame) -> npt.NDArray[np.int64]:
    """The ``ts`` column as int64 microseconds since the Unix epoch (UTC)."""
    if "ts" not in frame.columns:
        raise ValueError("feature step: the batch has no 'ts' column (is it a canonical batch?)")
    ts = frame["ts"]
    if not isinstance(ts.dtype, pl.Datetime):
        raise ValueError(f"feature step: 'ts' must be a timestamp, not {ts.dtype}")
    if ts.null_count():
        raise ValueError(f"feature step: 'ts' has {ts.null_count()} null(s); every event needs a time")
    if ts.dtype.time_unit != "us":
        ts = ts.dt.cast_time_unit("us")
    # datetime64[us] shares the column's buffer (to_physical() would build a new column first); the copy
    # makes it writable and contiguous, so every kernel sees one array type (numba compiles per type).
    return np.require(ts.to_numpy().view(np.int64), np.int64, ["C", "W"])


def _pairs_of(index: EntityIndex, lefts: set[bytes]) -> npt.NDArray[np.int64]:
    """Live slots of a pair index (keys ``"<bytes of left>:<left><right>"``) whose left is in ``lefts``."""
    if not lefts:
        return np.zeros(0, dtype=np.int64)
    found: list[int] = []
    for slot, name in enumerate(index.keys(np.arange(index.high_water))):
        if name is None:
            continue
        raw = name.encode()
        colon = raw.index(b":")
        start = colon + 1
        if raw[start : start + int(raw[:colon])] in lefts:
            found.append(slot)
    return np.array(found, dtype=np.int64)


class _Validity:
    """A validity bitmap in Arrow's layout (or none: no nulls), shared by the columns it applies to."""

    __slots__ = ("bitmap", "nulls")

    def __init__(self, valid: npt.NDArray[np.bool_] | None) -> None:
        nulls = 0 if valid is None else len(valid) - int(np.count_nonzero(valid))
        self.nulls = nulls
        self.bitmap = None if valid is None or nulls == 0 else _bits(valid)


def _bits(values: npt.NDArray[np.bool_]) -> pa.Buffer:
    return pa.py_buffer(np.packbits(values, bitorder="little"))


def _arrow(values: npt.NDArray[np.generic], arrow: pa.DataType, validity: _Validity, rows: int) -> pa.Array:
    """An Arrow array over ``values`` (no copy for numbers; booleans are bit-packed)."""
    data = _bits(values.astype(np.bool_, copy=False)) if arrow == pa.bool_() else pa.py_buffer(values)
    return pa.Array.from_buffers(arrow, rows, [validity.bitmap, data], null_count=validity.nulls)


def _float_column(values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    """Float column: null where ``valid`` is false or the value is NaN."""
    present = ~np.isnan(values)
    if valid is not None:
        present &= valid
    return _arrow(np.ascontiguousarray(values), pa.float64(), _Validity(present), len(values))


def _bool_column(values: npt.NDArray[np.bool_], valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    return _arrow(values, pa.bool_(), _Validity(valid), len(values))


def _present(frame: pl.DataFrame, name: str) -> bool:
    return name in frame.columns and frame[name].null_count() < frame.height


def _floats(frame: pl.DataFrame, name: str) -> npt.NDArray[np.float64]:
    if name not in frame.columns:
        return np.full(frame.height, np.nan)
    return np.require(frame[name].cast(pl.Float64).to_numpy(), np.float64, ["C", "W"])


_PARALLEL_ROWS = 2_048
"""Batches smaller than this run on one thread: handing work to another thread would cost more."""


class _Scheduler:
    """Runs a batch's tasks on the calling thread and, if given a pool, on helper threads too.

    Tasks wait in a queue, costliest first, and every thread takes the next one when it is free, so
    the threads finish close together even when the cost estimates are rough. :meth:`run` returns when
    every task has finished and re-raises the first failure (tasks not started by then are skipped;
    none is left running).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[tuple[float, int, Callable[[], None]]] = []
        self._error: BaseException | None = None

    def add(self, cost: float, task: Callable[[], None]) -> None:
        """Queue ``task`` (before :meth:`run`); ``cost`` (any unit) orders the queue."""
        heapq.heappush(self._ready, (-cost, len(self._ready), task))

    def run(self, pool: ThreadPoolExecutor | None, threads: int) -> None:
        helpers = [pool.submit(self._lane) for _ in range(min(threads, len(self._ready)) - 1)] if pool else []
        try:
            self._lane()
        finally:
            wait(helpers)  # even if this lane failed: nothing may touch state after we return
        if self._error is not None:
            raise self._error

    def _lane(self) -> None:
        while True:
            with self._lock:
                if not self._ready or self._error is not None:
                    return
                _, _, task = heapq.heappop(self._ready)
            try:
                task()
            except BaseException as exc:  # re-raised by run(), on the calling thread
                with self._lock:
                    self._error = self._error or exc


@dataclass(slots=True)
class _Batch:
    """What every task of one batch shares. Each task writes its own entries of ``series`` (None: the
    column is all null) and evicts the indexes it uses (``cutoffs``: None when no eviction is due)."""

    keys: BatchKeys
    order: npt.NDArray[np.int64]
    clamped: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    series: list[pl.Series | None]
    scheduler: _Scheduler
    cutoffs: _Cutoffs | None
    base: int | None = None
    """The watermark less ``max_delay_s`` before this batch (None on a domain's first batch)."""
    evicted: list[int] = field(default_factory=list)
    capped: list[int] = field(default_factory=list)

    def evict(self, index: EntityIndex, cutoff: int) -> None:
        """Evict ``index`` if an eviction is due in this batch (list appends are thread-safe)."""
        if self.cutoffs is not None:
            self.evict_now(index, cutoff)

    def evict_now(self, index: EntityIndex, cutoff: int) -> None:
        """Evict ``index`` at ``cutoff``, counting the entities freed."""
        self.evicted.append(index.evict(cutoff))


@dataclass(frozen=True, slots=True)
class _Cutoffs:
    """``last_seen`` cut-offs of an eviction (see ``_DomainEngine._cutoffs``)."""

    entities: int
    pairs: int
    base: int


@dataclass(frozen=True, slots=True)
class _Keyed:
    """One key column's per-row results in a batch, shared by the features built on that key."""

    idx: npt.NDArray[np.int64]
    te: npt.NDArray[np.int64]
    prev: npt.NDArray[np.int64]
    valid: npt.NDArray[np.bool_]
    counts: npt.NDArray[np.int32]
    sums: npt.NDArray[np.float64]
    stats: npt.NDArray[np.float64]


class _DomainEngine:
    """All feature state of one domain."""

    def __init__(self, domain: Domain, spec: DomainFeatures, config: FeatureConfig) -> None:
        self.domain = domain
        self.spec = spec
        self.config = config
        self.columns: tuple[ColumnInfo, ...] = domain_columns(domain, config)
        self._home_distance = any(column.name == "geo__home_distance_km" for column in self.columns)
        self._key_specs = {key.key: key for key in spec.keys}
        self._key_types = {
            key.key: [arrow_type(c.dtype) for c in key_columns(domain, key, config)] for key in spec.keys
        }
        self.indexes = {key.key: EntityIndex() for key in spec.keys}
        self.windows = {key.key: WindowState(key, config) for key in spec.keys}
        channels: list[str] = []
        for state in self.windows.values():
            channels.extend(c for c in state.channels if c not in channels)
        self.channels = tuple(channels)
        self.geo = (
            GeoState(
                speed_limit_kmh=config.impossible_speed_kmh,
                min_km=config.impossible_min_km,
                min_travel_s=config.min_travel_s,
            )
            if spec.geo_key is not None
            else None
        )
        self.geo_country = NoveltyState(spec.geo_key, "country") if spec.geo_key is not None else None
        self.pairs = {pair.name: NoveltyState(pair.left, pair.right) for pair in spec.pairs}
        self.distinct = [
            DistinctState(item.key, item.target, config.window(item.window)) for item in spec.distinct
        ]
        self._null_columns: dict[tuple[int, int], pl.Series] = {}
        self.names = [column.name for column in self.columns]
        self._channel_rows = {
            key: [self.channels.index(c) for c in state.channels] for key, state in self.windows.items()
        }
        # Where each feature's columns go in the output (the order of ``domain_columns``).
        position = 0
        self._key_at: dict[str, int] = {}
        for key in spec.keys:
            self._key_at[key.key] = position
            position += len(self._key_types[key.key])
        self._distinct_at = list(range(position, position + len(self.distinct)))
        position += len(self.distinct)
        self._home_at = position if self._home_distance else -1
        position += 1 if self._home_distance else 0
        self._geo_at = position
        position += 4 if spec.geo_key is not None else 0
        self._pair_at = {name: position + n for n, name in enumerate(self.pairs)}
        position += len(self.pairs)
        if position + 1 != len(self.columns):
            raise AssertionError("feature step: column positions do not match the column list")
        self.watermark = NONE_TS
        self.last_evict = NONE_TS
        self.late_events = 0
        self.evictions = 0
        self.capped_out = 0
        """Entities dropped because their key held more than ``max_entities`` (see :meth:`_cap`)."""

    # ---------------------------------------------------------------------------------------------

    def process(
        self, frame: pl.DataFrame, pool: ThreadPoolExecutor | None = None, threads: int = 1
    ) -> list[pl.Series]:
        """The feature columns for ``frame``, in its row order.

        Each key's windows, and each novelty pair, only touch their own state, so with a ``pool`` they
        are computed on two (or more) threads at once: the kernels release the GIL.
        """
        rows = frame.height
        if rows == 0:
            return pl.DataFrame(schema={column.name: column.dtype for column in self.columns}).get_columns()
        config = self.config
        ts = event_times_us(frame)
        order = np.argsort(ts, kind="stable").astype(np.int64, copy=False)
        cutoffs = None
        base = None
        if self.watermark != NONE_TS:
            cutoffs = self._cutoffs()
            base = self.watermark - round(config.max_delay_s * _US)
            clamped = np.maximum(ts, self.watermark - round(config.max_delay_s * _US))
        else:
            clamped = ts
        late = clamped > ts
        values = channel_values(self.domain, frame, self.channels, config)
        keys = BatchKeys(frame)
        work = _Batch(keys, order, clamped, values, [None] * len(self.columns), _Scheduler(), cutoffs, base)
        lates: list[npt.NDArray[np.bool_]] = []
        absent: list[str] = []
        # Costliest first (keys, then pairs, then the rest), so the threads finish close together.
        for key in self.spec.keys:
            if not keys.present(key.key):
                absent.append(key.key)  # its columns (and distinct counts or travel on it) stay null
                continue
            key_late = np.zeros(rows, dtype=np.bool_)
            lates.append(key_late)
            work.scheduler.add(3.0 * rows, partial(self._key_task, work, key.key, key_late))
        for name, pair in self.pairs.items():
            work.scheduler.add(1.0 * rows, partial(self._pair_task, work, pair, self._pair_at[name]))
        if self.geo_country is not None:
            work.scheduler.add(1.0 * rows, partial(self._pair_task, work, self.geo_country, self._geo_at + 3))
        if self._home_distance:
            work.scheduler.add(0.5 * rows, partial(self._home_task, work))
        if cutoffs is not None and absent:
            work.scheduler.add(0.0, partial(self._evict_keys, work, absent))
        work.scheduler.run(pool if rows >= _PARALLEL_ROWS else None, threads)

        for key_late in lates:
            late |= key_late
        series = work.series
        series[-1] = pl.Series(self.names[-1], late, dtype=pl.Boolean)
        self.late_events += int(np.count_nonzero(late))
        self.evictions += sum(work.evicted)
        self.capped_out += sum(work.capped)
        self.watermark = max(self.watermark, int(ts.max()))
        return [
            column if column is not None else self._null_series(n, rows) for n, column in enumerate(series)
        ]

    def _key_task(self, work: _Batch, key: str, late: npt.NDArray[np.bool_]) -> None:
        """Everything built on one key: entity lookup, event times, windows, then :meth:`_key_outputs`."""
        buffers = work.keys.get(key)
        if buffers is None:
            raise AssertionError(f"feature step: key {key!r} vanished from the batch")
        config = self.config
        state = self.windows[key]
        index = self.indexes[key]
        self._evict_keys(work, [key])
        self._cap(work, key)
        idx = index.lookup_buffers(buffers)
        state.ensure(index.high_water)  # slots handed out so far: every index in ``idx`` is below it
        te, prev = effective_times(
            work.order,
            idx,
            work.clamped,
            index.last_seen,
            tolerance_us=round(config.late_tolerance_s * _US),
            ttl_us=round(config.entity_ttl_s * _US),
            late=late,
        )
        counts, sums, stats = state.run(work.order, idx, te, prev, work.values[self._channel_rows[key]])
        self._key_outputs(work, key, _Keyed(idx, te, prev, idx >= 0, counts, sums, stats))

    def _key_outputs(self, work: _Batch, key: str, found: _Keyed) -> None:
        """A key's window columns, then its distinct counts and (geo key) travel."""
        keys, order = work.keys, work.order
        rows = keys.rows
        index = self.indexes[key]
        validity = _Validity(found.valid)
        at = self._key_at[key]
        arrays: dict[int, pa.Array] = {}
        for column in self._key_arrays(key, found, validity, rows):
            arrays[at] = column
            at += 1
        for item, position in zip(self.distinct, self._distinct_at, strict=True):
            if item.key == key:
                item.ensure(index.capacity)
                counted = item.run(keys, order, found.idx, found.te, found.prev)
                arrays[position] = _arrow(counted, pa.int32(), validity, rows)
        if self.geo is not None and key == self.spec.geo_key:
            self.geo.ensure(index.capacity)
            frame = keys.frame
            distance, speed, flag = self.geo.run(
                order, found.idx, found.te, found.prev, _floats(frame, "lat"), _floats(frame, "lon")
            )
            arrays[self._geo_at] = _float_column(distance, found.valid)
            arrays[self._geo_at + 1] = _float_column(speed, found.valid)
            arrays[self._geo_at + 2] = _bool_column(flag == 1, found.valid & (flag >= 0))
        self._publish(work, arrays)

    def _pair_task(self, work: _Batch, pair: NoveltyState, position: int) -> None:
        if work.cutoffs is not None:
            work.evict(pair.index, work.cutoffs.pairs)
        ttl = round(self.config.novelty_ttl_s * _US)
        novel, has_pair = pair.run(work.keys, work.order, work.clamped, ttl_us=ttl)
        if has_pair.any():
            self._publish(work, {position: _bool_column(novel, has_pair)})

    def _home_task(self, work: _Batch) -> None:
        frame = work.keys.frame
        if not all(_present(frame, name) for name in ("lat", "lon", "home_lat", "home_lon")):
            return
        home = GeoState.home_distance(
            _floats(frame, "lat"),
            _floats(frame, "lon"),
            _floats(frame, "home_lat"),
            _floats(frame, "home_lon"),
        )
        self._publish(work, {self._home_at: _float_column(home, None)})

    def _evict_keys(self, work: _Batch, keys: list[str]) -> None:
        """Evict the indexes of some keys and of the distinct counts built on them, if one is due."""
        cutoffs = work.cutoffs
        if cutoffs is None:
            return
        for key in keys:
            work.evict(self.indexes[key], cutoffs.entities)
            for item in self.distinct:
                if item.key == key:
                    work.evict(item.index, cutoffs.base - item.window.length_s * _US)

    def _cap(self, work: _Batch, key: str) -> None:
        """Keep at most ``max_entities`` entities of ``key`` (see :class:`FeatureConfig`).

        Entities idle longer than ``entity_ttl_s`` go first (invisible: they would start afresh anyway);
        if more than the cap remain, the least recently seen are dropped down to nine tenths of it (so
        this work is rare), with their distinct-count pairs, so that one that comes back starts afresh.
        """
        index = self.indexes[key]
        cap = self.config.entity_cap(self._key_specs[key])
        if work.base is None or len(index) <= cap:
            return
        work.evict_now(index, work.base - round(self.config.entity_ttl_s * _US))
        if len(index) <= cap:
            return
        cutoff = index.cap_cutoff(cap - cap // 10)
        if cutoff is None:
            return
        gone = index.slots_before(cutoff)
        names = {name.encode() for name in index.keys(gone) if name is not None}
        for item in self.distinct:
            if item.key == key:
                item.index.forget(_pairs_of(item.index, names))
        work.capped.append(index.evict(cutoff))

    def _publish(self, work: _Batch, arrays: dict[int, pa.Array]) -> None:
        """Convert a task's columns to Polars in one go, inside the task: the conversion holds the GIL,
        so done here it overlaps with the other threads' kernels instead of adding to the batch."""
        positions = sorted(arrays)
        table = pa.Table.from_arrays([arrays[n] for n in positions], names=[self.names[n] for n in positions])
        for n, column in zip(positions, pl.DataFrame(table).get_columns(), strict=True):
            work.series[n] = column

    def _key_arrays(self, key: str, found: _Keyed, validity: _Validity, rows: int) -> list[pa.Array]:
        spec = self._key_specs[key]
        state = self.windows[key]
        names = state.window_names
        valid, cnt, sums, stats = found.valid, found.counts, found.sums, found.stats
        arrays = [_arrow(cnt[names.index(name)], pa.int32(), validity, rows) for name in spec.count_windows]
        for item in spec.sums:
            channel = state.channels.index(item.channel)
            for name in item.windows:
                w = names.index(name)
                total = sums[channel, w]
                if item.kind == "count":
                    whole = np.rint(np.where(valid, total, 0.0)).astype(np.int32)
                    arrays.append(_arrow(whole, pa.int32(), validity, rows))
                elif item.kind == "per_second":
                    arrays.append(_arrow(total / state.window_seconds[w], pa.float64(), validity, rows))
                elif item.kind == "ratio":
                    arrays.append(_arrow(total / np.maximum(cnt[w], 1), pa.float64(), validity, rows))
                else:
                    arrays.append(_arrow(total, pa.float64(), validity, rows))
        if spec.amount_stats:
            arrays += [_float_column(stats[row], valid) for row in (1, 2, 3, 4)]
        if spec.secs_since_last:
            arrays.append(_float_column(stats[0], valid))
        return arrays

    def _null_series(self, n: int, rows: int) -> pl.Series:
        key = (n, rows)
        cached = self._null_columns.get(key)
        if cached is None:
            if len(self._null_columns) > 4 * len(self.columns):
                self._null_columns.clear()  # batch sizes vary: keep the cache small
            column = self.columns[n]
            cached = pl.repeat(None, rows, dtype=column.dtype, eager=True).alias(column.name)
            self._null_columns[key] = cached
        return cached

    # ---------------------------------------------------------------------------------------------

    def _cutoffs(self) -> _Cutoffs | None:
        """The eviction cut-offs when the watermark moved ``evict_every_s`` since the last eviction.

        Why eviction never changes a result: every later row has a clamped time of at least
        ``watermark - max_delay``. An entity is evicted only when its ``last_seen`` is before
        ``watermark - max_delay - ttl``, so any later row of it is more than ``ttl`` after its
        ``last_seen`` and would start it afresh anyway. Distinct-count pairs use the window length as
        their time-to-live: a pair that old is outside every later window. Each task evicts the
        indexes it uses before it uses them.
        """
        every = round(self.config.evict_every_s * _US)
        if self.last_evict != NONE_TS and self.watermark - self.last_evict < every:
            return None
        self.last_evict = self.watermark
        base = self.watermark - round(self.config.max_delay_s * _US)
        return _Cutoffs(
            entities=base - round(self.config.entity_ttl_s * _US),
            pairs=base - round(self.config.novelty_ttl_s * _US),
            base=base,
        )

    def nbytes(self) -> int:
        """Memory held by all state of this domain, in bytes."""
        total = sum(index.nbytes() for index in self.indexes.values())
        total += sum(state.nbytes() for state in self.windows.values())
        total += sum(pair.index.nbytes() for pair in self.pairs.values())
        total += sum(item.nbytes() for item in self.distinct)
        if self.geo is not None and self.geo_country is not None:
            total += self.geo.nbytes() + self.geo_country.index.nbytes()
        return total

    def live_entities(self) -> dict[str, int]:
        """Live entities per index (keys, pairs), for metrics and tests."""
        counts = {key: len(index) for key, index in self.indexes.items()}
        counts.update({f"novel__{name}": len(pair.index) for name, pair in self.pairs.items()})
        if self.geo_country is not None:
            counts["geo__new_country"] = len(self.geo_country.index)
        for item in self.distinct:
            counts[f"{item.key}__distinct_{item.target}"] = len(item.index)
        return counts

    # ---------------------------------------------------------------------------------------------

    def snapshot(self, arrays: dict[str, npt.NDArray[np.generic]]) -> dict[str, int]:
        """Add this domain's arrays to ``arrays`` (names prefixed by the domain); return its scalars."""
        prefix = f"{self.domain}/"

        def add(name: str, named: dict[str, npt.NDArray[np.generic]]) -> None:
            for part, array in named.items():
                arrays[f"{prefix}{name}/{part}"] = array

        for key, index in self.indexes.items():
            add(f"index/{key}", index.snapshot())
            add(f"windows/{key}", self.windows[key].snapshot(index.high_water))
        for name, pair in self.pairs.items():
            add(f"pair/{name}", pair.index.snapshot())
        if self.geo is not None and self.geo_country is not None and self.spec.geo_key is not None:
            add("geo", self.geo.snapshot(self.indexes[self.spec.geo_key].high_water))
            add("geo_country", self.geo_country.index.snapshot())
        for number, item in enumerate(self.distinct):
            add(f"distinct/{number}/index", item.index.snapshot())
            add(f"distinct/{number}", {"ring": item.ring[: self.indexes[item.key].high_water].copy()})
        return {
            "watermark": self.watermark,
            "last_evict": self.last_evict,
            "late_events": self.late_events,
            "evictions": self.evictions,
            "capped_out": self.capped_out,
        }

    def restore(self, arrays: Mapping[str, npt.NDArray[np.generic]], scalars: Mapping[str, int]) -> None:
        """Load what :meth:`snapshot` saved."""
        prefix = f"{self.domain}/"

        def get(name: str) -> dict[str, npt.NDArray[np.generic]]:
            start = f"{prefix}{name}/"
            found = {k[len(start) :]: v for k, v in arrays.items() if k.startswith(start)}
            return {k: v for k, v in found.items() if "/" not in k}

        for key in self.indexes:
            self.indexes[key] = EntityIndex.restore(get(f"index/{key}"))
            self.windows[key].restore(get(f"windows/{key}"), self.indexes[key].capacity)
        for name, pair in self.pairs.items():
            pair.index = EntityIndex.restore(get(f"pair/{name}"))
        if self.geo is not None and self.geo_country is not None and self.spec.geo_key is not None:
            self.geo.restore(get("geo"), self.indexes[self.spec.geo_key].capacity)
            self.geo_country.index = EntityIndex.restore(get("geo_country"))
        for number, item in enumerate(self.distinct):
            item.index = EntityIndex.restore(get(f"distinct/{number}/index"))
            ring = get(f"distinct/{number}")["ring"]
            item.ring = np.zeros((0, item.window.buckets), dtype=np.int32)
            item.ensure(self.indexes[item.key].capacity)
            item.ring[: len(ring)] = ring
        self.watermark = int(scalars["watermark"])
        self.last_evict = int(scalars["last_evict"])
        self.late_events = int(scalars["late_events"])
        self.evictions = int(scalars["evictions"])
        self.capped_out = int(scalars.get("capped_out", 0))


class FeatureStep(Step):
    """Appends per-entity features to every batch (see :mod:`finsecure.features`).

    Parameters
    ----------
    config
        What to compute; :data:`~finsecure.features.config.DEFAULT_CONFIG` by default.
    step_id
        Name of the step in its pipeline.
    threads
        Threads a batch's features may use: different keys' windows and the novelty pairs are
        independent, so they run side by side (the kernels release the GIL). Default: two, or one on a
        one-core machine. Results never depend on it.

    Examples
    --------
    >>> import datetime as dt
    >>> frame = pl.DataFrame({
    ...     "ts": [dt.datetime(2024, 5, 1, 12, m, tzinfo=dt.UTC) for m in (0, 10, 20)],
    ...     "card_id": ["c1", "c1", "c2"],
    ...     "amount": [10.0, 30.0, 5.0],
    ... })
    >>> step = FeatureStep()
    >>> out = step.process(Batch(Domain.payment, frame, source="doc")).frame
    >>> out["card_id__count_1h"].to_list(), out["card_id__sum_amount_1h"].to_list()
    ([1, 2, 1], [10.0, 40.0, 5.0])
    >>> out["card_id__secs_since_last"].to_list()
    [None, 600.0, None]
    """

    def __init__(
        self, config: FeatureConfig | None = None, *, step_id: str = "features", threads: int | None = None
    ) -> None:
        self.step_id = step_id
        self.config = config if config is not None else DEFAULT_CONFIG
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)
        if self.threads < 1:
            raise ValueError("feature step: threads must be at least 1")
        self._engines: dict[Domain, _DomainEngine] = {}
        self._pool: ThreadPoolExecutor | None = None

    def columns(self, domain: Domain) -> tuple[str, ...]:
        """Names of the feature columns added to batches of ``domain``, in order."""
        return tuple(column.name for column in domain_columns(Domain(domain), self.config))

    def process(self, batch: Batch) -> Batch:
        """Append this batch's feature columns (canonical columns and row order unchanged)."""
        engine = self._engine(batch.domain)
        if engine is None:
            return batch
        if self._pool is None and self.threads > 1 and batch.frame.height >= _PARALLEL_ROWS:
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix=f"{self.step_id}-helper")
        features = engine.process(batch.frame, self._pool, self.threads)
        frame = batch.frame
        existing = set(frame.columns)
        clash = [name for name in engine.names if name in existing]
        if clash:
            frame = frame.drop(clash)  # recomputed features replace stale ones
        return batch.with_frame(frame.hstack(features))

    def close(self) -> None:
        """Stop the helper threads (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _engine(self, domain: Domain) -> _DomainEngine | None:
        engine = self._engines.get(domain)
        if engine is None:
            spec = self.config.domains.get(domain)
            if spec is None:
                return None
            engine = self._engines[domain] = _DomainEngine(Domain(domain), spec, self.config)
        return engine

    @property
    def late_events(self) -> int:
        """Rows so far that were counted at a later time than their own (all domains)."""
        return sum(engine.late_events for engine in self._engines.values())

    def state_nbytes(self) -> int:
        """Memory held by the feature state of all domains, in bytes."""
        return sum(engine.nbytes() for engine in self._engines.values())

    def live_entities(self) -> dict[str, dict[str, int]]:
        """Live entities per domain and index (keys, pairs)."""
        return {str(domain): engine.live_entities() for domain, engine in self._engines.items()}

    def snapshot(self) -> bytes:
        """All state as bytes (NumPy ``.npz``, no pickle), for :meth:`restore`."""
        arrays: dict[str, npt.NDArray[np.generic]] = {}
        scalars = {str(domain): engine.snapshot(arrays) for domain, engine in self._engines.items()}
        meta = {"version": _SNAPSHOT_VERSION, "config": self.config.fingerprint(), "domains": scalars}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return save_arrays(arrays)

    def restore(self, data: bytes) -> None:
        """Replace all state with a :meth:`snapshot` taken by a step with the same settings."""
        try:
            arrays = load_arrays(data)
            meta = json.loads(arrays.pop("meta").tobytes())
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"step {self.step_id!r}: not a feature snapshot ({exc})") from None
        if meta.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(
                f"step {self.step_id!r}: snapshot version {meta.get('version')} is not supported"
            )
        if meta.get("config") != self.config.fingerprint():
            raise ValueError(
                f"step {self.step_id!r}: the snapshot was taken with different feature settings; "
                "restore it into a step configured the same way"
            )
        self._engines = {}
        for name, scalars in meta["domains"].items():
            engine = self._engine(Domain(name))
            if engine is not None:
                engine.restore(arrays, scalars)
