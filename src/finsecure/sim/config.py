"""Settings of a simulation run: world size, time range, seed, campaign mix, output chunking.

Example
-------
>>> parse_duration("1h30m"), parse_duration("2d"), parse_duration("45")
(5400.0, 172800.0, 45.0)
>>> config = SimConfig(customers=2_000, duration_s=parse_duration("1h"), seed=7)
>>> config.end - config.start
datetime.timedelta(seconds=3600)
>>> config.with_campaign_rates(card_testing=0).campaign_rates["card_testing"]
0.0
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_CAMPAIGN_RATES",
    "DEFAULT_HOME_COUNTRIES",
    "DEFAULT_START",
    "EVENTS_PER_CUSTOMER_DAY",
    "SCENARIOS",
    "CampaignType",
    "SimConfig",
    "parse_duration",
]


class CampaignType(enum.StrEnum):
    """The attack and fraud campaigns the simulator can stage (also the ``label_detail`` of their events)."""

    account_takeover = "account_takeover"
    card_testing = "card_testing"
    compromised_terminal = "compromised_terminal"
    impossible_travel = "impossible_travel"
    mule_ring = "mule_ring"
    cloud_credential_compromise = "cloud_credential_compromise"
    network_intrusion = "network_intrusion"
    insider_exfiltration = "insider_exfiltration"


DEFAULT_CAMPAIGN_RATES: Mapping[str, float] = types.MappingProxyType(
    {
        CampaignType.account_takeover: 12.0,
        CampaignType.card_testing: 6.0,
        CampaignType.compromised_terminal: 2.0,
        CampaignType.impossible_travel: 12.0,
        CampaignType.mule_ring: 2.0,
        CampaignType.cloud_credential_compromise: 1.0,
        CampaignType.network_intrusion: 2.0,
        CampaignType.insider_exfiltration: 1.0,
    }
)
"""Campaigns started per simulated day, per type (scaled by `SimConfig.campaign_scale`)."""

DEFAULT_HOME_COUNTRIES: tuple[str, ...] = ("GB", "IE", "FR", "DE", "NL", "BE", "ES", "PT", "IT", "PL")
"""Where the simulated bank's customers live (a European retail bank); cities are weighted by population."""

DEFAULT_START = dt.datetime(2024, 5, 6, tzinfo=dt.UTC)
"""A Monday: fixed so that a seed alone decides the output."""

SCENARIOS: tuple[str, ...] = ("bank-day",)
"""Scenario names the command line accepts."""

EVENTS_PER_CUSTOMER_DAY = 16.5
"""Background events per customer per simulated day, staff and machines included (measured, approximate)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h30m``, ``1d`` or a plain number of seconds.

    Raises
    ------
    ValueError
        If the text is not a positive duration.
    """
    cleaned = text.strip().replace(" ", "")
    total, position = 0.0, 0
    while position < len(cleaned):
        match = _DURATION.match(cleaned, position)
        if match is None or match.end() == position:
            break
        total += float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]
        position = match.end()
    if not cleaned or position != len(cleaned) or not math.isfinite(total) or total <= 0:
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 15m, 1h, 1d or 1h30m")
    return total


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that decides a simulation's output. Same config (seed included) → same events.

    Attributes
    ----------
    customers
        Number of bank customers (1,000 to 10,000,000). Employees, merchants and hosts scale with it.
    duration_s
        Simulated time covered by a finite run, in seconds.
    start
        Simulated time of the first event (UTC). Ignored in real-time mode, which starts now.
    seed
        Decides everything random.
    scenario
        Only ``"bank-day"`` today.
    chunk_size
        Largest number of rows in one yielded chunk.
    campaign_rates
        Campaigns per simulated day, per `CampaignType` value; 0 turns a type off.
    campaign_scale
        Multiplies every campaign rate (0 gives a background-only run).
    ensure_each_campaign
        In a finite run, stage at least one campaign of every type whose rate is above 0.
    background_scale
        Multiplies the volume of background behaviour.
    employees
        Number of employees; by default one per 200 customers (at least 40).
    home_countries
        ISO codes of the countries customers live in (cities weighted by population); empty for worldwide.
    tenant
        Value of the ``tenant`` column.
    slice_s
        Simulated seconds generated at a time; by default chosen from the world size (at most one hour).
        Chunks never span two slices.
    realtime
        Live mode: ``ts`` follows the wall clock from the first chunk on, forever.
    rate
        Live mode: background events per second (of wall-clock time). Default 2,000.
    campaign_period_s
        Live mode: every enabled campaign type starts once per period (staggered).
    realtime_campaign_span_s
        Live mode: a campaign's steps are squeezed into at most this many seconds so a demo shows them whole.
    """

    customers: int = 10_000
    duration_s: float = 86_400.0
    start: dt.datetime = DEFAULT_START
    seed: int = 0
    scenario: str = "bank-day"
    chunk_size: int = 65_536
    campaign_rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CAMPAIGN_RATES))
    campaign_scale: float = 1.0
    ensure_each_campaign: bool = True
    background_scale: float = 1.0
    employees: int | None = None
    home_countries: tuple[str, ...] = DEFAULT_HOME_COUNTRIES
    tenant: str = "default"
    slice_s: float | None = None
    realtime: bool = False
    rate: float | None = None
    campaign_period_s: float = 120.0
    realtime_campaign_span_s: float = 40.0

    def __post_init__(self) -> None:
        problems = []
        if not 100 <= self.customers <= 50_000_000:
            problems.append(f"customers must be between 100 and 50,000,000, not {self.customers}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            problems.append(f"duration_s must be a positive number of seconds, not {self.duration_s}")
        if self.start.tzinfo is None:
            problems.append("start must carry a time zone, e.g. datetime(2024, 5, 6, tzinfo=UTC)")
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario must be one of {', '.join(SCENARIOS)}, not {self.scenario!r}")
        if self.chunk_size < 1:
            problems.append(f"chunk_size must be at least 1, not {self.chunk_size}")
        unknown = sorted(set(self.campaign_rates) - {c.value for c in CampaignType})
        if unknown:
            known = ", ".join(c.value for c in CampaignType)
            problems.append(f"unknown campaign type(s) {', '.join(unknown)}; known: {known}")
        if any(not (math.isfinite(r) and r >= 0) for r in self.campaign_rates.values()):
            problems.append("campaign rates must be finite numbers of campaigns per day, 0 or more")
        if not (math.isfinite(self.campaign_scale) and self.campaign_scale >= 0):
            problems.append(f"campaign_scale must be 0 or more, not {self.campaign_scale}")
        if not (math.isfinite(self.background_scale) and self.background_scale > 0):
            problems.append(f"background_scale must be above 0, not {self.background_scale}")
        if self.employees is not None and self.employees < 10:
            problems.append(f"employees must be at least 10, not {self.employees}")
        if self.slice_s is not None and not (math.isfinite(self.slice_s) and self.slice_s >= 0.001):
            problems.append(f"slice_s must be at least 0.001 seconds, not {self.slice_s}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            problems.append(f"rate must be a positive number of events per second, not {self.rate}")
        if self.campaign_period_s <= 0 or self.realtime_campaign_span_s <= 0:
            problems.append("campaign_period_s and realtime_campaign_span_s must be above 0")
        if not 1 <= len(self.tenant) <= 64:
            problems.append("tenant must be 1 to 64 characters")
        if problems:
            raise ValueError("invalid simulation settings: " + "; ".join(problems))

    @property
    def end(self) -> dt.datetime:
        """Simulated time just after the last event of a finite run."""
        return self.start.astimezone(dt.UTC) + dt.timedelta(seconds=self.duration_s)

    @property
    def n_employees(self) -> int:
        """Employees in the world (explicit, or one per 200 customers, at least 40)."""
        return self.employees if self.employees is not None else max(40, self.customers // 200)

    def rate_of(self, campaign: CampaignType | str) -> float:
        """Campaigns per simulated day of one type, after `campaign_scale`."""
        return float(self.campaign_rates.get(str(campaign), 0.0)) * self.campaign_scale

    @classmethod
    def live(cls, rate: float = 200.0, *, max_customers: int = 1_000_000, **changes: Any) -> SimConfig:
        """Live-mode settings with a world big enough for ``rate`` events a second at a realistic pace.

        A customer (with the staff and machines that come with them) makes about
        `EVENTS_PER_CUSTOMER_DAY` events a day; a smaller world would have to make every customer
        hyperactive to reach the rate, which velocity rules would rightly flag. The world is capped at
        ``max_customers`` (a million customers take about two seconds and 700 MB to build).

        >>> SimConfig.live(100.0).customers, SimConfig.live(100.0).realtime
        (523636, True)
        """
        customers = int(min(max(rate * 86_400.0 / EVENTS_PER_CUSTOMER_DAY, 1_000), max_customers))
        return dataclasses.replace(cls(), customers=customers, realtime=True, rate=rate, **changes)

    def fingerprint(self) -> str:
        """Eight hex digits naming the rows this configuration produces (chunk size aside): event ids
        start with it, so runs with other settings never reuse an id in a shared event lake."""
        decisive = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("chunk_size",)
        }
        decisive["campaign_rates"] = sorted(self.campaign_rates.items())
        decisive["start"] = self.start.astimezone(dt.UTC).isoformat()
        return hashlib.sha256(repr(sorted(decisive.items())).encode()).hexdigest()[:8]

    def with_campaign_rates(self, **rates: float) -> SimConfig:
        """A copy with some campaign rates replaced (by type name)."""
        merged = {**dict(self.campaign_rates), **{k: float(v) for k, v in rates.items()}}
        return dataclasses.replace(self, campaign_rates=merged)
