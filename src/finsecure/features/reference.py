"""A slow, plain-Python twin of :class:`~finsecure.features.step.FeatureStep`, for tests.

It follows the rules written in :mod:`finsecure.features.config` and in each feature module one event
at a time, with dictionaries and lists and no cleverness: every window is recounted from the
entity's full event list, every mean and standard deviation recomputed from all earlier amounts,
every distinct count rebuilt as a set. It never evicts idle entities: the step's eviction is designed
to be invisible, and comparing against a reference that keeps everything is what checks that. The one
visible drop, the cap on entities per key (``max_entities``, see
:class:`~finsecure.features.config.FeatureConfig`), it applies literally before each batch.

Only for tests and debugging: it is thousands of times slower than the step.

>>> import datetime as dt
>>> frame = pl.DataFrame({
...     "ts": [dt.datetime(2024, 5, 1, 12, m, tzinfo=dt.UTC) for m in (0, 10)],
...     "card_id": ["c1", "c1"],
...     "amount": [10.0, 30.0],
... })
>>> ReferenceFeatures().process(Domain.payment, frame)["card_id__sum_amount_1h"].to_list()
[10.0, 40.0]
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from finsecure.event.schemas import Domain
from finsecure.features.columns import domain_columns
from finsecure.features.config import DEFAULT_CONFIG, DomainFeatures, FeatureConfig, KeyFeatures, Window
from finsecure.features.geo import EARTH_RADIUS_KM
from finsecure.features.windows import STD_FLOOR

__all__ = ["ReferenceFeatures"]

_US = 1_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Row = dict[str, Any]


@dataclass
class _Entity:
    last_seen: int
    events: list[tuple[int, Row]] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)
    place: tuple[float, float, int] | None = None


@dataclass
class _DomainState:
    watermark: int | None = None
    entities: dict[str, dict[str, _Entity]] = field(default_factory=dict)
    pairs: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)


def _micros(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


class ReferenceFeatures:
    """Computes the same columns as :class:`~finsecure.features.step.FeatureStep`, one event at a time."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config if config is not None else DEFAULT_CONFIG
        self._states: dict[Domain, _DomainState] = {}

    def process(self, domain: Domain, frame: pl.DataFrame) -> pl.DataFrame:
        """Feature columns for one batch, in its row order."""
        domain = Domain(domain)
        spec = self.config.domains.get(domain)
        columns = domain_columns(domain, self.config)
        if spec is None:
            return pl.DataFrame()
        state = self._states.setdefault(domain, _DomainState())
        rows = frame.to_dicts()
        self._cap(spec, state, rows)
        times = [_micros(row["ts"]) for row in rows]
        out: list[Row] = [{} for _ in rows]
        for i in sorted(range(len(rows)), key=lambda i: times[i]):  # sorted() is stable
            out[i] = self._event(domain, spec, state, rows[i], times[i])
        if times:
            state.watermark = max([*times, *([state.watermark] if state.watermark is not None else [])])
        return pl.DataFrame(
            {c.name: [row.get(c.name) for row in out] for c in columns},
            schema={c.name: c.dtype for c in columns},
        )

    def _cap(self, spec: DomainFeatures, state: _DomainState, rows: list[Row]) -> None:
        """Before a batch: per key present in it, if more than ``max_entities`` entities were seen within
        ``entity_ttl_s`` of the watermark less ``max_delay_s``, drop every entity last seen before the
        newest time that leaves at most nine tenths of the cap."""
        if state.watermark is None:
            return
        config = self.config
        expired = state.watermark - round(config.max_delay_s * _US) - round(config.entity_ttl_s * _US)
        for key in spec.keys:
            table = state.entities.get(key.key)
            if not table or all(row.get(key.key) is None for row in rows):
                continue
            cap = config.entity_cap(key)
            recent = sorted((e.last_seen for e in table.values() if e.last_seen >= expired), reverse=True)
            if len(recent) <= cap:
                continue
            cutoff = recent[cap - cap // 10] + 1
            for value in [value for value, entity in table.items() if entity.last_seen < cutoff]:
                del table[value]

    # ---------------------------------------------------------------------------------------------

    def _event(self, domain: Domain, spec: DomainFeatures, state: _DomainState, row: Row, ts: int) -> Row:
        config = self.config
        clamped = ts
        if state.watermark is not None:
            clamped = max(ts, state.watermark - round(config.max_delay_s * _US))
        late = clamped > ts
        result: Row = {}
        entities: dict[str, tuple[_Entity, int, int | None]] = {}

        for key in spec.keys:
            value = row.get(key.key)
            if value is None:
                continue
            table = state.entities.setdefault(key.key, {})
            entity = table.get(value)
            prev: int | None
            if entity is None or clamped - entity.last_seen > round(config.entity_ttl_s * _US):
                entity = table[value] = _Entity(last_seen=clamped)
                te, prev = clamped, None
            else:
                prev = entity.last_seen
                if clamped < prev - round(config.late_tolerance_s * _US):
                    te, late = prev, True
                else:
                    te = clamped
                entity.last_seen = max(prev, te)
            entity.events.append((te, row))
            entities[key.key] = (entity, te, prev)
            result.update(self._key_features(domain, key, entity, te, prev, row))

        for item in spec.distinct:
            found = entities.get(item.key)
            if found is None:
                continue
            entity = found[0]
            window = config.window(item.window)
            targets = {
                str(event[item.target])
                for t, event in entity.events
                if event.get(item.target) is not None and self._in_window(t, entity.last_seen, window)
            }
            result[f"{item.key}__distinct_{item.target}_{item.window}"] = len(targets)

        if spec.geo_key is not None:
            result.update(self._geo(row, entities.get(spec.geo_key)))
            result["geo__new_country"] = self._novel(
                state, "geo__country", row.get(spec.geo_key), row.get("country"), clamped
            )
        for pair in spec.pairs:
            result[f"novel__{pair.name}"] = self._novel(
                state, pair.name, row.get(pair.left), row.get(pair.right), clamped
            )
        result["event__late"] = late
        return result

    @staticmethod
    def _in_window(t: int, ref: int, window: Window) -> bool:
        g = window.bucket_s * _US
        return ref // g - t // g < window.buckets

    def _channel(self, name: str, row: Row) -> float | None:
        if name == "amount":
            amount = row.get("amount")
            return None if amount is None else float(amount)
        if name == "failed_login":
            return 1.0 if row.get("action") == "login" and row.get("outcome") == "failure" else 0.0
        if name == "failure":
            return 1.0 if row.get("outcome") == "failure" else 0.0
        if name in ("bytes", "packets"):
            return float((row.get(f"{name}_out") or 0) + (row.get(f"{name}_in") or 0))
        if name == "failed_conn":
            return 1.0 if row.get("conn_state") in self.config.failed_conn_states else 0.0
        raise ValueError(f"no channel {name!r}")

    def _key_features(
        self, domain: Domain, key: KeyFeatures, entity: _Entity, te: int, prev: int | None, row: Row
    ) -> Row:
        config = self.config
        name = key.key
        ref = entity.last_seen
        result: Row = {}

        def in_window(window_name: str) -> list[Row]:
            window = config.window(window_name)
            return [event for t, event in entity.events if self._in_window(t, ref, window)]

        for window_name in key.count_windows:
            result[f"{name}__count_{window_name}"] = len(in_window(window_name))
        for sums in key.sums:
            for window_name in sums.windows:
                events = in_window(window_name)
                numbers = [self._channel(sums.channel, event) for event in events]
                total = math.fsum(number for number in numbers if number is not None)
                if sums.kind == "count":
                    value: float | int = round(total)
                elif sums.kind == "per_second":
                    value = total / config.window(window_name).length_s
                elif sums.kind == "ratio":
                    value = total / len(events)
                else:
                    value = total
                result[f"{name}__{sums.label}_{window_name}"] = value
        if key.amount_stats:
            amount = self._channel("amount", row)
            earlier = entity.amounts
            mean = std = to_mean = zscore = None
            if earlier:
                mean = math.fsum(earlier) / len(earlier)
                if amount is not None and mean != 0:
                    to_mean = amount / mean
            if len(earlier) >= 2 and mean is not None:
                std = math.sqrt(math.fsum((x - mean) ** 2 for x in earlier) / len(earlier))
                if amount is not None and std > STD_FLOOR * max(1.0, abs(mean)):
                    zscore = (amount - mean) / std
            result[f"{name}__mean_amount"] = mean
            result[f"{name}__std_amount"] = std
            result[f"{name}__amount_to_mean"] = to_mean
            result[f"{name}__amount_zscore"] = zscore
            if amount is not None:
                earlier.append(amount)
        if key.secs_since_last:
            result[f"{name}__secs_since_last"] = None if prev is None else max(0, te - prev) / 1e6
        return result

    def _geo(self, row: Row, found: tuple[_Entity, int, int | None] | None) -> Row:
        config = self.config
        result: Row = {}
        lat, lon, home_lat, home_lon = (row.get(name) for name in ("lat", "lon", "home_lat", "home_lon"))
        if lat is not None and lon is not None and home_lat is not None and home_lon is not None:
            result["geo__home_distance_km"] = _haversine(lat, lon, home_lat, home_lon)
        if found is None or lat is None or lon is None:
            return result
        entity, te, _ = found
        if entity.place is not None:
            last_lat, last_lon, last_t = entity.place
            distance = _haversine(last_lat, last_lon, lat, lon)
            gap_us = max(abs(te - last_t), round(config.min_travel_s * _US))
            speed = distance / (gap_us / 3.6e9)
            result["geo__distance_km"] = distance
            result["geo__speed_kmh"] = speed
            result["geo__impossible_travel"] = (
                speed > config.impossible_speed_kmh and distance > config.impossible_min_km
            )
        if entity.place is None or te >= entity.place[2]:
            entity.place = (lat, lon, te)
        return result

    def _novel(
        self, state: _DomainState, name: str, left: object, right: object, clamped: int
    ) -> bool | None:
        if left is None or right is None:
            return None
        seen = state.pairs.setdefault(name, {})
        pair = (str(left), str(right))
        last = seen.get(pair)
        novel = last is None or clamped - last > round(self.config.novelty_ttl_s * _US)
        seen[pair] = clamped if last is None or novel else max(last, clamped)
        return novel
