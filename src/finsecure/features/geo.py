"""Geo features: distance from home, distance and speed from the previous place, impossible travel.

Semantics (the reference implementation computes exactly this)
-------------------------------------------------------------
* A row is *located* when both ``lat`` and ``lon`` are present. Distances are great-circle
  (haversine) distances on a sphere of radius :data:`EARTH_RADIUS_KM`.
* ``geo__home_distance_km`` (payments): distance between ``lat/lon`` and ``home_lat/home_lon``; null
  unless all four are present. It needs no state.
* Per geo entity (the card for payments, the user for sign-ins and cloud calls) the state keeps the
  located event with the newest effective time seen so far (a late row never replaces a newer place).
  For a located row with such an earlier place, ``geo__distance_km`` is the distance from it,
  ``geo__speed_kmh`` that distance divided by the time between the two, taken as an absolute value and
  at least ``min_travel_s`` (so two places at the same second give a large, finite speed), and
  ``geo__impossible_travel`` is true when the speed is above ``impossible_speed_kmh`` and the distance
  above ``impossible_min_km`` (IP-address locations are only city-accurate, so short hops never count).
  Otherwise all three are null. The place is forgotten when the entity starts afresh (idle longer than
  ``entity_ttl_s``).
* ``geo__new_country`` (entity x country novelty) is computed with the novelty pairs, see
  :mod:`finsecure.features.novelty`.

The kernels release the GIL, so travel features of a batch are computed while other threads work.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from finsecure.features._numba import NONE_TS, kernel

__all__ = ["EARTH_RADIUS_KM", "GeoState", "haversine_km"]

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), in km."""


@kernel
def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2.0) ** 2
    if a > 1.0:  # rounding can push it just above 1 for antipodal points; NaN passes through
        a = 1.0
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees.

    Examples
    --------
    >>> round(haversine_km(51.5074, -0.1278, 48.8566, 2.3522))  # London to Paris
    344
    """
    return float(_haversine(lat1, lon1, lat2, lon2))


@kernel
def _home_distance(
    lat: npt.NDArray[np.float64],
    lon: npt.NDArray[np.float64],
    home_lat: npt.NDArray[np.float64],
    home_lon: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> None:
    for i in range(len(lat)):
        out[i] = _haversine(lat[i], lon[i], home_lat[i], home_lon[i])  # NaN in, NaN out


@kernel
def _geo(
    order: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    te: npt.NDArray[np.int64],
    prev: npt.NDArray[np.int64],
    lat: npt.NDArray[np.float64],
    lon: npt.NDArray[np.float64],
    speed_limit_kmh: float,
    min_km: float,
    min_travel_us: int,
    loc_lat: npt.NDArray[np.float64],
    loc_lon: npt.NDArray[np.float64],
    loc_t: npt.NDArray[np.int64],
    out_dist: npt.NDArray[np.float64],
    out_speed: npt.NDArray[np.float64],
    out_flag: npt.NDArray[np.int8],
) -> None:
    for k in range(len(order)):
        i = order[k]
        e = idx[i]
        if e < 0:
            continue
        if prev[i] == NONE_TS:
            loc_t[e] = NONE_TS
        la = lat[i]
        lo = lon[i]
        if la != la or lo != lo:
            continue
        t = te[i]
        last = loc_t[e]
        if last != NONE_TS:
            distance = _haversine(loc_lat[e], loc_lon[e], la, lo)
            gap = max(abs(t - last), min_travel_us)
            speed = distance / (gap / 3.6e9)
            out_dist[i] = distance
            out_speed[i] = speed
            out_flag[i] = 1 if (speed > speed_limit_kmh and distance > min_km) else 0
        if last == NONE_TS or t >= last:
            loc_lat[e] = la
            loc_lon[e] = lo
            loc_t[e] = t


class GeoState:
    """Where each geo entity was last located, indexed by the geo key's entity slots."""

    def __init__(self, *, speed_limit_kmh: float, min_km: float, min_travel_s: float) -> None:
        self._speed_limit = float(speed_limit_kmh)
        self._min_km = float(min_km)
        self._min_travel_us = round(min_travel_s * 1_000_000)
        self.loc_lat = np.zeros(0, dtype=np.float64)
        self.loc_lon = np.zeros(0, dtype=np.float64)
        self.loc_t = np.zeros(0, dtype=np.int64)

    def ensure(self, capacity: int) -> None:
        """Grow the state arrays to at least ``capacity`` entities."""
        if len(self.loc_t) >= capacity:
            return
        size = max(len(self.loc_t), 1)
        while size < capacity:
            size *= 2
        self.loc_lat = np.concatenate([self.loc_lat, np.zeros(size - len(self.loc_lat))])
        self.loc_lon = np.concatenate([self.loc_lon, np.zeros(size - len(self.loc_lon))])
        self.loc_t = np.concatenate([self.loc_t, np.full(size - len(self.loc_t), NONE_TS, dtype=np.int64)])

    def run(
        self,
        order: npt.NDArray[np.int64],
        idx: npt.NDArray[np.int64],
        te: npt.NDArray[np.int64],
        prev: npt.NDArray[np.int64],
        lat: npt.NDArray[np.float64],
        lon: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int8]]:
        """Distance (km), speed (km/h) and impossible-travel flag (-1 null, 0, 1) per row."""
        rows = len(idx)
        out_dist = np.full(rows, np.nan)
        out_speed = np.full(rows, np.nan)
        out_flag = np.full(rows, -1, dtype=np.int8)
        _geo(
            order,
            idx,
            te,
            prev,
            lat,
            lon,
            self._speed_limit,
            self._min_km,
            self._min_travel_us,
            self.loc_lat,
            self.loc_lon,
            self.loc_t,
            out_dist,
            out_speed,
            out_flag,
        )
        return out_dist, out_speed, out_flag

    @staticmethod
    def home_distance(
        lat: npt.NDArray[np.float64],
        lon: npt.NDArray[np.float64],
        home_lat: npt.NDArray[np.float64],
        home_lon: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.float64]:
        """Distance (km) from home per row; NaN where any coordinate is missing."""
        out = np.empty(len(lat), dtype=np.float64)
        _home_distance(lat, lon, home_lat, home_lon, out)
        return out

    def nbytes(self) -> int:
        """Memory held by the state arrays, in bytes."""
        return self.loc_lat.nbytes + self.loc_lon.nbytes + self.loc_t.nbytes

    def snapshot(self, used: int) -> dict[str, npt.NDArray[np.generic]]:
        """The first ``used`` entities' state as named arrays."""
        return {
            "loc_lat": self.loc_lat[:used].copy(),
            "loc_lon": self.loc_lon[:used].copy(),
            "loc_t": self.loc_t[:used].copy(),
        }

    def restore(self, arrays: dict[str, npt.NDArray[np.generic]], capacity: int) -> None:
        """Load :meth:`snapshot` output, sized for ``capacity`` entities."""
        self.loc_lat = np.zeros(0, dtype=np.float64)
        self.loc_lon = np.zeros(0, dtype=np.float64)
        self.loc_t = np.zeros(0, dtype=np.int64)
        self.ensure(capacity)
        used = len(arrays["loc_t"])
        self.loc_lat[:used] = arrays["loc_lat"]
        self.loc_lon[:used] = arrays["loc_lon"]
        self.loc_t[:used] = arrays["loc_t"]
