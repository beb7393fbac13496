from __future__ import annotations

import numpy as np

from finsecure.sim.geo import city_table, haversine_km


def test_city_table__values_are_valid() -> None:
    cities = city_table()
    assert len(cities) > 30_000
    assert ((cities.lat >= -90) & (cities.lat <= 90)).all()
    assert ((cities.lon >= -180) & (cities.lon <= 180)).all()
    assert all(len(code) == 2 and code.isupper() for code in cities.country_codes)
    assert all(len(code) == 3 and code.isupper() for code in cities.currencies)
    # Each country's cities are one contiguous run.
    for k in (0, len(cities.country_codes) // 2, len(cities.country_codes) - 1):
        run = cities.country[cities.country_start[k] : cities.country_start[k] + cities.country_count[k]]
        assert (run == k).all()
    assert cities.currencies[cities.country_index("GB")] == "GBP"


def test_haversine_km__known_distances() -> None:
    cities = city_table()
    london, new_york = cities.index_of("GB", "London"), cities.index_of("US", "New York City")
    km = haversine_km(cities.lat[london], cities.lon[london], cities.lat[new_york], cities.lon[new_york])
    assert 5_550 < float(km) < 5_600
    assert float(haversine_km(10.0, 20.0, 10.0, 20.0)) == 0.0
    assert np.isclose(float(haversine_km(0.0, 0.0, 0.0, 180.0)), np.pi * 6371.0088)
