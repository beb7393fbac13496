"""What the feature step computes, per domain: windows, keys, sums, novelty pairs, distinct counts.

Everything here is plain data (frozen dataclasses) so a deployment can change windows or keys without
touching the kernels. :data:`DEFAULT_CONFIG` is what :class:`~finsecure.features.step.FeatureStep` uses
unless told otherwise, and :data:`~finsecure.features.FEATURE_COLUMNS` lists its output columns.

Time rules shared by every feature (the reference implementation follows them literally):

* **Processing order.** Batches in arrival order; inside a batch, rows stably sorted by ``ts``.
* **Watermark.** The newest ``ts`` of all earlier batches of the same domain. A row more than
  ``max_delay_s`` older than the watermark is moved forward to ``watermark - max_delay_s`` (its
  *clamped time*) and flagged late.
* **Per-entity clock.** Each entity remembers the newest effective time of its events (``last_seen``).
  A row whose clamped time is older than ``last_seen - late_tolerance_s`` is processed *as if at*
  ``last_seen`` and flagged late; a row within the tolerance keeps its own time (its *effective time*),
  so it lands in the right window bucket. An entity unseen for more than its time-to-live
  (``entity_ttl_s``, ``novelty_ttl_s``) starts again from nothing: new history, no previous event.
* **Reference time.** Window features of a row are taken at the entity's newest time after the row,
  ``max(effective time, last_seen)``.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from finsecure.event.schemas import Domain, arrow_schema

__all__ = [
    "CHANNELS",
    "DEFAULT_CONFIG",
    "FAILED_CONN_STATES",
    "IP_MAX_ENTITIES",
    "DistinctFeatures",
    "DomainFeatures",
    "FeatureConfig",
    "KeyFeatures",
    "PairFeatures",
    "SumFeatures",
    "Window",
]

_US = 1_000_000

FAILED_CONN_STATES: tuple[str, ...] = ("S0", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR")
"""Zeek / NSL-KDD connection states counted as failed: no answer (``S0``), refused (``REJ``), torn down
by a reset (``RSTO``, ``RSTR``, ``RSTOS0``, ``RSTRH``) or half-open and never completed (``SH``, ``SHR``)."""

CHANNELS: Mapping[Domain, tuple[str, ...]] = types.MappingProxyType(
    {
        Domain.payment: ("amount",),
        Domain.auth: ("failed_login",),
        Domain.cloud: ("failure",),
        Domain.network: ("bytes", "packets", "failed_conn"),
    }
)
"""Per-row numbers a domain can sum over windows.

``amount`` is the payment amount (null adds nothing); ``failed_login`` is 1 for a login whose outcome
is ``failure``; ``failure`` is 1 for a cloud call whose outcome is ``failure``; ``bytes`` and ``packets``
are both directions added up; ``failed_conn`` is 1 when ``conn_state`` is in :data:`FAILED_CONN_STATES`.
"""


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window of ``length_s`` seconds, counted in buckets of ``bucket_s`` seconds.

    A row's window holds the entity's events whose bucket number ``floor(t / bucket_s)`` is one of the
    last ``length_s / bucket_s`` bucket numbers up to and including the bucket of the reference time:
    the current, partly elapsed bucket plus the full ones before it, so it reaches back between
    ``length_s - bucket_s`` and ``length_s`` seconds.
    """

    name: str
    length_s: int
    bucket_s: int

    @property
    def buckets(self) -> int:
        """How many buckets the window spans."""
        return self.length_s // self.bucket_s


@dataclass(frozen=True, slots=True)
class SumFeatures:
    """Sums of one channel over some windows, turned into one column per window.

    ``kind`` says what the column holds: ``"sum"`` (float sum), ``"count"`` (the sum of a 0/1 channel
    as an integer), ``"per_second"`` (sum divided by the window length) or ``"ratio"`` (sum divided by
    the number of events in the window, this one included).
    """

    channel: str
    label: str
    windows: tuple[str, ...]
    kind: str = "sum"


@dataclass(frozen=True, slots=True)
class KeyFeatures:
    """Window features of one entity key column (``card_id``, ``user_id``, ``src_ip`` ...).

    ``amount_stats`` adds the mean and standard deviation of the entity's earlier amounts and how this
    amount compares to them (needs the ``amount`` channel). ``max_entities`` caps how many entities of
    this key are kept (``None``: :attr:`FeatureConfig.max_entities`); see :class:`FeatureConfig`.
    """

    key: str
    count_windows: tuple[str, ...] = ("1h", "24h", "7d", "30d")
    sums: tuple[SumFeatures, ...] = ()
    amount_stats: bool = False
    secs_since_last: bool = True
    max_entities: int | None = None


@dataclass(frozen=True, slots=True)
class PairFeatures:
    """A novelty flag: is this the first time (within ``novelty_ttl_s``) ``left`` is seen with ``right``."""

    name: str
    left: str
    right: str


@dataclass(frozen=True, slots=True)
class DistinctFeatures:
    """How many different ``target`` values (hosts, ports) ``key`` reached over ``window``, exactly."""

    key: str
    target: str
    window: str


@dataclass(frozen=True, slots=True)
class DomainFeatures:
    """Everything computed for one domain."""

    keys: tuple[KeyFeatures, ...] = ()
    geo_key: str | None = None
    pairs: tuple[PairFeatures, ...] = ()
    distinct: tuple[DistinctFeatures, ...] = ()


_DEFAULT_WINDOWS: tuple[Window, ...] = (
    Window("5m", 300, 60),
    Window("10m", 600, 60),
    Window("1h", 3_600, 60),
    Window("24h", 86_400, 3_600),
    Window("7d", 7 * 86_400, 86_400),
    Window("30d", 30 * 86_400, 86_400),
)

_LONG = ("1h", "24h", "7d", "30d")


IP_MAX_ENTITIES = 1_000_000
"""Default cap on the live IP addresses kept per IP key: addresses seen on the internet (scanners,
probes, customers' changing home addresses) are not a bounded population, unlike cards or users."""


def _payment_key(key: str, *, stats: bool = True) -> KeyFeatures:
    return KeyFeatures(
        key=key,
        count_windows=_LONG,
        sums=(SumFeatures("amount", "sum_amount", _LONG),),
        amount_stats=stats,
        max_entities=IP_MAX_ENTITIES if key == "src_ip" else None,
    )


def _default_domains() -> dict[Domain, DomainFeatures]:
    failed_logins = (SumFeatures("failed_login", "failed_logins", ("10m", "1h"), kind="count"),)
    return {
        Domain.payment: DomainFeatures(
            keys=tuple(
                _payment_key(key)
                for key in ("card_id", "user_id", "account_id", "merchant_id", "device_id", "src_ip")
            ),
            geo_key="card_id",
            pairs=(
                PairFeatures("card_merchant", "card_id", "merchant_id"),
                PairFeatures("user_device", "user_id", "device_id"),
                PairFeatures("user_country", "user_id", "country"),
            ),
        ),
        Domain.auth: DomainFeatures(
            keys=(
                KeyFeatures("user_id", sums=failed_logins),
                KeyFeatures("device_id"),
                KeyFeatures("src_ip", sums=failed_logins, max_entities=IP_MAX_ENTITIES),
            ),
            geo_key="user_id",
            pairs=(
                PairFeatures("user_device", "user_id", "device_id"),
                PairFeatures("user_country", "user_id", "country"),
                PairFeatures("user_ip", "user_id", "src_ip"),
            ),
        ),
        Domain.cloud: DomainFeatures(
            keys=(
                KeyFeatures(
                    "user_id",
                    sums=(SumFeatures("failure", "failures", ("1h", "24h"), kind="count"),),
                ),
                KeyFeatures("src_ip", max_entities=IP_MAX_ENTITIES),
            ),
            geo_key="user_id",
            pairs=(
                PairFeatures("user_country", "user_id", "country"),
                PairFeatures("user_ip", "user_id", "src_ip"),
            ),
        ),
        Domain.network: DomainFeatures(
            keys=(
                KeyFeatures(
                    "src_ip",
                    count_windows=("5m", *_LONG),
                    sums=(
                        SumFeatures("bytes", "bytes_per_s", ("5m",), kind="per_second"),
                        SumFeatures("packets", "packets_per_s", ("5m",), kind="per_second"),
                        SumFeatures("failed_conn", "failed_ratio", ("5m",), kind="ratio"),
                    ),
                    max_entities=IP_MAX_ENTITIES,
                ),
                KeyFeatures("dst_ip", count_windows=("5m", "1h", "24h"), max_entities=IP_MAX_ENTITIES),
            ),
            distinct=(
                DistinctFeatures("src_ip", "dst_ip", "5m"),
                DistinctFeatures("src_ip", "dst_port", "5m"),
            ),
        ),
    }


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Settings of the feature step (times in seconds).

    Attributes
    ----------
    windows
        Named windows that key features refer to.
    domains
        What to compute per domain; a domain left out gets no features (its batches pass unchanged).
    late_tolerance_s
        How far behind an entity's newest event a row may be and still count at its own time.
    max_delay_s
        How far behind the domain's newest earlier event a row may be before it is moved forward.
    entity_ttl_s
        An entity unseen this long starts again from nothing; at least the longest window.
    novelty_ttl_s
        A pair (card x merchant, user x device ...) unseen this long counts as new again.
    evict_every_s
        How often (in event time) idle entities are dropped to free memory; 0 means every batch.
    max_entities
        Most entities kept per key (a key's own ``max_entities`` overrides it): memory is bounded even
        for keys whose values never stop coming (IP addresses on the internet). Checked before each
        batch: when more entities than that were seen within ``entity_ttl_s`` (counted from the
        watermark less ``max_delay_s``), the least recently seen are dropped until at most nine tenths
        of the cap remain (all those last seen before one cut-off time, so entities last seen at the
        same time go together). A dropped entity that comes back starts afresh, as after
        ``entity_ttl_s``. The default never bites a bank-sized population of cards or users.
    impossible_speed_kmh, impossible_min_km, min_travel_s
        Travel between two located events is impossible when faster than ``impossible_speed_kmh`` over
        more than ``impossible_min_km``; time gaps shorter than ``min_travel_s`` count as
        ``min_travel_s`` so two places at the same second give a finite speed.
    failed_conn_states
        ``conn_state`` values that count as a failed connection.
    """

    windows: tuple[Window, ...] = _DEFAULT_WINDOWS
    domains: Mapping[Domain, DomainFeatures] = field(default_factory=_default_domains)
    late_tolerance_s: float = 300.0
    max_delay_s: float = 3_600.0
    entity_ttl_s: float = 30 * 86_400.0
    novelty_ttl_s: float = 90 * 86_400.0
    evict_every_s: float = 3_600.0
    max_entities: int = 20_000_000
    impossible_speed_kmh: float = 900.0
    impossible_min_km: float = 100.0
    min_travel_s: float = 60.0
    failed_conn_states: tuple[str, ...] = FAILED_CONN_STATES

    def __post_init__(self) -> None:
        self.validate()

    def entity_cap(self, key: KeyFeatures) -> int:
        """Most entities kept for ``key``: its own ``max_entities`` or :attr:`max_entities`."""
        return key.max_entities if key.max_entities is not None else self.max_entities

    def window(self, name: str) -> Window:
        """The window called ``name``."""
        for window in self.windows:
            if window.name == name:
                return window
        raise ValueError(f"feature settings: no window named {name!r}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        names = [window.name for window in self.windows]
        if len(set(names)) != len(names):
            raise ValueError(f"feature settings: window names must be unique, got {names}")
        for window in self.windows:
            if window.bucket_s <= 0 or window.length_s <= 0 or window.length_s % window.bucket_s:
                raise ValueError(
                    f"feature settings: window {window.name!r} must be a positive whole number of "
                    f"buckets ({window.length_s} s is not a multiple of {window.bucket_s} s)"
                )
            if window.buckets > 64:
                raise ValueError(
                    f"feature settings: window {window.name!r} spans {window.buckets} buckets; at most 64 "
                    "are supported (use wider buckets)"
                )
        for name, value in (
            ("late_tolerance_s", self.late_tolerance_s),
            ("max_delay_s", self.max_delay_s),
            ("evict_every_s", self.evict_every_s),
            ("min_travel_s", self.min_travel_s),
        ):
            if value < 0:
                raise ValueError(f"feature settings: {name} must be 0 or more, got {value}")
        if self.max_entities < 1:
            raise ValueError(f"feature settings: max_entities must be at least 1, got {self.max_entities}")
        for domain, spec in self.domains.items():
            self._validate_domain(Domain(domain), spec)

    def _validate_domain(self, domain: Domain, spec: DomainFeatures) -> None:
        columns = set(arrow_schema(domain).names)
        where = f"feature settings for {domain}"
        used: list[str] = []
        for key in spec.keys:
            used.append(key.key)
            windows = [*key.count_windows, *(w for s in key.sums for w in s.windows)]
            longest = max((self.window(name).length_s for name in windows), default=0)
            if longest > self.entity_ttl_s:
                raise ValueError(f"{where}: entity_ttl_s must be at least the longest window ({longest} s)")
            for sums in key.sums:
                if sums.channel not in CHANNELS[domain]:
                    raise ValueError(f"{where}: {domain} has no channel {sums.channel!r}")
                if sums.kind not in ("sum", "count", "per_second", "ratio"):
                    raise ValueError(f"{where}: unknown sum kind {sums.kind!r}")
            if key.max_entities is not None and key.max_entities < 1:
                raise ValueError(f"{where}: max_entities of {key.key!r} must be at least 1")
            if key.amount_stats and "amount" not in CHANNELS[domain]:
                raise ValueError(f"{where}: amount_stats needs an amount column")
        for pair in spec.pairs:
            used.extend((pair.left, pair.right))
        for distinct in spec.distinct:
            used.extend((distinct.key, distinct.target))
            if self.window(distinct.window).length_s > self.entity_ttl_s:
                raise ValueError(f"{where}: entity_ttl_s must be at least the distinct-count window")
            if distinct.key not in {key.key for key in spec.keys}:
                raise ValueError(f"{where}: distinct counts need window features on {distinct.key!r}")
        if spec.geo_key is not None:
            used.append(spec.geo_key)
            if spec.geo_key not in {key.key for key in spec.keys}:
                raise ValueError(f"{where}: geo_key {spec.geo_key!r} needs window features on it too")
        missing = sorted(set(used) - columns)
        if missing:
            raise ValueError(f"{where}: not {domain} columns: {', '.join(missing)}")
        keys = [key.key for key in spec.keys]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{where}: each key may appear once, got {keys}")

    def fingerprint(self) -> str:
        """A stable text form of these settings, stored in snapshots to refuse a mismatched restore."""
        data = dataclasses.asdict(self)
        data["domains"] = {str(domain): dataclasses.asdict(spec) for domain, spec in self.domains.items()}
        return json.dumps(data, sort_keys=True, default=str)


DEFAULT_CONFIG = FeatureConfig()
"""The settings :class:`~finsecure.features.step.FeatureStep` uses by default."""
