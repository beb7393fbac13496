"""Everyday behaviour of the bank, in all four domains, for one slice of simulated time.

Each stream (shoppers, online banking, staff sign-ins, workstations, customers reaching the web front,
servers, internet noise, engineers' and service roles' cloud calls) is a Poisson process whose intensity
follows a daily and weekly cycle in the local solar time of whoever acts (`catalog.DayProfile`).
Arrivals are drawn for a whole slice at once, already in time order, and thinned by the cycle; columns
are NumPy arrays of row numbers into vocabularies (`frames.assemble`), so the cost is a few vector
operations per event and never a Python loop.

Noise that a good detector must not flag is part of the background: trips abroad (consistent in time,
see `World.location`), new devices confirmed with a one-time code, mistyped passwords followed by success,
VPNs, payee changes, sign-ins roaming on a home mobile network, declines, AccessDenied errors and console
sign-ins in the cloud, and the internet's steady trickle of one-off port probes. Every background row
has ``label = 0``.

Rows derived from an arrival (a logout after a sign-in...) may fall after the slice; the caller carries
them over to the next slice.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.sim import catalog
from finsecure.sim.catalog import DayProfile
from finsecure.sim.config import SimConfig
from finsecure.sim.frames import Part, assemble
from finsecure.sim.sampling import AliasTable, sorted_times
from finsecure.sim.text import hex_ids, ipv4_text, mix64, uniform01
from finsecure.sim.world import World

__all__ = ["SOURCES", "Background"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
RngFor = Callable[[Domain], np.random.Generator]

SOURCES: Mapping[Domain, str] = {
    Domain.payment: "sim_card_switch",
    Domain.auth: "sim_online_banking",
    Domain.network: "sim_zeek_conn",
    Domain.cloud: "sim_cloudtrail",
}
"""The ``source`` column of each domain (where a real bank's feed would come from)."""

US = 1_000_000
_DAY_US = 86_400 * US

# Per-entity daily volumes of the streams (before `SimConfig.background_scale`).
_WORKSTATION_FLOWS = 1_500.0
_SERVER_FLOWS = 2_500.0
_SESSION_FLOWS = 3.0
_ENGINEER_CALLS = 250.0
_ENGINEER_CONSOLE = 1.2
_STAFF_SIGN_INS = 2.0
_ENGINEER_SERVER_LOGINS = 6.0
_SCAN_SHARE = 0.003

CHANNELS = catalog.series(["pos", "ecommerce", "atm", "transfer", "instant_transfer", "direct_debit"])
POS, ECOM, ATM, TRANSFER, INSTANT, DEBIT = range(6)
ENTRY_MODES = pl.concat([catalog.POS_ENTRY_MODES, catalog.ONLINE_ENTRY_MODES], rechunk=True)
ENTRY_CHIP = 1
_ATM_CATEGORY = catalog.CATEGORY_INDEX["atm"]
_UTILITY_CATEGORY = catalog.CATEGORY_INDEX["utilities"]
AUTH_RESULTS = catalog.series(["approved", "declined"])
OUTCOMES = catalog.series(["success", "failure"])
PROTOCOLS = catalog.series(["tcp", "udp"])
DIRECTIONS = catalog.series(["outbound", "internal", "inbound"])
REGIONS = catalog.series(["eu-west-1", "eu-central-1", "us-east-1"])
ACTIONS = catalog.series(
    [
        "login",
        "mfa_challenge",
        "device_add",
        "logout",
        "payee_add",
        "password_change",
        "limit_change",
        "mfa_change",
        "contact_change",
        "payee_remove",
    ]
)
LOGIN, MFA, DEVICE_ADD, LOGOUT, PAYEE_ADD = range(5)
PAYEE_REMOVE = 9
APPS = catalog.series(["mobile_banking", "online_banking", "workforce_sso", "ssh", "rdp"])
SSH_APP = 3
_APP_OF_KIND = np.array([0, 1, 0], dtype=np.int64)
AUTH_METHODS = catalog.series(["biometric", "password", "otp_sms", "push", "publickey"])
PUBLICKEY = 4
_METHOD_OF_KIND = np.array([0, 1, 0], dtype=np.int64)
OTP_SMS, PUSH = 2, 3
AUTH_USER_AGENTS = pl.concat(
    [catalog.USER_AGENTS, catalog.series([catalog.WORKSTATION_USER_AGENT, catalog.SSH_CLIENT])], rechunk=True
)
FAILURE_REASONS = catalog.series(["wrong_password", "account_locked", "unknown_user"])
# Rare account actions after a sign-in: cumulative probabilities, in ACTIONS order from PAYEE_ADD.
_RARE_ACTION_CDF = np.cumsum([0.006, 0.0015, 0.001, 0.0005, 0.0005, 0.001])

# Workstation services inside the bank: (host kind, port, udp?, Zeek service, bytes out, bytes in, weight).
_WS_INTERNAL = (
    ("dc", 53, True, "dns", 70, 140, 35.0),
    ("dc", 88, False, "krb", 1_500, 1_500, 10.0),
    ("dc", 389, False, "ldap", 800, 3_000, 10.0),
    ("file", 445, False, "smb", 3_000, 80_000, 20.0),
    ("app", 443, False, "ssl", 2_000, 40_000, 22.0),
    ("bastion", 22, False, "ssh", 4_000, 20_000, 0.6),
    ("app", 3389, False, "rdp", 50_000, 400_000, 1.0),
)
# Server to server: (source kind, destination kind, port, udp?, service, bytes out, bytes in, weight).
_SERVER_PAIRS = (
    ("web", "api", 8443, False, "ssl", 3_000, 8_000, 30.0),
    ("api", "db", 5432, False, "postgresql", 1_200, 6_000, 30.0),
    ("app", "db", 5432, False, "postgresql", 1_500, 20_000, 15.0),
    ("app", "api", 8443, False, "ssl", 2_500, 9_000, 10.0),
    ("backup", "file", 445, False, "smb", 200_000, 5_000, 2.0),
    ("app", "dc", 53, True, "dns", 70, 140, 10.0),
    ("mail", "dc", 389, False, "ldap", 800, 3_000, 3.0),
    ("bastion", "app", 22, False, "ssh", 5_000, 30_000, 0.6),
    ("bastion", "db", 22, False, "ssh", 5_000, 30_000, 0.3),
)
SERVICES = catalog.series(
    sorted(
        {str(r[3]) for r in _WS_INTERNAL} | {str(r[4]) for r in _SERVER_PAIRS} | {"http", "ssl", "ssh", "rdp"}
    )
)
_SERVICE_INDEX = {name: k for k, name in enumerate(SERVICES.to_list())}
# Cloud resources of each kind per account (the vocabulary `Background` builds once).
_RESOURCE_KINDS = ("object", "bucket", "instance", "key", "role", "function", "table")
_RESOURCES_PER_KIND = (5 * 200, 5, 40, 4, 6, 8, 6)


# 4,096 evenly spaced quantiles of the standard normal: log-normal draws by look-up, without exp() per value.
_NORMAL_QUANTILES = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / 4_096) for i in range(4_096)])
_SPREAD_OUT, _SPREAD_IN, _SPREAD_TIME = (np.exp(s * _NORMAL_QUANTILES) for s in (0.9, 1.1, 1.3))


def cdf(weights: list[float] | tuple[float, ...] | F64) -> F64:
    """Cumulative probabilities of relative weights (for ``np.searchsorted(cdf, u, side="right")``)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.asarray(np.cumsum(w) / w.sum(), dtype=np.float64)


def pick(table: F64, u: F64) -> I64:
    """Category indices drawn by uniforms ``u`` from a `cdf`."""
    return np.minimum(np.searchsorted(table, u, side="right"), len(table) - 1).astype(np.int64)


class Background:
    """Generates the background rows of any slice of time for one world.

    Parameters
    ----------
    world
        The entities.
    config
        Uses ``background_scale``, ``tenant`` and, in live mode, ``rate``.
    flat
        Ignore daily and weekly cycles (live mode keeps a steady stream).
    """

    def __init__(self, world: World, config: SimConfig, *, flat: bool = False) -> None:
        w = world
        self.world = world
        self.config = config
        self.flat = flat
        self.pay_sampler = AliasTable.build(w.pay_rate)
        self.login_sampler = AliasTable.build(w.login_rate)
        engineers = np.flatnonzero(w.emp_role >= 1).astype(np.int64)
        self.engineers = engineers if len(engineers) else np.zeros(1, dtype=np.int64)
        self.hq_lon = float(w.cities.lon[w.hq_city])
        self.hq_lat = float(w.cities.lat[w.hq_city])
        self.hq_code = w.cities.country_codes[w.hq_country]
        utilities = w.online_merchants[w.merch_category[w.online_merchants] == _UTILITY_CATEGORY]
        self.utilities = utilities if len(utilities) else w.online_merchants[:1]
        self.countries = catalog.series(list(w.cities.country_codes))
        self.n_hosts = len(w.host_kind)
        self.dmz_ips = np.concatenate([w.web_ips, w.host_public_ip[w.hosts_of("bastion")]]).astype(np.uint32)
        self.vpn_countries = np.array(
            [w.cities.country_index(c) for c in ("NL", "CH", "SE", "US", "DE", "GB", "SG")], dtype=np.int64
        )
        # Small vocabularies that mix several entity tables, built once (gathers need one chunk).
        self.staff_ips = pl.concat([w.ws_ip_text, w.emp_ip_home_text, w.host_ip_text], rechunk=True)
        n_e = w.n_employees
        # Network addresses: workstations, servers, web front ends, external sites, the public side, and
        # the whole hosting pool (198.19.0.0/16), so probes and uploads need no per-slice text.
        hosting_all = (w.hosting.base + np.arange(int(w.hosting.start[-1] + w.hosting.size[-1]))).astype(
            np.uint32
        )
        self.net_ips = pl.concat(
            [
                w.ws_ip_text,
                w.host_ip_text,
                ipv4_text(w.web_ips),
                ipv4_text(w.external_web),
                ipv4_text(self.dmz_ips),
                ipv4_text(hosting_all),
            ],
            rechunk=True,
        )
        self.ip_ws, self.ip_host = 0, n_e
        self.ip_web = self.ip_host + self.n_hosts
        self.ip_external = self.ip_web + len(w.web_ips)
        self.ip_dmz = self.ip_external + len(w.external_web)
        self.ip_hosting = self.ip_dmz + len(self.dmz_ips)
        self.net_devices = pl.concat([w.workstation_ids, w.host_ids], rechunk=True)
        self.principals = pl.concat([w.principal_arns, w.role_arns], rechunk=True)
        self.key_ids = pl.concat([w.access_key_ids, w.role_key_ids], rechunk=True)
        self.cloud_ips = pl.concat([w.emp_ip_home_text, w.egress_ips], rechunk=True)
        self.resources, self.resource_start = _resource_vocabulary(w)
        self.cloud_services = catalog.series(
            sorted({c.service for c in catalog.CLOUD_CALLS + catalog.ROLE_CALLS} | {"signin.amazonaws.com"})
        )
        self.cloud_actions = catalog.series(
            sorted({c.action for c in catalog.CLOUD_CALLS + catalog.ROLE_CALLS} | {"ConsoleLogin"})
        )
        self.cloud_agents = pl.concat(
            [
                catalog.CLOUD_USER_AGENTS,
                catalog.series([catalog.ROLE_USER_AGENT, catalog.DEVICE_USER_AGENTS[1][0]]),
            ],
            rechunk=True,
        )
        self.cloud_errors = catalog.series(["AccessDenied", "Failed authentication"])
        self.principal_types = catalog.series(["IAMUser", "AssumedRole"])
        # Daily volumes per stream (events per day), before the scale.
        login_total = float(w.login_rate.sum())
        self.per_day: dict[str, float] = {
            "pay": float(w.pay_rate.sum()),
            "login": login_total,
            "staff": _STAFF_SIGN_INS * n_e,
            "ws": _WORKSTATION_FLOWS * n_e,
            "inbound": _SESSION_FLOWS * login_total,
            "server": _SERVER_FLOWS * self.n_hosts,
            "api": _ENGINEER_CALLS * len(self.engineers),
            "console": _ENGINEER_CONSOLE * len(self.engineers),
            "ssh": _ENGINEER_SERVER_LOGINS * len(self.engineers),
            "role": max(2_000.0, 0.25 * w.n_customers),
        }
        self.per_day["scan"] = _SCAN_SHARE * (
            self.per_day["ws"] + self.per_day["inbound"] + self.per_day["server"]
        )
        # Rows per arrival (a sign-in brings failures, MFA, logouts...), to turn a target rate into a scale.
        rows_per = {"login": 1.45, "staff": 1.0}
        self.rows_per_day = sum(v * rows_per.get(k, 1.0) for k, v in self.per_day.items())
        if flat and config.rate is not None:
            self.scale = config.rate * 86_400.0 / self.rows_per_day
        else:
            self.scale = config.background_scale

    @property
    def events_per_day(self) -> float:
        """Expected background rows per simulated day (after the scale)."""
        return self.rows_per_day * self.scale

    def frames(self, rng_for: RngFor, t0_us: int, t1_us: int) -> dict[Domain, pl.DataFrame]:
        """Background rows of ``[t0_us, t1_us)`` per domain, sorted by ``ts`` (derived rows may be later)."""
        return {
            Domain.payment: self.payments(rng_for(Domain.payment), t0_us, t1_us),
            Domain.auth: self.auth(rng_for(Domain.auth), t0_us, t1_us),
            Domain.network: self.network(rng_for(Domain.network), t0_us, t1_us),
            Domain.cloud: self.cloud(rng_for(Domain.cloud), t0_us, t1_us),
        }

    # ------------------------------------------------------------------ arrivals

    def _arrivals(
        self,
        rng: np.random.Generator,
        t0_us: int,
        t1_us: int,
        stream: str,
        entities: int | AliasTable,
        profile: DayProfile,
        lon: F64 | float,
    ) -> tuple[I64, I64]:
        """Entities and times (sorted) of one stream's arrivals in the slice, following the daily cycle.

        The slice is cut at UTC hours; in each piece, candidates are drawn at the highest intensity any
        entity can have there (their local times differ by longitude) and thinned to the actual one, so
        few candidates are wasted.
        """
        rate_per_us = self.per_day[stream] * self.scale / _DAY_US
        if self.flat:
            n = int(rng.poisson(rate_per_us * (t1_us - t0_us)))
            who = rng.integers(0, entities, n) if isinstance(entities, int) else entities.sample(rng, n)
            return who.astype(np.int64, copy=False), sorted_times(rng, n, t0_us, t1_us)
        lo_lon, hi_lon = (float(lon.min()), float(lon.max())) if isinstance(lon, np.ndarray) else (lon, lon)
        hour = 3_600 * US
        edges = [t0_us, *range((t0_us // hour + 1) * hour, t1_us, hour), t1_us]
        times: list[I64] = []
        bounds: list[F64] = []
        for a, c in itertools.pairwise(edges):
            local = np.arange(a // US + int(lo_lon * 240) - 3_600, c // US + int(hi_lon * 240) + 3_600, 1_800)
            bound = float(profile.weight(local.astype(np.int64)).max())
            n = int(rng.poisson(rate_per_us * (c - a) * bound))
            times.append(sorted_times(rng, n, a, c))
            bounds.append(np.full(n, bound))
        ts = np.concatenate(times)
        n = len(ts)
        who = rng.integers(0, entities, n) if isinstance(entities, int) else entities.sample(rng, n)
        offset_s = (lon[who] * 240.0).astype(np.int64) if isinstance(lon, np.ndarray) else int(lon * 240.0)
        keep = rng.random(n) * np.concatenate(bounds) < profile.weight(ts // US + offset_s)
        return who[keep].astype(np.int64, copy=False), ts[keep]

    def _assemble(
        self,
        domain: Domain,
        parts: list[Part],
        text: Mapping[str, tuple[pl.Series, ...]],
        constants: Mapping[str, object] | None = None,
    ) -> pl.DataFrame:
        return assemble(
            domain, parts, text, source=SOURCES[domain], tenant=self.config.tenant, constants=constants
        )

    # ------------------------------------------------------------------ payments

    def payments(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> pl.DataFrame:
        """Card payments (shops, online, ATMs), transfers and direct debits."""
        w = self.world
        cust, ts = self._arrivals(rng, t0_us, t1_us, "pay", self.pay_sampler, catalog.SHOPPING, w.home_lon)
        n = len(cust)
        city, transit = w.location(cust, ts // US)
        country_now = w.cities.country[city].astype(np.int64)
        u = rng.random((9, n))
        transfer = u[0] < 0.045
        debit = (u[0] >= 0.045) & (u[0] < 0.06)
        card = ~(transfer | debit)
        online = card & ((u[1] < w.ecom_share[cust]) | transit)
        present = card & ~online
        merchant = np.zeros(n, dtype=np.int64)
        merchant[present] = w.pick_shop(city[present], u[2][present])
        merchant[online] = w.online_merchants[(u[2][online] * len(w.online_merchants)).astype(np.int64)]
        merchant[debit] = self.utilities[(u[2][debit] * len(self.utilities)).astype(np.int64)]
        has_merchant = ~transfer
        category = w.merch_category[merchant]
        atm = present & (category == _ATM_CATEGORY)
        channel = np.where(
            present,
            np.where(atm, ATM, POS),
            np.where(online, ECOM, np.where(debit, DEBIT, np.where(u[3] < 0.4, INSTANT, TRANSFER))),
        )
        z = rng.standard_normal(n)
        log_eur = w.amount_mu[cust] + np.where(has_merchant, catalog.CATEGORY_SHIFT[category], 0.0)
        log_eur = np.where(transfer, np.log(150.0) + 0.6 * z, log_eur + w.amount_sigma[cust] * z)
        money_country = np.where(card, w.merch_country[merchant], w.cust_country[cust])
        amount = np.exp(log_eur) * w.fx_of_country[money_country]
        amount = np.where(atm, np.maximum(20.0, np.round(amount / 20.0) * 20.0), np.round(amount, 2))
        declined = card & (u[4] < 0.015)
        entry = np.where(
            atm,
            ENTRY_CHIP,
            np.where(
                present,
                pick(cdf(catalog.POS_ENTRY_WEIGHTS), u[7]),
                np.where(online, 4 + pick(cdf(catalog.ONLINE_ENTRY_WEIGHTS), u[7]), -1),
            ),
        )
        remote = online | transfer
        ip, ip_which, local_ips = self._customer_ips(rng, cust, country_now, remote)
        payee = (cust + 1 + (u[2] * 3).astype(np.int64) * 7919) % w.n_customers
        terminal = w.term_start[merchant] + (u[6] * np.maximum(w.term_count[merchant], 1)).astype(np.int64)
        part: Part = {
            "ts": ts,
            "user_id": cust,
            "account_id": cust,
            "card_id": np.where(card, w.pick_card(cust, u[5]), -1),
            "device_id": np.where(remote, w.pick_device(cust, u[8]), -1),
            "src_ip": ip,
            "src_ip#": ip_which,
            "merchant_id": np.where(has_merchant, merchant, -1),
            "lat": np.where(present, w.merch_lat[merchant], np.nan),
            "lon": np.where(present, w.merch_lon[merchant], np.nan),
            "country": np.where(
                card, w.merch_country[merchant], np.where(transfer, country_now, w.cust_country[cust])
            ),
            "amount": amount,
            "currency": money_country,
            "channel": channel,
            "merchant_category": np.where(has_merchant, category, -1),
            "mcc": np.where(has_merchant, category, -1),
            "terminal_id": np.where(present, terminal, -1),
            "payee_id": np.where(transfer, payee, -1),
            "card_present": np.where(card, present, -1).astype(np.int8),
            "entry_mode": entry,
            "auth_result": declined.astype(np.int64),
            "decline_reason": np.where(
                declined, np.where(online, 4 * (u[6] < 0.3), (u[6] * 3).astype(np.int64)), -1
            ),
            "home_lat": w.home_lat[cust],
            "home_lon": w.home_lon[cust],
        }
        return self._assemble(
            Domain.payment,
            [part],
            {
                "user_id": (w.user_ids,),
                "account_id": (w.account_ids,),
                "card_id": (w.card_ids,),
                "device_id": (w.device_ids,),
                "src_ip": (w.ip_text, local_ips),
                "merchant_id": (w.merchant_ids,),
                "country": (self.countries,),
                "currency": (w.currency_of_country,),
                "channel": (CHANNELS,),
                "merchant_category": (catalog.CATEGORY_NAMES,),
                "mcc": (catalog.CATEGORY_MCC,),
                "terminal_id": (w.terminal_ids,),
                "payee_id": (w.payee_ids,),
                "entry_mode": (ENTRY_MODES,),
                "auth_result": (AUTH_RESULTS,),
                "decline_reason": (catalog.DECLINE_REASONS,),
            },
        )

    def _customer_ips(
        self, rng: np.random.Generator, cust: I64, country_now: I64, valid: B
    ) -> tuple[I64, npt.NDArray[np.int8], pl.Series]:
        """Where online sessions come from: home broadband, mobile data (also abroad: roaming), or local
        Wi-Fi when abroad. Returns row numbers into ``world.ip_text`` or (selector 1) the returned series."""
        w = self.world
        mobile = rng.random(len(cust)) < 0.45
        index = np.where(valid, cust + np.where(mobile, w.n_customers, 0), -1)
        which = np.zeros(len(cust), dtype=np.int8)
        abroad = np.flatnonzero(valid & ~mobile & (country_now != w.cust_country[cust]))
        local = w.residential.address(country_now[abroad], mix64(cust[abroad], w.seed + 101))
        index[abroad] = np.arange(len(abroad))
        which[abroad] = 1
        return index, which, ipv4_text(local)

    # ------------------------------------------------------------------ sign-ins and account changes

    def auth(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> pl.DataFrame:
        """Customers' online-banking sessions and account changes, and staff single sign-on."""
        w = self.world
        cust, ts = self._arrivals(rng, t0_us, t1_us, "login", self.login_sampler, catalog.BANKING, w.home_lon)
        n = len(cust)
        city, transit = w.location(cust, ts // US)
        country_now = w.cities.country[city].astype(np.int64)
        u = rng.random((10, n))
        device = w.pick_device(cust, u[0])
        kind = w.device_kind[device]
        new_device = u[1] < 0.012
        vpn = (u[2] < 0.01) & ~transit
        mobile = (kind != 1) & (u[3] < 0.5)
        abroad = (country_now != w.cust_country[cust]) & ~mobile & ~vpn & ~transit
        # The address, and where it geolocates: home unless on Wi-Fi abroad, a VPN, or in flight.
        ip = cust + np.where(mobile, w.n_customers, 0)
        ip_which = np.zeros(n, dtype=np.int8)
        geo_city = w.cust_city[cust].copy()
        special = np.flatnonzero(abroad | vpn | transit)
        keys = mix64(cust[special] * 1_000_003 + ts[special] // 3_600_000_000, w.seed + 102)
        hosted = vpn[special] | transit[special]
        exit_country = self.vpn_countries[(keys % np.uint64(len(self.vpn_countries))).astype(np.int64)]
        special_ips = np.where(
            hosted,
            w.hosting.address(exit_country, keys),
            w.residential.address(country_now[special], mix64(cust[special], w.seed + 101)),
        )
        ip[special] = np.arange(len(special))
        ip_which[special] = 1
        geo_city[special] = np.where(
            hosted, w.pick_city_in(exit_country, uniform01(keys, w.seed + 105)), city[special]
        )
        device_index = np.where(new_device, np.cumsum(new_device) - 1, device)
        new_ids = w.new_device_ids(rng.integers(0, 2**62, int(new_device.sum()), dtype=np.int64))
        session: dict[str, npt.NDArray[np.generic]] = {
            "user_id": cust,
            "account_id": cust,
            "device_id": device_index,
            "device_id#": new_device.astype(np.int8),
            "src_ip": ip,
            "src_ip#": ip_which,
            "lat": np.where(transit, np.nan, w.cities.lat[geo_city]),
            "lon": np.where(transit, np.nan, w.cities.lon[geo_city]),
            "country": np.where(transit, -1, w.cities.country[geo_city]),
            "app": _APP_OF_KIND[kind],
            "user_agent": catalog.USER_AGENT_START[kind] + device % catalog.USER_AGENT_COUNT[kind],
            "auth_method": np.where(new_device, OTP_SMS, _METHOD_OF_KIND[kind]),
            "mfa_used": ((kind != 1) | new_device | (u[4] < 0.85)).astype(np.int8),
        }

        def rows(index: I64, at: I64, action: int | I64, **extra: npt.NDArray[np.generic] | int) -> Part:
            part: Part = {name: values[index] for name, values in session.items()}
            part.update({"ts": at, "action": action, "outcome": 0, **extra})
            return part

        parts = [rows(np.arange(n), ts, LOGIN)]
        fails = np.flatnonzero(u[5] < 0.03)
        twice = fails[u[6][fails] < 0.3]
        for extra, back_s in ((fails, 15), (twice, 70)):
            at = np.maximum(ts[extra] - (back_s + u[7][extra] * 40.0).astype(np.int64) * US, t0_us)
            parts.append(rows(extra, at, LOGIN, outcome=1, failure_reason=0, mfa_used=0))
        mfa = np.flatnonzero(new_device | (u[8] < 0.05))
        parts.append(
            rows(mfa, ts[mfa] + (5 + u[7][mfa] * 35).astype(np.int64) * US, MFA, auth_method=OTP_SMS)
        )
        added = np.flatnonzero(new_device)
        parts.append(rows(added, ts[added] + (45 + u[7][added] * 75).astype(np.int64) * US, DEVICE_ADD))
        out = np.flatnonzero(u[9] < 0.35)
        parts.append(rows(out, ts[out] + (120 + u[7][out] * 1_080).astype(np.int64) * US, LOGOUT))
        rare = np.searchsorted(_RARE_ACTION_CDF, u[2], side="right")
        acted = np.flatnonzero(rare < len(_RARE_ACTION_CDF))
        action = PAYEE_ADD + rare[acted]
        new_payee = action == PAYEE_ADD
        usual = (cust[acted] + 1 + (u[6][acted] * 3).astype(np.int64) * 7919) % w.n_customers
        payee = np.where(new_payee, np.cumsum(new_payee) - 1, np.where(action == PAYEE_REMOVE, usual, -1))
        new_payees = hex_ids(
            "payee_", rng.integers(0, 2**62, int(new_payee.sum())).astype(np.uint64), key=w.seed + 103
        )
        at = ts[acted] + (60 + u[7][acted] * 540).astype(np.int64) * US
        parts.append(rows(acted, at, action, payee_id=payee, **{"payee_id#": new_payee.astype(np.int8)}))
        parts.append(self._staff_sign_ins(rng, t0_us, t1_us))
        parts.append(self._server_logins(rng, t0_us, t1_us))
        return self._assemble(
            Domain.auth,
            parts,
            {
                "user_id": (w.user_ids, w.employee_ids),
                "account_id": (w.account_ids,),
                "device_id": (w.device_ids, new_ids, w.workstation_ids, w.host_ids),
                "src_ip": (w.ip_text, ipv4_text(special_ips), self.staff_ips),
                "dst_ip": (w.host_ip_text,),
                "country": (self.countries,),
                "action": (ACTIONS,),
                "outcome": (OUTCOMES,),
                "auth_method": (AUTH_METHODS,),
                "app": (APPS,),
                "user_agent": (AUTH_USER_AGENTS,),
                "failure_reason": (FAILURE_REASONS,),
                "payee_id": (w.payee_ids, new_payees),
            },
        )

    def _staff_sign_ins(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        w = self.world
        emp, ts = self._arrivals(rng, t0_us, t1_us, "staff", w.n_employees, catalog.OFFICE, self.hq_lon)
        u = rng.random((2, len(emp)))
        failed = u[1] < 0.02
        return {
            "ts": ts,
            "user_id": emp,
            "user_id#": 1,
            "device_id": emp,
            "device_id#": 2,
            "src_ip": emp + np.where(u[0] < 0.3, w.n_employees, 0),
            "src_ip#": 2,
            "lat": self.hq_lat,
            "lon": self.hq_lon,
            "country": w.hq_country,
            "action": LOGIN,
            "outcome": failed.astype(np.int64),
            "auth_method": PUSH,
            "mfa_used": (~failed).astype(np.int8),
            "app": 2,
            "user_agent": len(AUTH_USER_AGENTS) - 2,
            "failure_reason": np.where(failed, 0, -1),
        }

    def _server_logins(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        """Engineers signing in to servers (SSH or RDP), from their workstation or through the bastion."""
        w = self.world
        which, ts = self._arrivals(rng, t0_us, t1_us, "ssh", len(self.engineers), catalog.OFFICE, self.hq_lon)
        emp = self.engineers[which]
        u = rng.random((4, len(emp)))
        kinds = np.array([catalog.HOST_KINDS.index(k) for k in ("app", "db", "file", "dc", "api")])
        host = self._host_of_kind(kinds[(u[0] * len(kinds)).astype(np.int64)], u[1])
        ssh = u[2] < 0.8
        via_bastion = ssh & (u[3] < 0.5)
        bastion = int(w.hosts_of("bastion")[0])
        failed = u[3] > 0.98
        n_e = w.n_employees
        return {
            "ts": ts,
            "user_id": emp,
            "user_id#": 1,
            "device_id": host,
            "device_id#": 3,
            "src_ip": np.where(via_bastion, 2 * n_e + bastion, emp),
            "src_ip#": 2,
            "dst_ip": host,
            "lat": self.hq_lat,
            "lon": self.hq_lon,
            "country": w.hq_country,
            "action": LOGIN,
            "outcome": failed.astype(np.int64),
            "auth_method": np.where(ssh, PUBLICKEY, 1),
            "mfa_used": 0,
            "app": np.where(ssh, SSH_APP, SSH_APP + 1),
            "user_agent": np.where(ssh, len(AUTH_USER_AGENTS) - 1, -1),
            "failure_reason": np.where(failed, 0, -1),
        }

    # ------------------------------------------------------------------ network flows

    def network(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> pl.DataFrame:
        """Zeek-style connection records: workstations, customers reaching the web front, servers, probes."""
        w = self.world
        parts = [
            self._workstation_flows(rng, t0_us, t1_us),
            self._inbound_flows(rng, t0_us, t1_us),
            self._server_flows(rng, t0_us, t1_us),
            self._probe_flows(rng, t0_us, t1_us),
        ]
        return self._assemble(
            Domain.network,
            parts,
            {
                "user_id": (w.employee_ids,),
                "device_id": (self.net_devices,),
                "src_ip": (self.net_ips, w.ip_text),
                "dst_ip": (self.net_ips,),
                "protocol": (PROTOCOLS,),
                "service": (SERVICES,),
                "direction": (DIRECTIONS,),
                "conn_state": (catalog.CONN_STATES,),
            },
        )

    def _flow(
        self, rng: np.random.Generator, ts: I64, udp: B, bytes_out: F64, bytes_in: F64, fail: float
    ) -> Part:
        """Sizes, durations, packet counts and Zeek ``conn_state`` of flows with given median sizes."""
        n = len(ts)
        u = rng.random((3, n))
        # Log-normal factors by table look-up: an exp() and a normal draw per value cost ten times more.
        k = rng.integers(0, len(_NORMAL_QUANTILES), (3, n), dtype=np.int32)
        failed = u[0] < fail
        out = np.maximum(1.0, bytes_out * _SPREAD_OUT[k[0]]).astype(np.int64)
        back = np.where(failed, 0, (bytes_in * _SPREAD_IN[k[1]]).astype(np.int64))
        duration = np.where(udp, 0.002 + 0.03 * u[2], 0.8 * _SPREAD_TIME[k[2]] * (1.0 + back / 2e6))
        return {
            "ts": ts,
            "src_port": 49_152 + (u[1] * 16_384).astype(np.int64),
            "protocol": udp.astype(np.int64),
            "duration_s": np.where(failed, 0.0, np.minimum(np.round(duration, 6), 86_000.0)),
            "bytes_out": out,
            "bytes_in": back,
            "packets_out": 1 + out // 1_200 + (u[2] * 3).astype(np.int64),
            "packets_in": np.where(failed, 0, 1 + back // 1_400),
            "conn_state": np.where(failed, 1 + (u[1] * 4).astype(np.int64), 0),
        }

    def _host_of_kind(self, kinds: I64, u: F64) -> I64:
        """A host of each given kind, chosen by ``u``."""
        start = np.searchsorted(self.world.host_kind, kinds, side="left")
        count = np.searchsorted(self.world.host_kind, kinds, side="right") - start
        return np.asarray(start + (u * np.maximum(count, 1)).astype(np.int64), dtype=np.int64)

    def _workstation_flows(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        w = self.world
        emp, ts = self._arrivals(rng, t0_us, t1_us, "ws", w.n_employees, catalog.OFFICE, self.hq_lon)
        n = len(emp)
        u = rng.random((3, n))
        internal = u[0] < 0.4
        table = _WS_INTERNAL
        choice = pick(cdf([r[-1] for r in table]), u[1])
        kinds = np.array([catalog.HOST_KINDS.index(str(r[0])) for r in table])[choice]
        host = self._host_of_kind(kinds, u[2])
        hosted = ~internal & (u[1] < 0.3)
        keys = mix64(emp[hosted] * 7 + ts[hosted] // 600_000_000, w.seed + 104)
        hosted_ips = w.hosting.address((keys % np.uint64(len(w.cities.country_codes))).astype(np.int64), keys)
        plain_http = ~internal & (u[2] < 0.12)
        dst = np.where(
            internal, self.ip_host + host, self.ip_external + (u[2] * len(w.external_web)).astype(np.int64)
        )
        dst[hosted] = self.ip_hosting + (hosted_ips - w.hosting.base).astype(np.int64)
        port = np.where(internal, np.array([r[1] for r in table])[choice], np.where(plain_http, 80, 443))
        udp = internal & np.array([bool(r[2]) for r in table])[choice]
        services = np.array([_SERVICE_INDEX[str(r[3])] for r in table])[choice]
        service = np.where(
            internal, services, np.where(plain_http, _SERVICE_INDEX["http"], _SERVICE_INDEX["ssl"])
        )
        out_median = np.where(internal, np.array([float(str(r[4])) for r in table])[choice], 1_500.0)
        in_median = np.where(internal, np.array([float(str(r[5])) for r in table])[choice], 30_000.0)
        part = self._flow(rng, ts, udp, out_median, in_median, 0.04)
        ssh = internal & (port == 22)
        part["failed_logins"] = np.where(ssh, 0, -1)
        part.update(
            {
                "user_id": emp,
                "device_id": emp,
                "src_ip": self.ip_ws + emp,
                "dst_ip": dst,
                "dst_port": port,
                "service": service,
                "direction": internal.astype(np.int64),
                "logged_in": np.where(ssh, 1, -1).astype(np.int8),
            }
        )
        return part

    def _inbound_flows(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        w = self.world
        cust, ts = self._arrivals(
            rng, t0_us, t1_us, "inbound", self.login_sampler, catalog.BANKING, w.home_lon
        )
        n = len(cust)
        u = rng.random(n)
        part = self._flow(rng, ts, np.zeros(n, np.bool_), np.full(n, 2_500.0), np.full(n, 60_000.0), 0.02)
        part.update(
            {
                "src_ip": cust + np.where(u < 0.45, w.n_customers, 0),
                "src_ip#": 1,
                "dst_ip": self.ip_web + (cust % len(w.web_ips)),
                "dst_port": 443,
                "service": _SERVICE_INDEX["ssl"],
                "direction": 2,
            }
        )
        return part

    def _server_flows(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        _, ts = self._arrivals(rng, t0_us, t1_us, "server", self.n_hosts, catalog.MACHINE, self.hq_lon)
        n = len(ts)
        u = rng.random((3, n))
        table = _SERVER_PAIRS
        choice = pick(cdf([r[-1] for r in table]), u[0])
        src = self._host_of_kind(np.array([catalog.HOST_KINDS.index(str(r[0])) for r in table])[choice], u[1])
        dst = self._host_of_kind(np.array([catalog.HOST_KINDS.index(str(r[1])) for r in table])[choice], u[2])
        part = self._flow(
            rng,
            ts,
            np.array([bool(r[3]) for r in table])[choice],
            np.array([float(str(r[5])) for r in table])[choice],
            np.array([float(str(r[6])) for r in table])[choice],
            0.01,
        )
        part.update(
            {
                "device_id": self.world.n_employees + src,
                "src_ip": self.ip_host + src,
                "dst_ip": self.ip_host + dst,
                "dst_port": np.array([int(str(r[2])) for r in table])[choice],
                "service": np.array([_SERVICE_INDEX[str(r[4])] for r in table])[choice],
                "direction": 1,
            }
        )
        ssh = part["dst_port"] == 22
        part["logged_in"] = np.where(ssh, 1, -1).astype(np.int8)
        part["failed_logins"] = np.where(ssh, 0, -1)
        return part

    def _probe_flows(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        """The internet's background radiation: one-off probes of the bank's public addresses."""
        w = self.world
        _, ts = self._arrivals(rng, t0_us, t1_us, "scan", 1, catalog.MACHINE, self.hq_lon)
        n = len(ts)
        u = rng.random((4, n))
        keys = rng.integers(0, 2**62, n, dtype=np.int64).astype(np.uint64)
        country = (u[0] * len(w.cities.country_codes)).astype(np.int64)
        rejected = u[2] < 0.4
        address = w.hosting.address(country, keys)
        return {
            "ts": ts,
            "src_ip": self.ip_hosting + (address - w.hosting.base).astype(np.int64),
            "dst_ip": self.ip_dmz + (u[1] * len(self.dmz_ips)).astype(np.int64),
            "src_port": rng.integers(1_024, 65_536, n),
            "dst_port": catalog.SCAN_PORTS[(u[3] ** 2 * len(catalog.SCAN_PORTS)).astype(np.int64)],
            "protocol": 0,
            "direction": 2,
            "duration_s": 0.0,
            "bytes_out": 0,
            "bytes_in": 0,
            "packets_out": 1 + (u[3] < 0.3).astype(np.int64),
            "packets_in": rejected.astype(np.int64),
            "conn_state": np.where(rejected, 2, 1),
        }

    # ------------------------------------------------------------------ cloud

    def cloud(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> pl.DataFrame:
        """CloudTrail-style records: engineers' API calls and console sign-ins, and service roles at work."""
        w = self.world
        parts = [
            self._engineer_calls(rng, t0_us, t1_us),
            self._console_logins(rng, t0_us, t1_us),
            self._role_calls(rng, t0_us, t1_us),
        ]
        return self._assemble(
            Domain.cloud,
            parts,
            {
                "user_id": (w.employee_ids,),
                "src_ip": (self.cloud_ips,),
                "country": (self.countries,),
                "cloud_region": (REGIONS,),
                "cloud_account_id": (w.cloud_accounts,),
                "service": (self.cloud_services,),
                "action": (self.cloud_actions,),
                "outcome": (OUTCOMES,),
                "principal_id": (self.principals,),
                "principal_type": (self.principal_types,),
                "access_key_id": (self.key_ids,),
                "user_agent": (self.cloud_agents,),
                "resource": (self.resources, self.principals),
                "error_code": (self.cloud_errors,),
            },
            constants={"cloud_provider": "aws"},
        )

    def _assemble_cloud_calls(
        self, calls: tuple[catalog.CloudCall, ...], choice: I64, account: I64, u: F64, principal: I64
    ) -> Part:
        """Service, action and resource columns of cloud calls of the given kinds."""
        services = self.cloud_services.to_list()
        actions = self.cloud_actions.to_list()
        kind_of = np.array(
            [_RESOURCE_KINDS.index(c.resource) if c.resource in _RESOURCE_KINDS else -1 for c in calls]
        )[choice]
        per_kind = np.array(_RESOURCES_PER_KIND, dtype=np.int64)
        safe_kind = np.maximum(kind_of, 0)
        resource = self.resource_start[safe_kind, account] + (u * per_kind[safe_kind]).astype(np.int64)
        is_user = np.array([c.resource == "user" for c in calls])[choice]
        return {
            "service": np.array([services.index(c.service) for c in calls])[choice],
            "action": np.array([actions.index(c.action) for c in calls])[choice],
            "read_only": np.array([c.read_only for c in calls], dtype=np.int8)[choice],
            "resource": np.where(is_user, principal, np.where(kind_of >= 0, resource, -1)),
            "resource#": is_user.astype(np.int8),
        }

    def _engineer_calls(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        w = self.world
        which, ts = self._arrivals(rng, t0_us, t1_us, "api", len(self.engineers), catalog.OFFICE, self.hq_lon)
        emp = self.engineers[which]
        n = len(emp)
        u = rng.random((6, n))
        calls = catalog.CLOUD_CALLS
        choice = pick(cdf([c.weight for c in calls]), u[0])
        agent = pick(cdf([0.25, 0.35, 0.3, 0.1]), u[1])
        console = agent == 0
        denied = u[2] < 0.02
        account = w.emp_cloud_account[emp]
        part = self._assemble_cloud_calls(calls, choice, account, u[5], emp)
        part.update(
            {
                "ts": ts,
                "user_id": emp,
                "src_ip": np.where(u[3] < 0.3, emp, w.n_employees + (u[4] * 4).astype(np.int64)),
                "lat": self.hq_lat,
                "lon": self.hq_lon,
                "country": w.hq_country,
                "cloud_region": pick(cdf([0.8, 0.12, 0.08]), u[4]),
                "cloud_account_id": account,
                "outcome": denied.astype(np.int64),
                "principal_id": emp,
                "principal_type": 0,
                "access_key_id": np.where(console, -1, emp),
                "mfa_used": console.astype(np.int8),
                "user_agent": agent,
                "error_code": np.where(denied, 0, -1),
            }
        )
        return part

    def _console_logins(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        w = self.world
        which, ts = self._arrivals(
            rng, t0_us, t1_us, "console", len(self.engineers), catalog.OFFICE, self.hq_lon
        )
        emp = self.engineers[which]
        n = len(emp)
        u = rng.random((3, n))
        failed = u[0] < 0.03
        return {
            "ts": ts,
            "user_id": emp,
            "src_ip": np.where(u[1] < 0.3, emp, w.n_employees + (u[2] * 4).astype(np.int64)),
            "lat": self.hq_lat,
            "lon": self.hq_lon,
            "country": w.hq_country,
            "cloud_region": 2,
            "cloud_account_id": w.emp_cloud_account[emp],
            "service": self.cloud_services.to_list().index("signin.amazonaws.com"),
            "action": self.cloud_actions.to_list().index("ConsoleLogin"),
            "outcome": failed.astype(np.int64),
            "read_only": 0,
            "principal_id": emp,
            "principal_type": 0,
            # One console sign-in in two hundred skips MFA (a break-glass account): noise, not an attack.
            "mfa_used": (~failed & (u[2] > 0.005)).astype(np.int8),
            "user_agent": len(self.cloud_agents) - 1,
            "error_code": np.where(failed, 1, -1),
        }

    def _role_calls(self, rng: np.random.Generator, t0_us: int, t1_us: int) -> Part:
        w = self.world
        n_roles = len(w.role_account)
        role, ts = self._arrivals(rng, t0_us, t1_us, "role", n_roles, catalog.MACHINE, self.hq_lon)
        u = rng.random((3, len(role)))
        calls = catalog.ROLE_CALLS
        choice = pick(cdf([c.weight for c in calls]), u[0])
        account = w.role_account[role]
        part = self._assemble_cloud_calls(calls, choice, account, u[2], w.n_employees + role)
        part.update(
            {
                "ts": ts,
                "cloud_region": 0,
                "cloud_account_id": account,
                "outcome": (u[1] < 0.003).astype(np.int64),
                "principal_id": w.n_employees + role,
                "principal_type": 1,
                "access_key_id": w.n_employees + role,
                "mfa_used": 0,
                "user_agent": len(self.cloud_agents) - 2,
            }
        )
        return part


def _resource_vocabulary(world: World) -> tuple[pl.Series, I64]:
    """ARNs of the cloud resources engineers and roles touch, and where each (kind, account) block starts."""
    accounts = world.cloud_accounts.to_list()
    names: list[str] = []
    start = np.zeros((len(_RESOURCE_KINDS), len(accounts)), dtype=np.int64)
    for k, kind in enumerate(_RESOURCE_KINDS):
        for a, account in enumerate(accounts):
            start[k, a] = len(names)
            names.extend(_resource_arn(kind, account, j) for j in range(_RESOURCES_PER_KIND[k]))
    return catalog.series(names), start


def _resource_arn(kind: str, account: str, j: int) -> str:
    bucket = f"{catalog.BUCKETS[j % len(catalog.BUCKETS)]}-{account[-4:]}"
    name = catalog.SERVICE_ROLES[j % len(catalog.SERVICE_ROLES)]
    if kind == "object":
        return f"arn:aws:s3:::{bucket}/data/part-{j // len(catalog.BUCKETS):05d}.parquet"
    if kind == "bucket":
        return f"arn:aws:s3:::{bucket}"
    if kind == "instance":
        return f"arn:aws:ec2:eu-west-1:{account}:instance/i-0{j:04x}{account[-6:]}"
    if kind == "key":
        return f"arn:aws:kms:eu-west-1:{account}:key/mrk-{j:02d}{account[-8:]}"
    if kind == "role":
        return f"arn:aws:iam::{account}:role/deploy-{j:02d}"
    if kind == "function":
        return f"arn:aws:lambda:eu-west-1:{account}:function:{name}"
    return f"arn:aws:dynamodb:eu-west-1:{account}:table/{name}"
