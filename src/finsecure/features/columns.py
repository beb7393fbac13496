"""Names, types and plain-words meanings of the feature columns.

Naming scheme (stable; models list their inputs by these names):

* ``<key>__count_<window>``: events of that entity in the window, e.g. ``card_id__count_1h``.
* ``<key>__<label>_<window>``: a sum over the window, e.g. ``card_id__sum_amount_24h``,
  ``user_id__failed_logins_10m``, ``src_ip__bytes_per_s_5m``, ``src_ip__failed_ratio_5m``.
* ``<key>__mean_amount``, ``<key>__std_amount``, ``<key>__amount_to_mean``, ``<key>__amount_zscore``.
* ``<key>__secs_since_last``.
* ``<key>__distinct_<target>_<window>``, e.g. ``src_ip__distinct_dst_port_5m``.
* ``geo__home_distance_km``, ``geo__distance_km``, ``geo__speed_kmh``, ``geo__impossible_travel``,
  ``geo__new_country``.
* ``novel__<pair>``, e.g. ``novel__card_merchant``.
* ``event__late``.

A feature that does not apply to a row (no key, no location, no earlier event) is null.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features.config import DomainFeatures, FeatureConfig, KeyFeatures, SumFeatures, Window

__all__ = ["ColumnInfo", "arrow_type", "domain_columns", "key_columns", "key_window_names"]

_ENTITY_WORDS = {
    "card_id": "card",
    "user_id": "user",
    "account_id": "account",
    "merchant_id": "merchant (terminal)",
    "terminal_id": "terminal",
    "device_id": "device",
    "src_ip": "source IP address",
    "dst_ip": "destination IP address",
    "payee_id": "payee",
    "country": "country",
    "dst_port": "destination port",
}
_EVENT_WORDS = {
    Domain.payment: "payments",
    Domain.auth: "sign-ins and account actions",
    Domain.cloud: "cloud calls",
    Domain.network: "connections",
}
_CHANNEL_WORDS = {
    "amount": "the amounts",
    "failed_login": "failed logins",
    "failure": "failed calls",
    "bytes": "bytes sent and received",
    "packets": "packets sent and received",
    "failed_conn": "failed connections",
}


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One output column: its name, Polars type and what it means in plain words."""

    name: str
    dtype: pl.DataType
    description: str


def arrow_type(dtype: pl.DataType) -> pa.DataType:
    """The Arrow type of a feature column's Polars type (Int32, Float64 or Boolean)."""
    if dtype == pl.Int32():
        return pa.int32()
    if dtype == pl.Boolean():
        return pa.bool_()
    return pa.float64()


def _words(column: str) -> str:
    return _ENTITY_WORDS.get(column, column.replace("_", " "))


def _duration(seconds: int) -> str:
    """``"1 hour"``, ``"24 hours"``, ``"7 days"``: whole days from 2 days up, hours up to 48."""
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds % size == 0 and (seconds >= size if unit != "day" else seconds > 86_400):
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _window_words(window: Window) -> str:
    length = _duration(window.length_s).removeprefix("1 ")
    step = {60: "by the minute", 3_600: "by the hour", 86_400: "by the day"}.get(window.bucket_s)
    if step is None:
        step = f"in steps of {_duration(window.bucket_s)}"
    return f"the last {length} (counted {step})"


def key_window_names(key: KeyFeatures) -> tuple[str, ...]:
    """The windows a key needs (count windows first, then sum windows), each once, in a fixed order."""
    names: list[str] = []
    for name in (*key.count_windows, *(w for sums in key.sums for w in sums.windows)):
        if name not in names:
            names.append(name)
    return tuple(names)


def _sum_description(domain: Domain, key: str, sums: SumFeatures, window: Window) -> str:
    who = f"this {_words(key)}"
    what = _CHANNEL_WORDS.get(sums.channel, sums.channel)
    when = _window_words(window)
    events = _EVENT_WORDS[domain]
    if sums.kind == "count":
        return f"How many {what} {who} had in {when}, this event included."
    if sums.kind == "per_second":
        return f"Average {what} per second for {who} over {when}."
    if sums.kind == "ratio":
        return f"Share of {who}'s {events} in {when} that were {what} (0 to 1)."
    return f"Sum of {what} of {who}'s {events} in {when}, this one included."


def key_columns(domain: Domain, key: KeyFeatures, config: FeatureConfig) -> list[ColumnInfo]:
    """The window-feature columns of one key, in output order."""
    who = _words(key.key)
    events = _EVENT_WORDS[domain]
    columns = [
        ColumnInfo(
            f"{key.key}__count_{name}",
            pl.Int32(),
            f"How many {events} this {who} had in {_window_words(config.window(name))}, this one included.",
        )
        for name in key.count_windows
    ]
    for sums in key.sums:
        dtype: pl.DataType = pl.Int32() if sums.kind == "count" else pl.Float64()
        columns.extend(
            ColumnInfo(
                f"{key.key}__{sums.label}_{name}",
                dtype,
                _sum_description(domain, key.key, sums, config.window(name)),
            )
            for name in sums.windows
        )
    if key.amount_stats:
        columns += [
            ColumnInfo(
                f"{key.key}__mean_amount",
                pl.Float64(),
                f"Average amount of this {who}'s earlier {events} (empty before its first).",
            ),
            ColumnInfo(
                f"{key.key}__std_amount",
                pl.Float64(),
                f"How much this {who}'s earlier amounts vary: their standard deviation (empty with fewer "
                "than two).",
            ),
            ColumnInfo(
                f"{key.key}__amount_to_mean",
                pl.Float64(),
                f"This amount divided by the {who}'s average earlier amount (2.0: twice the usual).",
            ),
            ColumnInfo(
                f"{key.key}__amount_zscore",
                pl.Float64(),
                f"How many standard deviations this amount is above (or, negative, below) the {who}'s "
                "average earlier amount (empty while the earlier amounts are all the same).",
            ),
        ]
    if key.secs_since_last:
        columns.append(
            ColumnInfo(
                f"{key.key}__secs_since_last",
                pl.Float64(),
                f"Seconds since this {who}'s previous event (0 if this one arrived late; empty for its "
                "first).",
            )
        )
    return columns


def domain_columns(domain: Domain, config: FeatureConfig) -> tuple[ColumnInfo, ...]:
    """Every feature column the step adds to a batch of ``domain``, in output order."""
    spec = config.domains.get(domain)
    if spec is None:
        return ()
    columns: list[ColumnInfo] = []
    for key in spec.keys:
        columns += key_columns(domain, key, config)
    for distinct in spec.distinct:
        window = config.window(distinct.window)
        columns.append(
            ColumnInfo(
                f"{distinct.key}__distinct_{distinct.target}_{distinct.window}",
                pl.Int32(),
                f"How many different {_words(distinct.target)}s this {_words(distinct.key)} reached in "
                f"{_window_words(window)}, this connection included.",
            )
        )
    columns += _geo_columns(domain, spec, config)
    columns += [
        ColumnInfo(
            f"novel__{pair.name}",
            pl.Boolean(),
            f"True the first time this {_words(pair.left)} is seen with this {_words(pair.right)} "
            f"(or the first time in {_duration(int(config.novelty_ttl_s))}).",
        )
        for pair in spec.pairs
    ]
    columns.append(
        ColumnInfo(
            "event__late",
            pl.Boolean(),
            "True when the event arrived too late to count at its own time and was counted at a later "
            "time instead (see the late tolerance and maximum delay settings).",
        )
    )
    return tuple(columns)


def _geo_columns(domain: Domain, spec: DomainFeatures, config: FeatureConfig) -> list[ColumnInfo]:
    if spec.geo_key is None:
        return []
    who = _words(spec.geo_key)
    columns: list[ColumnInfo] = []
    if "home_lat" in arrow_schema(domain).names:
        columns.append(
            ColumnInfo(
                "geo__home_distance_km",
                pl.Float64(),
                "Distance in km between where this happened and the customer's home.",
            )
        )
    columns += [
        ColumnInfo(
            "geo__distance_km",
            pl.Float64(),
            f"Distance in km from where this {who}'s latest earlier located event happened.",
        ),
        ColumnInfo(
            "geo__speed_kmh",
            pl.Float64(),
            f"Speed in km/h this {who} would have needed to travel from that place to this one "
            f"(gaps under {int(config.min_travel_s)} s count as {int(config.min_travel_s)} s).",
        ),
        ColumnInfo(
            "geo__impossible_travel",
            pl.Boolean(),
            f"True when that speed is above {config.impossible_speed_kmh:g} km/h over more than "
            f"{config.impossible_min_km:g} km: nobody can travel that fast.",
        ),
        ColumnInfo(
            "geo__new_country",
            pl.Boolean(),
            f"True the first time this {who} is seen in this country "
            f"(or the first time in {_duration(int(config.novelty_ttl_s))}).",
        ),
    ]
    return columns
