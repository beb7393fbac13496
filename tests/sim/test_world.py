from __future__ import annotations

import ipaddress

import numpy as np
import polars as pl

from finsecure.sim import SimConfig, World, build_world
from finsecure.sim.geo import haversine_km


def _in(network: str, addresses: pl.Series) -> bool:
    net = ipaddress.ip_network(network)
    return all(ipaddress.ip_address(a) in net for a in addresses.to_list())


def test_build_world__coordinates_are_valid_and_near_real_cities(small_world: World) -> None:
    w = small_world
    cities = w.cities
    for lat, lon in ((w.home_lat, w.home_lon), (w.merch_lat, w.merch_lon)):
        assert np.isfinite(lat).all()
        assert np.isfinite(lon).all()
        assert ((lat >= -90) & (lat <= 90)).all()
        assert ((lon >= -180) & (lon <= 180)).all()
    km = haversine_km(w.home_lat, w.home_lon, cities.lat[w.cust_city], cities.lon[w.cust_city])
    assert float(np.median(km)) < 5.0
    assert float(km.max()) < 60.0
    homes = {cities.country_codes[k] for k in np.unique(w.cust_country)}
    assert homes <= set(SimConfig().home_countries)
    km = haversine_km(w.merch_lat, w.merch_lon, cities.lat[w.merch_city], cities.lon[w.merch_city])
    assert float(km.max()) < 60.0


def test_build_world__every_place_a_customer_can_be_has_a_shop(small_world: World) -> None:
    w = small_world
    assert (w.city_merch_count[w.cust_city] > 0).all()
    assert (w.city_merch_count[w.destinations] > 0).all()
    assert not w.merch_online[w.city_merch_order].any()
    assert (w.term_count[~w.merch_online] >= 1).all()
    assert (w.term_count[w.merch_online] == 0).all()


def test_build_world__ids_are_unique_tokens(small_world: World) -> None:
    w = small_world
    for ids, prefix in (
        (w.user_ids, "cust_"),
        (w.account_ids, "acc_"),
        (w.card_ids, "card_"),
        (w.device_ids, "dev_"),
        (w.payee_ids, "acc_"),  # a customer is paid into their account number
        (w.merchant_ids, "merch_"),
        (w.terminal_ids, "term_"),
        (w.employee_ids, "emp_"),
    ):
        assert ids.n_unique() == len(ids)
        assert ids.str.starts_with(prefix).all()
    assert w.access_key_ids.str.contains(r"^AKIA[A-Z2-7]{16}$").all()
    assert w.principal_arns.str.contains(r"^arn:aws:iam::\d{12}:user/emp_\d{5}$").all()


def test_build_world__addresses_are_synthetic(small_world: World) -> None:
    w = small_world
    n = w.n_customers
    assert _in("100.64.0.0/10", w.ip_text[:n])
    assert _in("198.18.0.0/16", w.ip_text[n:])
    assert _in("10.0.0.0/8", w.ws_ip_text)
    assert _in("10.0.0.0/8", w.host_ip_text)
    assert _in("203.0.113.0/24", w.egress_ips)
    country = w.residential.country_of(w.ip_home)
    assert (country == w.cust_country).all()


def test_build_world__same_seed_same_world_other_seed_other_world() -> None:
    a, b, c = (build_world(SimConfig(customers=500, seed=s)) for s in (4, 4, 5))
    assert np.array_equal(a.cust_city, b.cust_city)
    assert a.card_ids.equals(b.card_ids)
    assert not np.array_equal(a.cust_city, c.cust_city)
    assert not a.card_ids.equals(c.card_ids)


def test_location__honest_travel_is_never_faster_than_a_plane(small_world: World) -> None:
    w = small_world
    travellers = np.flatnonzero(w.travel_period_s > 0)[:200]
    assert len(travellers) > 50
    times = np.arange(1_714_953_600, 1_714_953_600 + 200 * 86_400, 1_800, dtype=np.int64)
    customers = np.repeat(travellers, len(times))
    at = np.tile(times, len(travellers))
    city, transit = w.location(customers, at)
    assert (city != w.cust_city[customers]).any(), "nobody ever left home"
    seen = ~transit
    c, t, x = customers[seen], at[seen], city[seen]
    same = c[1:] == c[:-1]
    km = haversine_km(w.cities.lat[x[:-1]], w.cities.lon[x[:-1]], w.cities.lat[x[1:]], w.cities.lon[x[1:]])
    hours = (t[1:] - t[:-1]) / 3_600
    assert (km[same] / hours[same]).max() < 1_000.0
