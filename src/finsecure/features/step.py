"""The feature step: stateful per-entity features appended to every batch.

One :class:`FeatureStep` serves all four domains. It keeps one independent engine per domain
(created on that domain's first batch), because a batch holds one domain and the features differ by
domain: "how many payments this user made" must not count their sign-ins. One step still means one
name in metrics, one snapshot to save and one set of settings to configure. In scale-out mode each
worker runs its own step over the partitions it owns (state is partitioned by entity key upstream).

Per batch (all columnar; no Python loop over rows):

1. Row times as int64 µs, a stable sort order by time, and the watermark clamp.
2. Every ``evict_every_s`` of event time, idle entities are evicted from every index, at a
   cut-off that makes eviction invisible in the results (see ``_DomainEngine._maybe_evict``).
3. Per key column: dense indices (:class:`~finsecure.features.entity_index.EntityIndex`), effective
   times (:mod:`~finsecure.features.clock`), window kernel (:mod:`~finsecure.features.windows`).
4. Distinct counts, geo, novelty pairs; then all feature columns are appended in one ``hstack``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain
from finsecure.features._numba import NONE_TS
from finsecure.features.clock import effective_times
from finsecure.features.columns import ColumnInfo, arrow_type, domain_columns, key_columns
from finsecure.features.config import DEFAULT_CONFIG, DomainFeatures, FeatureConfig
from finsecure.features.entity_index import EntityIndex, load_arrays, save_arrays
from finsecure.features.geo import GeoState
from finsecure.features.network import DistinctState
from finsecure.features.novelty import NoveltyState
from finsecure.features.windows import WindowState, channel_values
from finsecure.pipeline.batch import Batch, Step

__all__ = ["FeatureStep", "event_times_us"]

_US = 1_000_000
_SNAPSHOT_VERSION = 1


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
    # Writable and contiguous, so every kernel sees one array type (numba compiles one version per type).
    return np.require(ts.to_physical().to_numpy(), np.int64, ["C", "W"])


def _float_column(values: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    missing = np.isnan(values)
    if valid is not None:
        missing |= ~valid
    return pa.array(values, type=pa.float64(), mask=missing if missing.any() else None)


def _int_column(values: npt.NDArray[np.int32], valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    mask = None if valid is None or valid.all() else ~valid
    return pa.array(values, type=pa.int32(), mask=mask)


def _bool_column(values: npt.NDArray[np.bool_], valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    mask = None if valid is None or valid.all() else ~valid
    return pa.array(values, type=pa.bool_(), mask=mask)


def _column(name: str, frame: pl.DataFrame) -> pl.Series | None:
    if name not in frame.columns:
        return None
    column = frame[name]
    return None if column.null_count() == frame.height else column


def _floats(frame: pl.DataFrame, name: str) -> npt.NDArray[np.float64]:
    if name not in frame.columns:
        return np.full(frame.height, np.nan)
    return np.require(frame[name].cast(pl.Float64).to_numpy(), np.float64, ["C", "W"])


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
        self._null_columns: dict[tuple[int, str], pa.Array] = {}
        self.watermark = NONE_TS
        self.last_evict = NONE_TS
        self.late_events = 0
        self.evictions = 0

    # ---------------------------------------------------------------------------------------------

    def process(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The feature columns for ``frame``, in its row order."""
        rows = frame.height
        if rows == 0:
            return pl.DataFrame(schema={column.name: column.dtype for column in self.columns})
        config = self.config
        ts = event_times_us(frame)
        order = np.argsort(ts, kind="stable").astype(np.int64, copy=False)
        if self.watermark != NONE_TS:
            self._maybe_evict()
            clamped = np.maximum(ts, self.watermark - round(config.max_delay_s * _US))
        else:
            clamped = ts
        late = clamped > ts
        tolerance = round(config.late_tolerance_s * _US)
        values = channel_values(self.domain, frame, self.channels, config)
        arrays: list[pa.Array] = []
        keyed: dict[str, _Keyed] = {}

        for key in self.spec.keys:
            state = self.windows[key.key]
            column = _column(key.key, frame)
            if column is None:
                continue
            index = self.indexes[key.key]
            idx = index.lookup(column)
            state.ensure(index.capacity)
            te, prev = effective_times(
                order,
                idx,
                clamped,
                index.last_seen,
                tolerance_us=tolerance,
                ttl_us=round(config.entity_ttl_s * _US),
                late=late,
            )
            rows_values = values[[self.channels.index(c) for c in state.channels]]
            counts, sums, stats = state.run(order, idx, te, prev, rows_values)
            keyed[key.key] = _Keyed(idx, te, prev, idx >= 0, counts, sums, stats)

        for key in self.spec.keys:
            arrays += self._key_arrays(key.key, keyed.get(key.key), rows)

        for item in self.distinct:
            found = keyed.get(item.key)
            if found is None:
                arrays.append(self._nulls(rows, pa.int32()))
                continue
            item.ensure(self.indexes[item.key].capacity)
            arrays.append(_int_column(item.run(frame, order, found.idx, found.te, found.prev), found.valid))

        arrays += self._geo_arrays(frame, keyed, order, clamped)
        ttl_novelty = round(config.novelty_ttl_s * _US)
        for pair in self.pairs.values():
            novel, has_pair = pair.run(frame, order, clamped, ttl_us=ttl_novelty)
            arrays.append(_bool_column(novel, has_pair))
        arrays.append(pa.array(late, type=pa.bool_()))

        self.late_events += int(late.sum())
        self.watermark = max(self.watermark, int(ts.max()))
        return pl.DataFrame(pa.Table.from_arrays(arrays, names=[column.name for column in self.columns]))

    def _key_arrays(self, key: str, found: _Keyed | None, rows: int) -> list[pa.Array]:
        spec = self._key_specs[key]
        state = self.windows[key]
        names = state.window_names
        if found is None:
            return [self._nulls(rows, arrow) for arrow in self._key_types[key]]
        valid, cnt, sums, stats = found.valid, found.counts, found.sums, found.stats
        arrays = [_int_column(cnt[names.index(name)], valid) for name in spec.count_windows]
        for item in spec.sums:
            channel = state.channels.index(item.channel)
            for name in item.windows:
                w = names.index(name)
                total = sums[channel, w]
                if item.kind == "count":
                    whole = np.rint(np.where(valid, total, 0.0)).astype(np.int32)
                    arrays.append(_int_column(whole, valid))
                elif item.kind == "per_second":
                    arrays.append(_float_column(total / state.window_seconds[w], valid))
                elif item.kind == "ratio":
                    arrays.append(_float_column(total / np.maximum(cnt[w], 1), valid))
                else:
                    arrays.append(_float_column(total, valid))
        if spec.amount_stats:
            arrays += [_float_column(stats[row], valid) for row in (1, 2, 3, 4)]
        if spec.secs_since_last:
            arrays.append(_float_column(stats[0], valid))
        return arrays

    def _geo_arrays(
        self,
        frame: pl.DataFrame,
        keyed: Mapping[str, _Keyed],
        order: npt.NDArray[np.int64],
        clamped: npt.NDArray[np.int64],
    ) -> list[pa.Array]:
        if self.geo is None or self.geo_country is None or self.spec.geo_key is None:
            return []
        rows = frame.height
        arrays: list[pa.Array] = []
        lat = _floats(frame, "lat")
        lon = _floats(frame, "lon")
        if self._home_distance:
            if any(_column(name, frame) is None for name in ("lat", "lon", "home_lat", "home_lon")):
                arrays.append(self._nulls(rows, pa.float64()))
            else:
                home = GeoState.home_distance(
                    lat, lon, _floats(frame, "home_lat"), _floats(frame, "home_lon")
                )
                arrays.append(_float_column(home, None))
        found = keyed.get(self.spec.geo_key)
        if found is None:
            arrays += [
                self._nulls(rows, pa.float64()),
                self._nulls(rows, pa.float64()),
                self._nulls(rows, pa.bool_()),
            ]
        else:
            valid = found.valid
            self.geo.ensure(self.indexes[self.spec.geo_key].capacity)
            distance, speed, flag = self.geo.run(order, found.idx, found.te, found.prev, lat, lon)
            arrays += [
                _float_column(distance, valid),
                _float_column(speed, valid),
                _bool_column(flag == 1, valid & (flag >= 0)),
            ]
        novel, has_pair = self.geo_country.run(
            frame, order, clamped, ttl_us=round(self.config.novelty_ttl_s * _US)
        )
        arrays.append(_bool_column(novel, has_pair))
        return arrays

    def _nulls(self, rows: int, arrow: pa.DataType) -> pa.Array:
        """An all-null column, reused across batches of the same size (Arrow arrays are immutable)."""
        key = (rows, str(arrow))
        cached = self._null_columns.get(key)
        if cached is None:
            if len(self._null_columns) > 64:
                self._null_columns.clear()  # batch sizes vary: keep the cache small
            cached = self._null_columns[key] = pa.nulls(rows, arrow)
        return cached

    # ---------------------------------------------------------------------------------------------

    def _maybe_evict(self) -> None:
        """Evict idle entities when the watermark moved ``evict_every_s`` since the last time.

        Why eviction never changes a result: every later row has a clamped time of at least
        ``watermark - max_delay``. An entity is evicted only when its ``last_seen`` is before
        ``watermark - max_delay - ttl``, so any later row of it is more than ``ttl`` after its
        ``last_seen`` and would start it afresh anyway. Distinct-count pairs use the window length as
        their time-to-live: a pair that old is outside every later window.
        """
        every = round(self.config.evict_every_s * _US)
        if self.last_evict != NONE_TS and self.watermark - self.last_evict < every:
            return
        self.last_evict = self.watermark
        base = self.watermark - round(self.config.max_delay_s * _US)
        for index in self.indexes.values():
            self.evictions += index.evict(base - round(self.config.entity_ttl_s * _US))
        for pair in (*self.pairs.values(), *([self.geo_country] if self.geo_country else [])):
            self.evictions += pair.index.evict(base - round(self.config.novelty_ttl_s * _US))
        for item in self.distinct:
            self.evictions += item.index.evict(base - item.window.length_s * _US)

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


class FeatureStep(Step):
    """Appends per-entity features to every batch (see :mod:`finsecure.features`).

    Parameters
    ----------
    config
        What to compute; :data:`~finsecure.features.config.DEFAULT_CONFIG` by default.
    step_id
        Name of the step in its pipeline.

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

    def __init__(self, config: FeatureConfig | None = None, *, step_id: str = "features") -> None:
        self.step_id = step_id
        self.config = config if config is not None else DEFAULT_CONFIG
        self._engines: dict[Domain, _DomainEngine] = {}

    def columns(self, domain: Domain) -> tuple[str, ...]:
        """Names of the feature columns added to batches of ``domain``, in order."""
        return tuple(column.name for column in domain_columns(Domain(domain), self.config))

    def process(self, batch: Batch) -> Batch:
        """Append this batch's feature columns (canonical columns and row order unchanged)."""
        engine = self._engine(batch.domain)
        if engine is None:
            return batch
        features = engine.process(batch.frame)
        frame = batch.frame
        existing = set(frame.columns)
        clash = [name for name in features.columns if name in existing]
        if clash:
            frame = frame.drop(clash)  # recomputed features replace stale ones
        return batch.with_frame(frame.hstack(features.get_columns()))

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
