"""Geo features: distance from home, distance and speed between places, impossible travel."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.features.geo import haversine_km
from finsecure.features.step import FeatureStep
from finsecure.pipeline.batch import Batch
from tests.features.helpers import EPOCH, canonical_frame

PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)
NEW_YORK = (40.7128, -74.0060)


def _run(rows: list[dict[str, object]], step: FeatureStep | None = None) -> pl.DataFrame:
    step = step or FeatureStep()
    return step.process(Batch(Domain.payment, canonical_frame(Domain.payment, rows), source="test")).frame


def _at(
    minutes: float, place: tuple[float, float] | None, card: str = "c1", **extra: object
) -> dict[str, object]:
    row: dict[str, object] = {"ts": EPOCH + dt.timedelta(minutes=minutes), "card_id": card, **extra}
    if place is not None:
        row["lat"], row["lon"] = place
    return row


def test_haversine_km__known_distances() -> None:
    assert haversine_km(*PARIS, *PARIS) == 0.0
    assert haversine_km(*LONDON, *PARIS) == pytest.approx(343.5, abs=1.0)
    assert haversine_km(*PARIS, *NEW_YORK) == pytest.approx(5837, rel=0.01)
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(20015.1, abs=1.0)


def test_geo__impossible_travel_flags_only_fast_long_trips() -> None:
    out = _run(
        [
            _at(0, PARIS, country="FR"),
            _at(60, NEW_YORK, country="US"),  # 5,800 km in an hour
            _at(61, None),  # not located: no geo features
            _at(60 * 12, NEW_YORK),  # same place, later
            _at(60 * 12 + 0.5, (40.75, -74.0)),  # 4 km in 30 s: fast, but too short to count
        ]
    )
    assert out["geo__impossible_travel"].to_list() == [None, True, None, False, False]
    assert out["geo__distance_km"][1] == pytest.approx(haversine_km(*PARIS, *NEW_YORK))
    assert out["geo__speed_kmh"][1] == pytest.approx(haversine_km(*PARIS, *NEW_YORK))
    # Gaps under min_travel_s (60 s) count as 60 s.
    assert out["geo__speed_kmh"][4] == pytest.approx(haversine_km(*NEW_YORK, 40.75, -74.0) * 60)
    assert out["geo__new_country"].to_list() == [True, True, None, None, None]


def test_geo__home_distance_needs_all_coordinates() -> None:
    out = _run(
        [
            _at(0, PARIS, home_lat=LONDON[0], home_lon=LONDON[1]),
            _at(1, PARIS, home_lat=LONDON[0]),
            _at(2, None, card="c2"),
        ]
    )
    assert out["geo__home_distance_km"][0] == pytest.approx(haversine_km(*PARIS, *LONDON))
    assert out["geo__home_distance_km"].to_list()[1:] == [None, None]


def test_geo__late_place_does_not_replace_a_newer_one() -> None:
    step = FeatureStep()
    _run([_at(10, PARIS)], step)
    late = _run([_at(8, LONDON)], step)  # 2 minutes late, within tolerance
    assert late["geo__distance_km"][0] == pytest.approx(haversine_km(*PARIS, *LONDON))
    assert late["geo__speed_kmh"][0] == pytest.approx(haversine_km(*PARIS, *LONDON) * 30)
    after = _run([_at(11, PARIS)], step)  # compared with Paris at 10, not London at 8
    assert after["geo__distance_km"][0] == 0.0
