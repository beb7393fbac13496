"""Attack and fraud campaigns staged on top of the background, each with its ground truth.

A campaign is a short story told in steps across domains (an account takeover: credential stuffing →
sign-in from a new device abroad → security changes → new payee → large transfer). Its events share the
keys a correlator needs (user, account, device, address, card, payee, terminal, cloud principal), carry
``label = 1`` and ``label_detail`` = the campaign type, and use the same ``source`` as background events
of their domain, so nothing but their behaviour gives them away.

Campaigns are few (tens a day), so each is written as plain code over small NumPy arrays; the background
carries the volume. Every step's events come after the previous step's. When a run is too short for a
campaign's natural pace (a 10-minute run, or live mode), its timeline is compressed to fit, keeping the
order of steps.

Example
-------
>>> from finsecure.sim.config import SimConfig
>>> from finsecure.sim.world import build_world
>>> world = build_world(SimConfig(customers=1_000, seed=3))
>>> plan = PlannedCampaign(0, CampaignType.account_takeover, start_us=1_714_982_400_000_000, limit_us=None)
>>> staged = stage(plan, world, seed=3, tenant="default")
>>> staged.truth.campaign_type, [step.name for step in staged.truth.steps][:2]
('account_takeover', ['credential_stuffing', 'account_login'])
>>> [domain.value for domain in staged.frames]
['network', 'auth', 'payment']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.sim import catalog
from finsecure.sim.background import SOURCES, US
from finsecure.sim.config import CampaignType, SimConfig
from finsecure.sim.frames import POLARS_SCHEMAS, canonical_frame
from finsecure.sim.geo import haversine_km
from finsecure.sim.text import int_to_ip
from finsecure.sim.truth import CampaignTruth, StepTruth
from finsecure.sim.world import World

__all__ = [
    "NOMINAL_SPAN_S",
    "CampaignBuilder",
    "CampaignType",
    "PlannedCampaign",
    "StagedCampaign",
    "plan_campaigns",
    "realtime_plan",
    "stage",
]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Value = str | float | int | bool | None | Sequence[object] | np.ndarray

NOMINAL_SPAN_S: dict[CampaignType, float] = {
    CampaignType.account_takeover: 2 * 3600.0,
    CampaignType.card_testing: 3 * 3600.0,
    CampaignType.compromised_terminal: 20 * 3600.0,
    CampaignType.impossible_travel: 2 * 3600.0,
    CampaignType.mule_ring: 8 * 3600.0,
    CampaignType.cloud_credential_compromise: 1.5 * 3600.0,
    CampaignType.network_intrusion: 2.5 * 3600.0,
    CampaignType.insider_exfiltration: 4 * 3600.0,
}
"""Longest natural duration of each campaign type; a finite run starts campaigns early enough to fit."""

# Where attackers operate from (ISO codes), most often first.
_ATTACKER_COUNTRIES = ("RU", "NG", "BR", "VN", "UA", "RO", "CN", "IN", "ID", "US", "NL", "TR")
_ATTACKER_WEIGHTS = np.array([12, 9, 8, 7, 6, 6, 6, 5, 5, 5, 4, 4], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class PlannedCampaign:
    """A campaign to stage: its number (unique in the run), type, start and the time it must fit in."""

    cid: int
    campaign_type: CampaignType
    start_us: int
    limit_us: int | None
    """Largest allowed span from start to last event (None: natural pace)."""


@dataclass(frozen=True, slots=True)
class StagedCampaign:
    """A campaign's rows per domain (with the internal campaign column) and its truth without event ids."""

    plan: PlannedCampaign
    frames: dict[Domain, pl.DataFrame]
    truth: CampaignTruth


@dataclass(slots=True)
class _Step:
    name: str
    domain: Domain
    offsets: F64
    columns: dict[str, Value]


@dataclass(slots=True)
class CampaignBuilder:
    """Collects a campaign's steps, then turns them into frames and truth (see `stage`)."""

    plan: PlannedCampaign
    world: World
    rng: np.random.Generator
    tenant: str
    steps: list[_Step] = field(default_factory=list)
    entities: dict[str, list[str]] = field(default_factory=dict)
    cursor: float = 0.0
    """Offset (seconds from the start) where the last step ended; the next step starts after it."""

    # ------------------------------------------------------------------ building blocks

    def add(self, name: str, domain: Domain, offsets: npt.ArrayLike, **columns: Value) -> None:
        """Add rows of one domain to step ``name`` at offsets (seconds from the campaign's start).

        Offsets may not be earlier than the end of the previous step. Column values are scalars
        or sequences with one value per row.
        """
        at = np.atleast_1d(np.asarray(offsets, dtype=np.float64))
        previous = [s for s in self.steps if s.name != name]
        floor = max((float(s.offsets.max()) for s in previous), default=0.0)
        if len(at) and float(at.min()) < floor - 1e-9:
            raise ValueError(f"step {name!r} starts before the previous step ended ({at.min()} < {floor})")
        self.steps.append(_Step(name, domain, at, columns))
        self.cursor = max(self.cursor, float(at.max()) if len(at) else self.cursor)

    def spread(self, n: int, gap: tuple[float, float], duration: tuple[float, float]) -> F64:
        """``n`` sorted offsets over a random duration, starting a random gap after the cursor."""
        start = self.cursor + float(self.rng.uniform(*gap))
        length = float(self.rng.uniform(*duration))
        return np.sort(start + self.rng.random(n) * length) if n > 1 else np.array([start])

    def after(self, low: float, high: float) -> float:
        """One offset, a random gap after the cursor."""
        return self.cursor + float(self.rng.uniform(low, high))

    def entity(self, key: str, *values: object) -> None:
        """Record entity keys that tie the campaign together (kept in first-seen order, no repeats)."""
        known = self.entities.setdefault(key, [])
        for value in values:
            text = str(value)
            if text not in known:
                known.append(text)

    # ------------------------------------------------------------------ choosing things in the world

    def customer(self, avoid: Sequence[int] = ()) -> int:
        """A random customer not in ``avoid``."""
        for _ in range(100):
            c = int(self.rng.integers(0, self.world.n_customers))
            if c not in avoid:
                return c
        return int(self.rng.integers(0, self.world.n_customers))

    def attacker_country(self, not_country: int | None = None) -> int:
        """Country index an attacker operates from."""
        codes = [c for c in _ATTACKER_COUNTRIES if c in self.world.cities.country_codes]
        weights = _ATTACKER_WEIGHTS[: len(codes)]
        for _ in range(20):
            code = codes[int(np.searchsorted(np.cumsum(weights) / weights.sum(), self.rng.random()))]
            k = self.world.cities.country_index(code)
            if k != not_country:
                return k
        return self.world.cities.country_index("RU")

    def city_in(self, country: int) -> int:
        """A large city of a country (population weighted)."""
        return int(self.world.pick_city_in(np.array([country]), np.array([self.rng.random()]))[0])

    def address(self, pool: str, country: int) -> str:
        """A synthetic address of a country in the ``residential``, ``mobile`` or ``hosting`` pool."""
        table = {
            "residential": self.world.residential,
            "mobile": self.world.mobile,
            "hosting": self.world.hosting,
        }
        value = table[pool].address(np.array([country]), np.array([self.rng.integers(0, 2**62)]))
        return int_to_ip(int(value[0]))

    def new_device(self) -> str:
        """Id of a device never seen before."""
        return str(self.world.new_device_ids(np.array([self.rng.integers(0, 2**62)], dtype=np.uint64))[0])

    def token(self, prefix: str) -> str:
        """A fresh opaque token such as ``payee_3f9c...``."""
        return f"{prefix}{int(self.rng.integers(0, 2**63)):016x}"

    def geo(self, city: int) -> dict[str, Value]:
        """Header columns placing an event in a city."""
        cities = self.world.cities
        return {
            "lat": float(cities.lat[city]),
            "lon": float(cities.lon[city]),
            "country": cities.country_codes[int(cities.country[city])],
        }

    def shop_in(self, city: int, categories: Sequence[str] = ()) -> int:
        """A shop in a city, of one of the given categories when the city has one."""
        w = self.world
        start, count = int(w.city_merch_start[city]), int(w.city_merch_count[city])
        shops = w.city_merch_order[start : start + count]
        if categories and len(shops):
            wanted = np.isin(w.merch_category[shops], [catalog.CATEGORY_INDEX[c] for c in categories])
            if wanted.any():
                shops = shops[wanted]
        if not len(shops):
            return int(w.pick_shop(np.array([w.hq_city]), np.array([self.rng.random()]))[0])
        return int(shops[int(self.rng.integers(0, len(shops)))])

    def terminal_of(self, merchant: int) -> int:
        """One terminal of a shop."""
        w = self.world
        return int(w.term_start[merchant] + self.rng.integers(0, max(1, int(w.term_count[merchant]))))

    def card_payment(
        self, merchant: int, card: int, amount_eur: npt.ArrayLike, **extra: Value
    ) -> dict[str, Value]:
        """Columns of card payments by the holder of ``card`` at ``merchant`` (amounts in euro)."""
        w = self.world
        holder = int(w.card_owner[card])
        country = int(w.merch_country[merchant])
        category = int(w.merch_category[merchant])
        present = not bool(w.merch_online[merchant])
        amounts = np.round(np.asarray(amount_eur, dtype=np.float64) * float(w.fx_of_country[country]), 2)
        columns: dict[str, Value] = {
            "user_id": w.user_ids[holder],
            "account_id": w.account_ids[holder],
            "card_id": w.card_ids[card],
            "merchant_id": w.merchant_ids[merchant],
            "country": w.cities.country_codes[country],
            "amount": amounts,
            "currency": w.currency_of_country[country],
            "channel": "atm"
            if catalog.CATEGORIES[category].name == "atm"
            else ("pos" if present else "ecommerce"),
            "merchant_category": catalog.CATEGORIES[category].name,
            "mcc": catalog.CATEGORIES[category].mcc,
            "card_present": present,
            "entry_mode": "chip" if present else "manual",
            "auth_result": "approved",
            "home_lat": float(w.home_lat[holder]),
            "home_lon": float(w.home_lon[holder]),
        }
        if present:
            columns.update(
                lat=float(w.merch_lat[merchant]),
                lon=float(w.merch_lon[merchant]),
                terminal_id=w.terminal_ids[self.terminal_of(merchant)],
            )
        columns.update(extra)
        return columns

    def flows(self, source: Value, destination: Value, n: int, **extra: Value) -> dict[str, Value]:
        """Columns of ``n`` TCP connections from ``source`` to ``destination`` (addresses, one or per row),
        with the sizes and defaults a Zeek ``conn`` log would have; ``extra`` overrides any column."""
        columns: dict[str, Value] = {
            "src_ip": source,
            "dst_ip": destination,
            "src_port": self.rng.integers(49_152, 65_536, n),
            "protocol": "tcp",
            "conn_state": "SF",
            "duration_s": np.round(self.rng.uniform(0.05, 2.0, n), 6),
            "bytes_out": self.rng.integers(300, 3_000, n),
            "bytes_in": self.rng.integers(500, 8_000, n),
            "packets_out": self.rng.integers(4, 20, n),
            "packets_in": self.rng.integers(3, 20, n),
        }
        columns.update(extra)
        return columns

    # ------------------------------------------------------------------ result

    def build(self) -> StagedCampaign:
        """Frames per domain and the campaign's truth (event ids are filled in when rows get their ids)."""
        plan = self.plan
        span = max((float(s.offsets.max()) for s in self.steps if len(s.offsets)), default=0.0)
        scale = 1.0
        if plan.limit_us is not None and span * US > plan.limit_us:
            scale = plan.limit_us / (span * US)
        # One frame per domain: column values of all its steps joined row by row.
        rows: dict[Domain, dict[str, list[object]]] = {}
        counts: dict[Domain, int] = {}
        step_truth: list[StepTruth] = []
        for name in dict.fromkeys(step.name for step in self.steps):
            parts = [s for s in self.steps if s.name == name]
            lo = hi = None
            for step in parts:
                n = len(step.offsets)
                ts = plan.start_us + np.floor(step.offsets * scale * US).astype(np.int64)
                lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
                hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
                table = rows.setdefault(step.domain, {})
                done = counts.get(step.domain, 0)
                for column, value in {"ts": ts, **step.columns}.items():
                    values = table.setdefault(column, [None] * done)
                    values.extend(_per_row(column, value, n))
                for values in table.values():
                    if len(values) < done + n:
                        values.extend([None] * (done + n - len(values)))
                counts[step.domain] = done + n
            if lo is None or hi is None:
                continue
            step_truth.append(
                StepTruth(
                    name=name,
                    domains=tuple(dict.fromkeys(str(s.domain.value) for s in parts)),
                    start=_datetime(lo),
                    end=_datetime(hi),
                    n_events=sum(len(s.offsets) for s in parts),
                )
            )
        frames = {
            domain: canonical_frame(
                domain,
                counts[domain],
                {column: _series(domain, column, values) for column, values in table.items()},
                source=SOURCES[domain],
                tenant=self.tenant,
                label=1,
                label_detail=plan.campaign_type.value,
                campaign=plan.cid,
            ).sort("ts", maintain_order=True)
            for domain, table in sorted(rows.items(), key=lambda kv: _ORDER[kv[0]])
        }
        truth = CampaignTruth(
            campaign_id=f"c{plan.cid:05d}",
            campaign_type=plan.campaign_type.value,
            start=step_truth[0].start if step_truth else _datetime(plan.start_us),
            end=max((s.end for s in step_truth), default=_datetime(plan.start_us)),
            entities={key: tuple(values) for key, values in self.entities.items()},
            event_ids=(),
            steps=tuple(step_truth),
        )
        return StagedCampaign(plan=plan, frames=frames, truth=truth)


def _series(domain: Domain, column: str, values: list[object]) -> pl.Series:
    """A column of Python values as a series of its canonical type (times as integer microseconds)."""
    dtype = pl.Int64 if column == "ts" else POLARS_SCHEMAS[domain][column]
    return pl.Series(column, values, dtype=dtype, strict=False)


def _per_row(column: str, value: Value, n: int) -> list[object]:
    """A step's column value as one Python value per row (scalars repeat)."""
    if isinstance(value, np.ndarray):
        values: list[object] = value.tolist()
    elif isinstance(value, list | tuple):
        values = list(value)
    else:
        return [value] * n
    if len(values) != n:
        raise ValueError(f"column {column!r} has {len(values)} values for {n} rows")
    return values


_ORDER = {Domain.network: 0, Domain.cloud: 1, Domain.auth: 2, Domain.payment: 3}


def _datetime(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))


# ====================================================================== the campaigns


def account_takeover(b: CampaignBuilder) -> None:
    """Credential stuffing → sign-in from a new device abroad → contact and MFA change → new payee →
    large instant transfer (auth, network, payment)."""
    w, rng = b.world, b.rng
    victim = b.customer()
    home = int(w.cust_country[victim])
    country = b.attacker_country(not_country=home)
    city = b.city_in(country)
    ips = [b.address("residential", country) for _ in range(int(rng.integers(1, 4)))]
    device = b.new_device()
    agent = catalog.SCRIPTED_USER_AGENTS[int(rng.integers(0, len(catalog.SCRIPTED_USER_AGENTS)))]
    user, account = w.user_ids[victim], w.account_ids[victim]
    n_victim, n_spray = int(rng.integers(6, 25)), int(rng.integers(10, 60))
    sprayed = [b.customer(avoid=[victim]) for _ in range(n_spray)]
    targets = np.array([victim] * n_victim + sprayed)
    rng.shuffle(targets)
    at = b.spread(len(targets), (0, 0), (300, 1_500))
    att_ips = [ips[i % len(ips)] for i in range(len(targets))]
    web = [int_to_ip(int(w.web_ips[i % len(w.web_ips)])) for i in range(len(targets))]
    common = {"device_id": device, "app": "online_banking", "user_agent": agent, **b.geo(city)}
    b.add(
        "credential_stuffing",
        Domain.network,
        np.maximum(at - 0.2, 0.0),
        **b.flows(att_ips, web, len(targets), dst_port=443, service="ssl", direction="inbound"),
    )
    b.add(
        "credential_stuffing",
        Domain.auth,
        at,
        user_id=w.user_ids.gather(targets).to_list(),
        account_id=w.account_ids.gather(targets).to_list(),
        src_ip=att_ips,
        action="login",
        outcome="failure",
        failure_reason="wrong_password",
        auth_method="password",
        mfa_used=False,
        **common,
    )
    login = b.after(60, 600)
    b.add(
        "account_login",
        Domain.network,
        [login - 0.2],
        **b.flows(ips[0], web[0], 1, dst_port=443, service="ssl", direction="inbound"),
    )
    b.add(
        "account_login",
        Domain.auth,
        [login],
        user_id=user,
        account_id=account,
        src_ip=ips[0],
        action="login",
        outcome="success",
        auth_method="password",
        mfa_used=False,
        **common,
    )
    change = b.after(60, 300)
    b.add(
        "security_change",
        Domain.auth,
        [change, change + float(rng.uniform(20, 90))],
        user_id=user,
        account_id=account,
        src_ip=ips[0],
        action=["contact_change", "mfa_change"],
        outcome="success",
        auth_method="password",
        mfa_used=False,
        **common,
    )
    payee = b.token("payee_")
    b.add(
        "payee_add",
        Domain.auth,
        [b.after(120, 600)],
        user_id=user,
        account_id=account,
        src_ip=ips[0],
        action="payee_add",
        outcome="success",
        auth_method="password",
        mfa_used=False,
        payee_id=payee,
        **common,
    )
    n_transfers = 1 + int(rng.random() < 0.5)
    first = b.after(60, 900)
    when = [first] + ([first + float(rng.uniform(300, 1_200))] if n_transfers == 2 else [])
    scale = float(w.fx_of_country[home])
    amounts = np.round(rng.uniform(1_500, 12_000, n_transfers) * scale, 2)
    b.add(
        "transfer",
        Domain.payment,
        when,
        user_id=user,
        account_id=account,
        device_id=device,
        src_ip=ips[0],
        payee_id=payee,
        amount=amounts,
        currency=w.currency_of_country[home],
        channel="instant_transfer",
        auth_result="approved",
        home_lat=float(w.home_lat[victim]),
        home_lon=float(w.home_lon[victim]),
        **b.geo(city),
    )
    b.entity("user_id", user)
    b.entity("account_id", account)
    b.entity("device_id", device)
    b.entity("src_ip", *ips)
    b.entity("payee_id", payee)
    b.entity("victim_user_id", *[w.user_ids[int(c)] for c in sprayed])


def card_testing(b: CampaignBuilder) -> None:
    """Many small online authorisations of stolen cards at many merchants → large purchases with the
    cards that worked (payment)."""
    w, rng = b.world, b.rng
    country = b.attacker_country()
    ip = b.address("hosting", country)
    device = b.new_device()
    n_cards = int(rng.integers(8, 40))
    cards = rng.choice(len(w.card_owner), size=min(n_cards, len(w.card_owner)), replace=False)
    merchants = rng.choice(
        w.online_merchants, size=min(int(rng.integers(5, 20)), len(w.online_merchants)), replace=False
    )
    tries = np.repeat(cards, rng.integers(1, 4, len(cards)))
    at = b.spread(len(tries), (0, 0), (900, 3_600))
    approved = rng.random(len(tries)) < 0.65
    good: list[int] = []
    for k, (card, offset) in enumerate(zip(tries, at, strict=True)):
        merchant = int(merchants[k % len(merchants)])
        decline = None if approved[k] else ["do_not_honor", "expired_card", "invalid_cvv"][k % 3]
        b.add(
            "card_tests",
            Domain.payment,
            [offset],
            **b.card_payment(
                merchant,
                int(card),
                [float(rng.choice([0.5, 0.99, 1.0, 1.99, 2.0]))],
                device_id=device,
                src_ip=ip,
                auth_result="approved" if approved[k] else "declined",
                decline_reason=decline,
                entry_mode="manual",
            ),
        )
        if approved[k] and int(card) not in good:
            good.append(int(card))
    big = w.online_merchants[
        np.isin(
            w.merch_category[w.online_merchants],
            [catalog.CATEGORY_INDEX["electronics"], catalog.CATEGORY_INDEX["jewelry"]],
        )
    ]
    big = big if len(big) else w.online_merchants
    chosen: list[int] = good[: int(rng.integers(1, 5))] or [int(cards[0])]
    start = b.after(600, 3_600)
    for j, stolen in enumerate(chosen):
        merchant = int(big[int(rng.integers(0, len(big)))])
        b.add(
            "cash_out",
            Domain.payment,
            [start + j * float(rng.uniform(60, 600))],
            **b.card_payment(
                merchant,
                stolen,
                [float(rng.uniform(400, 2_500))],
                device_id=device,
                src_ip=ip,
                entry_mode="manual",
            ),
        )
    b.entity("device_id", device)
    b.entity("src_ip", ip)
    b.entity("card_id", *[w.card_ids[int(c)] for c in cards])
    b.entity("merchant_id", *[w.merchant_ids[int(m)] for m in merchants])


def compromised_terminal(b: CampaignBuilder) -> None:
    """Skimming at one terminal over hours, then the copied cards used far away (payment)."""
    w, rng = b.world, b.rng
    first = b.customer()
    city = int(w.cust_city[first])
    shop = b.shop_in(city, ("fuel", "atm"))
    terminal = b.terminal_of(shop)
    locals_ = np.flatnonzero(w.cust_city == city)
    if len(locals_) < 9:  # a small town: commuters from the rest of the country stop there too
        locals_ = np.flatnonzero(w.cust_country == w.cust_country[first])
    locals_ = locals_[locals_ != first]
    k = min(len(locals_), int(rng.integers(8, 30)))
    victims = [first, *[int(c) for c in rng.choice(locals_, size=k, replace=False)]] if k else [first]
    at = b.spread(len(victims), (0, 0), (2 * 3600, 8 * 3600))
    cards = [int(w.pick_card(np.array([c]), np.array([rng.random()]))[0]) for c in victims]
    category = catalog.CATEGORIES[int(w.merch_category[shop])].name
    for card, offset in zip(cards, at, strict=True):
        amount = float(np.exp(rng.normal(np.log(45.0 if category == "fuel" else 80.0), 0.4)))
        if category == "atm":
            amount = max(20.0, round(amount / 20.0) * 20.0)
        b.add(
            "skimming",
            Domain.payment,
            [offset],
            **b.card_payment(shop, card, [amount], terminal_id=w.terminal_ids[terminal], entry_mode="chip"),
        )
    home = int(w.cust_country[first])
    far_country = b.attacker_country(not_country=home)
    far_city = b.city_in(far_country)
    start = b.after(2 * 3600, 10 * 3600)
    used = [c for c in cards if rng.random() < 0.8] or cards[:1]
    uses = np.repeat(np.array(used), rng.integers(1, 4, len(used)))
    when = np.sort(start + rng.random(len(uses)) * rng.uniform(1_800, 3 * 3600))
    fraud_merchants: list[str] = []
    for card, offset in zip(uses, when, strict=True):
        atm = rng.random() < 0.6
        merchant = b.shop_in(far_city, ("atm",) if atm else ("electronics", "jewelry", "department_store"))
        amount = float(rng.uniform(200, 500)) if atm else float(rng.uniform(300, 1_500))
        if catalog.CATEGORIES[int(w.merch_category[merchant])].name == "atm":
            amount = round(amount / 20.0) * 20.0
        b.add(
            "cloned_card_fraud",
            Domain.payment,
            [offset],
            **b.card_payment(merchant, int(card), [amount], entry_mode="magstripe"),
        )
        fraud_merchants.append(w.merchant_ids[merchant])
    b.entity("terminal_id", w.terminal_ids[terminal])
    b.entity("merchant_id", w.merchant_ids[shop], *fraud_merchants)
    b.entity("card_id", *[w.card_ids[c] for c in cards])
    b.entity("user_id", *[w.user_ids[c] for c in victims])


def impossible_travel(b: CampaignBuilder) -> None:
    """A card used at home, then within the hour a sign-in and a card-present payment thousands of
    kilometres away (payment, auth)."""
    w, rng = b.world, b.rng
    start_s = b.plan.start_us // US
    customer, city = b.customer(), 0
    for _ in range(50):
        customer = b.customer()
        where, transit = w.location(np.array([customer]), np.array([start_s]))
        city = int(where[0])
        if not transit[0]:
            break
    card = int(w.pick_card(np.array([customer]), np.array([rng.random()]))[0])
    shop = b.shop_in(city, ("grocery", "restaurant", "fuel", "fast_food"))
    b.add(
        "home_payment",
        Domain.payment,
        [0.0],
        **b.card_payment(
            shop, card, [float(np.exp(rng.normal(np.log(35.0), 0.5)))], entry_mode="contactless"
        ),
    )
    candidates = w.pick_destination(rng.random(64))
    km = haversine_km(
        w.cities.lat[city], w.cities.lon[city], w.cities.lat[candidates], w.cities.lon[candidates]
    )
    far = candidates[km >= 3_000]
    far_city = int(far[0]) if len(far) else int(candidates[int(np.argmax(km))])
    far_country = int(w.cities.country[far_city])
    device = b.new_device()
    ip = b.address("residential", far_country)
    b.add(
        "remote_login",
        Domain.auth,
        [b.after(600, 2_400)],
        user_id=w.user_ids[customer],
        account_id=w.account_ids[customer],
        device_id=device,
        src_ip=ip,
        action="login",
        outcome="success",
        auth_method="password",
        mfa_used=False,
        app="online_banking",
        user_agent=catalog.DEVICE_USER_AGENTS[1][0],
        **b.geo(far_city),
    )
    remote = b.shop_in(far_city, ("electronics", "jewelry", "department_store", "atm"))
    b.add(
        "remote_payment",
        Domain.payment,
        [b.after(300, 1_800)],
        **b.card_payment(remote, card, [float(rng.uniform(150, 1_500))], entry_mode="magstripe"),
    )
    b.entity("user_id", w.user_ids[customer])
    b.entity("account_id", w.account_ids[customer])
    b.entity("card_id", w.card_ids[card])
    b.entity("device_id", device)
    b.entity("src_ip", ip)
    b.entity("merchant_id", w.merchant_ids[shop], w.merchant_ids[remote])


def mule_ring(b: CampaignBuilder) -> None:
    """Accounts sharing devices and addresses; many victims pay one collector, who pays the others, who
    take the money out (auth, payment)."""
    w, rng = b.world, b.rng
    mules: list[int] = []
    for _ in range(int(rng.integers(4, 10))):
        mules.append(b.customer(avoid=mules))
    collector, tier2 = mules[0], mules[1:]
    country = int(w.cust_country[collector])
    devices = [b.new_device() for _ in range(int(rng.integers(1, 4)))]
    ips = [b.address("residential", country) for _ in range(int(rng.integers(1, 3)))]
    ips.append(b.address("hosting", b.attacker_country(not_country=country)))
    home = int(w.cust_city[collector])
    geo = b.geo(home)

    def device_of(k: int) -> str:
        return devices[k % len(devices)]

    def ip_of(k: int) -> str:
        return ips[k % len(ips)]

    logins = [m for m in mules for _ in range(int(rng.integers(1, 3)))]
    at = b.spread(len(logins), (0, 0), (1_800, 5_400))
    for k, (mule, offset) in enumerate(zip(logins, at, strict=True)):
        b.add(
            "mule_logins",
            Domain.auth,
            [offset, offset + float(rng.uniform(20, 90))],
            user_id=w.user_ids[mule],
            account_id=w.account_ids[mule],
            device_id=device_of(k),
            src_ip=ip_of(k),
            action=["login", "device_add"],
            outcome="success",
            auth_method="password",
            mfa_used=[False, True],
            app="mobile_banking",
            user_agent=catalog.DEVICE_USER_AGENTS[0][1],
            **geo,
        )
    sources: list[int] = []
    for _ in range(int(rng.integers(6, 20))):
        sources.append(b.customer(avoid=mules + sources))
    start = b.after(600, 3_600)
    when = np.sort(start + rng.random(len(sources)) * rng.uniform(3_600, 3 * 3600))
    collector_payee = w.payee_ids[collector]
    total = 0.0
    for source, offset in zip(sources, when, strict=True):
        amount_eur = float(rng.uniform(400, 3_000))
        total += amount_eur
        src_country = int(w.cust_country[source])
        device = w.device_ids[int(w.device_start[source])]
        ip = w.ip_text[source]
        b.add(
            "collect",
            Domain.auth,
            [offset],
            user_id=w.user_ids[source],
            account_id=w.account_ids[source],
            device_id=device,
            src_ip=ip,
            action="payee_add",
            outcome="success",
            auth_method="biometric",
            mfa_used=True,
            app="mobile_banking",
            user_agent=catalog.DEVICE_USER_AGENTS[0][0],
            payee_id=collector_payee,
            **b.geo(int(w.cust_city[source])),
        )
        b.add(
            "collect",
            Domain.payment,
            [offset + float(rng.uniform(30, 300))],
            user_id=w.user_ids[source],
            account_id=w.account_ids[source],
            device_id=device,
            src_ip=ip,
            payee_id=collector_payee,
            amount=[round(amount_eur * float(w.fx_of_country[src_country]), 2)],
            currency=w.currency_of_country[src_country],
            channel="instant_transfer",
            auth_result="approved",
            country=w.cities.country_codes[src_country],
            home_lat=float(w.home_lat[source]),
            home_lon=float(w.home_lon[source]),
        )
    start = b.after(300, 1_800)
    payees = [w.payee_ids[m] for m in tier2]
    fx = float(w.fx_of_country[country])
    base = {"user_id": w.user_ids[collector], "account_id": w.account_ids[collector]}
    b.add(
        "distribute",
        Domain.auth,
        start + np.arange(len(tier2)) * 40.0,
        **base,
        device_id=devices[0],
        src_ip=ips[0],
        action="payee_add",
        outcome="success",
        auth_method="password",
        mfa_used=False,
        app="mobile_banking",
        user_agent=catalog.DEVICE_USER_AGENTS[0][1],
        payee_id=payees,
        **geo,
    )
    send = (
        start + len(tier2) * 40.0 + 60.0 + np.arange(len(tier2)) * rng.uniform(30, 240, len(tier2)).cumsum()
    )
    share = total * 0.92 / max(1, len(tier2))
    b.add(
        "distribute",
        Domain.payment,
        send,
        **base,
        device_id=devices[0],
        src_ip=ips[0],
        payee_id=payees,
        amount=np.round(rng.uniform(0.9, 1.1, len(tier2)) * share * fx, 2),
        currency=w.currency_of_country[country],
        channel="instant_transfer",
        auth_result="approved",
        country=w.cities.country_codes[country],
        home_lat=float(w.home_lat[collector]),
        home_lon=float(w.home_lon[collector]),
    )
    start = b.after(600, 3_600)
    crypto = w.online_merchants[
        w.merch_category[w.online_merchants] == catalog.CATEGORY_INDEX["crypto_exchange"]
    ]
    for k, mule in enumerate(tier2):
        card = int(w.card_start[mule])
        n = int(rng.integers(1, 4))
        offsets = np.sort(start + rng.random(n) * rng.uniform(1_800, 3 * 3600))
        for j, offset in enumerate(offsets):
            if len(crypto) and rng.random() < 0.4:
                merchant = int(crypto[int(rng.integers(0, len(crypto)))])
                extra: dict[str, Value] = {"device_id": device_of(k + j), "src_ip": ip_of(k + j)}
                amount = float(rng.uniform(500, 2_000))
            else:
                merchant = b.shop_in(int(w.cust_city[mule]), ("atm",))
                extra = {}
                amount = round(float(rng.uniform(200, 1_000)) / 20.0) * 20.0
            b.add("cash_out", Domain.payment, [offset], **b.card_payment(merchant, card, [amount], **extra))
    b.entity("user_id", *[w.user_ids[m] for m in mules])
    b.entity("account_id", *[w.account_ids[m] for m in mules])
    b.entity("device_id", *devices)
    b.entity("src_ip", *ips)
    b.entity("payee_id", collector_payee, *payees)
    b.entity("victim_account_id", *[w.account_ids[s] for s in sources])


def cloud_credential_compromise(b: CampaignBuilder) -> None:
    """Console sign-in without MFA from a new address → reconnaissance → CreateAccessKey → bulk S3
    downloads with the new key (cloud)."""
    w, rng = b.world, b.rng
    engineers = np.flatnonzero(w.emp_role >= 1)
    emp = int(engineers[int(rng.integers(0, len(engineers)))]) if len(engineers) else 0
    country = b.attacker_country(not_country=w.hq_country)
    city = b.city_in(country)
    ip = b.address("hosting", country)
    account = w.cloud_accounts[int(w.emp_cloud_account[emp])]
    arn = w.principal_arns[emp]
    browser = catalog.DEVICE_USER_AGENTS[1][0]
    base: dict[str, Value] = {
        "user_id": w.employee_ids[emp],
        "src_ip": ip,
        "cloud_provider": "aws",
        "cloud_account_id": account,
        "principal_id": arn,
        "principal_type": "IAMUser",
        "mfa_used": False,
        **b.geo(city),
    }
    failures = int(rng.integers(0, 4))
    at = b.spread(failures + 1, (0, 0), (60, 600))
    b.add(
        "console_login",
        Domain.cloud,
        at,
        **base,
        cloud_region="us-east-1",
        service="signin.amazonaws.com",
        action="ConsoleLogin",
        read_only=False,
        user_agent=browser,
        outcome=["failure"] * failures + ["success"],
        error_code=["Failed authentication"] * failures + [None],
    )
    recon = [
        ("sts.amazonaws.com", "GetCallerIdentity"),
        ("s3.amazonaws.com", "ListBuckets"),
        ("iam.amazonaws.com", "ListUsers"),
        ("iam.amazonaws.com", "ListRoles"),
        ("iam.amazonaws.com", "ListAccessKeys"),
    ]
    n = int(rng.integers(3, len(recon) + 1))
    b.add(
        "discovery",
        Domain.cloud,
        b.spread(n, (20, 120), (60, 300)),
        **base,
        cloud_region="eu-west-1",
        service=[s for s, _ in recon[:n]],
        action=[a for _, a in recon[:n]],
        outcome="success",
        read_only=True,
        user_agent="console.amazonaws.com",
    )
    key = "AKIA" + "".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[int(i)] for i in rng.integers(0, 32, 16))
    b.add(
        "create_access_key",
        Domain.cloud,
        [b.after(30, 300)],
        **base,
        cloud_region="us-east-1",
        service="iam.amazonaws.com",
        action="CreateAccessKey",
        outcome="success",
        read_only=False,
        user_agent="console.amazonaws.com",
        resource=arn,
    )
    bucket = f"{catalog.SENSITIVE_BUCKETS[int(rng.integers(0, 2))]}-{account[-4:]}"
    n_get = int(rng.integers(200, 1_500))
    lists = int(rng.integers(1, 4))
    at = b.spread(lists + n_get, (60, 600), (600, 2_400))
    objects = [f"arn:aws:s3:::{bucket}/exports/customers-{i:05d}.csv.gz" for i in range(n_get)]
    tool = ["aws-cli/2.13.25 Python/3.11.5 Linux/6.2.0 exe/x86_64.kali.2023", "S3 Browser 11.5.7"][
        int(rng.integers(0, 2))
    ]
    b.add(
        "bulk_download",
        Domain.cloud,
        at,
        **{**base, "mfa_used": False},
        cloud_region="eu-west-1",
        service="s3.amazonaws.com",
        action=["ListObjects"] * lists + ["GetObject"] * n_get,
        outcome="success",
        read_only=True,
        access_key_id=key,
        user_agent=tool,
        resource=[f"arn:aws:s3:::{bucket}"] * lists + objects,
    )
    b.entity("user_id", w.employee_ids[emp])
    b.entity("principal_id", arn)
    b.entity("access_key_id", key)
    b.entity("src_ip", ip)
    b.entity("resource", f"arn:aws:s3:::{bucket}")


def network_intrusion(b: CampaignBuilder) -> None:
    """Port scan of the bank's public side → SSH brute force on the bastion → a successful sign-in →
    lateral movement to internal servers (network, auth)."""
    w, rng = b.world, b.rng
    country = b.attacker_country(not_country=w.hq_country)
    city = b.city_in(country)
    ip = b.address("hosting", country)
    bastion = int(w.hosts_of("bastion")[0])
    bastion_public = int_to_ip(int(w.host_public_ip[bastion]))
    bastion_inside = w.host_ip_text[bastion]
    admins = np.flatnonzero(w.emp_role == 2)
    pool = admins if len(admins) else np.flatnonzero(w.emp_role >= 1)
    emp = int(pool[int(rng.integers(0, len(pool)))]) if len(pool) else 0
    user = w.employee_ids[emp]
    public = [int_to_ip(int(a)) for a in np.concatenate([w.web_ips, w.host_public_ip[[bastion]]])]
    ports = np.unique(
        np.concatenate([catalog.SCAN_PORTS, rng.integers(1, 1_025, int(rng.integers(20, 150)))])
    )
    probes = [(t, int(p)) for t in public[: int(rng.integers(2, len(public) + 1))] for p in ports]
    open_ports = {(t, 443) for t in public[:-1]} | {(bastion_public, 22)}
    at = b.spread(len(probes), (0, 0), (120, 600))
    states = ["SF" if probe in open_ports else ("REJ" if rng.random() < 0.3 else "S0") for probe in probes]
    b.add(
        "port_scan",
        Domain.network,
        at,
        src_ip=ip,
        dst_ip=[t for t, _ in probes],
        src_port=rng.integers(40_000, 60_000, len(probes)),
        dst_port=[p for _, p in probes],
        protocol="tcp",
        direction="inbound",
        conn_state=states,
        duration_s=0.0,
        bytes_out=0,
        bytes_in=0,
        packets_out=[2 if s == "SF" else 1 for s in states],
        packets_in=[1 if s != "S0" else 0 for s in states],
    )
    n = int(rng.integers(40, 250))
    names = [
        user if rng.random() < 0.6 else ["root", "admin", "ubuntu", "oracle", "test"][int(rng.integers(0, 5))]
        for _ in range(n)
    ]
    at = b.spread(n, (60, 900), (600, 3_600))
    ssh: dict[str, Value] = {
        "dst_ip": bastion_public,
        "dst_port": 22,
        "service": "ssh",
        "direction": "inbound",
    }
    b.add(
        "brute_force",
        Domain.network,
        np.maximum(at - 0.5, b.cursor),
        **b.flows(ip, bastion_public, n, failed_logins=1, logged_in=False, conn_state="RSTO", **ssh),
    )
    b.add(
        "brute_force",
        Domain.auth,
        at,
        user_id=names,
        device_id=w.host_ids[bastion],
        src_ip=ip,
        dst_ip=bastion_public,
        action="login",
        outcome="failure",
        failure_reason="wrong_password",
        auth_method="password",
        mfa_used=False,
        app="ssh",
        user_agent="SSH-2.0-libssh_0.9.6",
        **b.geo(city),
    )
    login = b.after(60, 900)
    b.add(
        "initial_access",
        Domain.network,
        [login - 0.5],
        **b.flows(
            ip,
            bastion_public,
            1,
            logged_in=True,
            failed_logins=0,
            duration_s=float(rng.uniform(900, 3_600)),
            bytes_out=int(rng.integers(20_000, 200_000)),
            bytes_in=int(rng.integers(100_000, 2_000_000)),
            **ssh,
        ),
    )
    b.add(
        "initial_access",
        Domain.auth,
        [login],
        user_id=user,
        device_id=w.host_ids[bastion],
        src_ip=ip,
        dst_ip=bastion_public,
        action="login",
        outcome="success",
        auth_method="password",
        mfa_used=False,
        app="ssh",
        user_agent="SSH-2.0-libssh_0.9.6",
        **b.geo(city),
    )
    internal = np.flatnonzero(
        np.isin(w.host_kind, [catalog.HOST_KINDS.index(k) for k in ("db", "file", "app", "dc")])
    )
    targets = rng.choice(internal, size=min(len(internal), int(rng.integers(3, 9))), replace=False)
    services = [(3389, "rdp"), (22, "ssh")]
    at = b.spread(len(targets), (120, 900), (600, 2_400))
    hq = b.geo(w.hq_city)
    for target, offset in zip(targets, at, strict=True):
        port, service = services[int(rng.integers(0, len(services)))]
        shell = {"logged_in": True, "failed_logins": 0} if service == "ssh" else {}
        b.add(
            "lateral_movement",
            Domain.network,
            [offset],
            **b.flows(
                bastion_inside,
                w.host_ip_text[int(target)],
                1,
                dst_port=port,
                service=service,
                direction="internal",
                device_id=w.host_ids[bastion],
                bytes_out=int(rng.integers(50_000, 5_000_000)),
                **shell,
            ),
        )
        b.add(
            "lateral_movement",
            Domain.auth,
            [offset + 1.0],
            user_id=user,
            device_id=w.host_ids[int(target)],
            src_ip=bastion_inside,
            dst_ip=w.host_ip_text[int(target)],
            action="login",
            outcome="success",
            auth_method="password",
            mfa_used=False,
            app=service,
            user_agent=catalog.SSH_CLIENT if service == "ssh" else None,
            **hq,
        )
    b.entity("src_ip", ip, bastion_inside)
    b.entity("dst_ip", bastion_public, *[w.host_ip_text[int(t)] for t in targets])
    b.entity("user_id", user)
    b.entity("device_id", w.host_ids[bastion], *[w.host_ids[int(t)] for t in targets])


def insider_exfiltration(b: CampaignBuilder) -> None:
    """An employee bulk-reads customer exports from S3, pulls files from the file server, then sends
    gigabytes out to a hosting provider (cloud, network)."""
    w, rng = b.world, b.rng
    engineers = np.flatnonzero(w.emp_role >= 1)
    emp = int(engineers[int(rng.integers(0, len(engineers)))]) if len(engineers) else 0
    account = w.cloud_accounts[int(w.emp_cloud_account[emp])]
    bucket = (
        f"{catalog.SENSITIVE_BUCKETS[int(rng.integers(0, len(catalog.SENSITIVE_BUCKETS)))]}-{account[-4:]}"
    )
    egress = w.egress_ips[int(rng.integers(0, len(w.egress_ips)))]
    lists, gets = int(rng.integers(2, 6)), int(rng.integers(100, 600))
    at = b.spread(lists + gets, (0, 0), (1_800, 5_400))
    b.add(
        "collection",
        Domain.cloud,
        at,
        user_id=w.employee_ids[emp],
        src_ip=egress,
        cloud_provider="aws",
        cloud_region="eu-west-1",
        cloud_account_id=account,
        service="s3.amazonaws.com",
        action=["ListObjects"] * lists + ["GetObject"] * gets,
        outcome="success",
        read_only=True,
        principal_id=w.principal_arns[emp],
        principal_type="IAMUser",
        access_key_id=w.access_key_ids[emp],
        mfa_used=False,
        user_agent=catalog.CLOUD_USER_AGENTS[1],
        resource=[f"arn:aws:s3:::{bucket}"] * lists
        + [f"arn:aws:s3:::{bucket}/exports/{i:05d}.parquet" for i in range(gets)],
        **b.geo(w.hq_city),
    )
    files = w.hosts_of("file")
    server = int(files[int(rng.integers(0, len(files)))])
    n = int(rng.integers(5, 20))
    workstation = {"user_id": w.employee_ids[emp], "device_id": w.workstation_ids[emp]}
    b.add(
        "staging",
        Domain.network,
        b.spread(n, (60, 900), (600, 1_800)),
        **b.flows(
            w.ws_ip_text[emp],
            w.host_ip_text[server],
            n,
            dst_port=445,
            service="smb",
            direction="internal",
            bytes_in=rng.integers(50_000_000, 500_000_000, n),
            duration_s=np.round(rng.uniform(30, 600, n), 3),
            **workstation,
        ),
    )
    country = b.attacker_country(not_country=w.hq_country)
    drop = b.address("hosting", country)
    n = int(rng.integers(10, 40))
    b.add(
        "exfiltration",
        Domain.network,
        b.spread(n, (300, 1_800), (1_800, 5_400)),
        **b.flows(
            w.ws_ip_text[emp],
            drop,
            n,
            dst_port=443,
            service="ssl",
            direction="outbound",
            bytes_out=rng.integers(50_000_000, 300_000_000, n),
            bytes_in=rng.integers(20_000, 200_000, n),
            duration_s=np.round(rng.uniform(60, 900, n), 3),
            **workstation,
        ),
    )
    b.entity("user_id", w.employee_ids[emp])
    b.entity("device_id", w.workstation_ids[emp])
    b.entity("principal_id", w.principal_arns[emp])
    b.entity("src_ip", w.ws_ip_text[emp], egress)
    b.entity("dst_ip", drop)
    b.entity("resource", f"arn:aws:s3:::{bucket}")


CAMPAIGNS: dict[CampaignType, Callable[[CampaignBuilder], None]] = {
    CampaignType.account_takeover: account_takeover,
    CampaignType.card_testing: card_testing,
    CampaignType.compromised_terminal: compromised_terminal,
    CampaignType.impossible_travel: impossible_travel,
    CampaignType.mule_ring: mule_ring,
    CampaignType.cloud_credential_compromise: cloud_credential_compromise,
    CampaignType.network_intrusion: network_intrusion,
    CampaignType.insider_exfiltration: insider_exfiltration,
}
"""The generator of each campaign type."""


def stage(plan: PlannedCampaign, world: World, *, seed: int, tenant: str) -> StagedCampaign:
    """Generate one planned campaign (deterministic in ``seed`` and the plan's number)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3, plan.cid]))
    builder = CampaignBuilder(plan=plan, world=world, rng=rng, tenant=tenant)
    CAMPAIGNS[plan.campaign_type](builder)
    return builder.build()


def plan_campaigns(config: SimConfig, start_us: int, end_us: int) -> list[PlannedCampaign]:
    """Campaigns of a finite run: Poisson counts per type (at least one each if asked), random starts
    early enough for their natural pace, numbered in order of start."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2]))
    days = (end_us - start_us) / (86_400 * US)
    planned: list[tuple[int, int, CampaignType]] = []
    for order, kind in enumerate(CampaignType):
        rate = config.rate_of(kind)
        count = int(rng.poisson(rate * days)) if rate > 0 else 0
        if rate > 0 and count == 0 and config.ensure_each_campaign:
            count = 1
        latest = max(start_us, end_us - int(NOMINAL_SPAN_S[kind] * US))
        if latest <= start_us:  # the run is shorter than the campaign: start in its first fifth
            latest = start_us + (end_us - start_us) // 5
        for start in np.sort(rng.integers(start_us, max(latest, start_us + 1), count)):
            planned.append((int(start), order, kind))
    planned.sort()
    return [
        PlannedCampaign(cid=k, campaign_type=kind, start_us=start, limit_us=max(1, end_us - 1 - start))
        for k, (start, _, kind) in enumerate(planned)
    ]


def realtime_plan(config: SimConfig, origin_us: int, period: int) -> Iterator[PlannedCampaign]:
    """Live mode: every enabled campaign type once in period number ``period``, staggered across it."""
    kinds = [kind for kind in CampaignType if config.rate_of(kind) > 0]
    period_us = int(config.campaign_period_s * US)
    span_us = int(config.realtime_campaign_span_s * US)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 4, period]))
    begin = origin_us + period * period_us + (2 * US if period == 0 else 0)
    slot = max(1, (period_us - (2 * US if period == 0 else 0)) // max(1, len(kinds)))
    for k, kind in enumerate(kinds):
        jitter = int(rng.integers(0, max(1, slot // 4)))
        yield PlannedCampaign(
            cid=period * len(CampaignType) + k,
            campaign_type=kind,
            start_us=begin + k * slot + jitter,
            limit_us=span_us,
        )
