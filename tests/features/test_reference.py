"""The vectorised step must compute exactly what the one-event-at-a-time reference computes.

Hypothesis generates random streams: a few entities per key, random gaps (same-timestamp ties, gaps
inside a bucket, across buckets, past every window and past the time-to-live), rows out of order
(within the late tolerance, beyond it, and beyond the maximum delay), nulls in keys and values,
random batch splits, and a snapshot/restore into a fresh step in the middle of the stream. The
small settings evict at every batch, so eviction is exercised constantly while the reference never
evicts. Counts and flags must be equal; floats equal within 1e-9 (relative above 1).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finsecure.event.schemas import Domain
from finsecure.features.config import (
    DistinctFeatures,
    DomainFeatures,
    FeatureConfig,
    KeyFeatures,
    PairFeatures,
    SumFeatures,
    Window,
)
from finsecure.features.reference import ReferenceFeatures
from tests.features.helpers import EPOCH, canonical_frame, run_both

_FAILED_LOGINS = (SumFeatures("failed_login", "failed_logins", ("4s", "20s"), kind="count"),)

SMALL = FeatureConfig(
    windows=(Window("4s", 4, 1), Window("8s", 8, 1), Window("20s", 20, 5), Window("60s", 60, 10)),
    domains={
        Domain.payment: DomainFeatures(
            keys=(
                KeyFeatures(
                    "card_id",
                    count_windows=("4s", "20s", "60s"),
                    sums=(SumFeatures("amount", "sum_amount", ("4s", "20s", "60s")),),
                    amount_stats=True,
                ),
                KeyFeatures(
                    "user_id",
                    count_windows=("20s",),
                    sums=(SumFeatures("amount", "sum_amount", ("60s",)),),
                    amount_stats=True,
                ),
                KeyFeatures("merchant_id", count_windows=("4s", "60s"), secs_since_last=False),
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
                KeyFeatures("user_id", count_windows=("20s",), sums=_FAILED_LOGINS),
                KeyFeatures("src_ip", count_windows=("60s",), sums=_FAILED_LOGINS),
            ),
            geo_key="user_id",
            pairs=(PairFeatures("user_ip", "user_id", "src_ip"),),
        ),
        Domain.cloud: DomainFeatures(
            keys=(
                KeyFeatures(
                    "user_id",
                    count_windows=("4s",),
                    sums=(SumFeatures("failure", "failures", ("20s",), kind="count"),),
                ),
            ),
            geo_key="user_id",
            pairs=(PairFeatures("user_country", "user_id", "country"),),
        ),
        Domain.network: DomainFeatures(
            keys=(
                KeyFeatures(
                    "src_ip",
                    # 8s shares 4s's bucket width but has no sums: it gets a counts-only ring of its own.
                    count_windows=("4s", "8s", "20s"),
                    sums=(
                        SumFeatures("bytes", "bytes_per_s", ("20s",), kind="per_second"),
                        SumFeatures("packets", "packets_per_s", ("4s",), kind="per_second"),
                        SumFeatures("failed_conn", "failed_ratio", ("20s",), kind="ratio"),
                    ),
                ),
            ),
            distinct=(
                DistinctFeatures("src_ip", "dst_ip", "20s"),
                DistinctFeatures("src_ip", "dst_port", "4s"),
            ),
        ),
    },
    late_tolerance_s=3.0,
    max_delay_s=15.0,
    entity_ttl_s=60.0,
    novelty_ttl_s=45.0,
    evict_every_s=0.0,
    min_travel_s=2.0,
)

_SECOND = 1_000_000
_CITIES = [(48.8566, 2.3522), (51.5074, -0.1278), (40.7128, -74.006), (48.86, 2.36), (-33.87, 151.21)]
_SMALL_GAPS = st.sampled_from(
    [0, 0, 1, 400_000, _SECOND, 3 * _SECOND, 7 * _SECOND, 25 * _SECOND, 70 * _SECOND]
)
_SMALL_JITTER = st.sampled_from([0, 0, 0, 0, -_SECOND, -2_900_000, -3_100_000, -8 * _SECOND, -20 * _SECOND])
_HOUR = 3_600 * _SECOND
_DEFAULT_GAPS = st.sampled_from(
    [0, 1, 59 * _SECOND, 20 * 60 * _SECOND, 3 * _HOUR, 30 * _HOUR, 8 * 24 * _HOUR]
)
_DEFAULT_JITTER = st.sampled_from([0, 0, 0, -60 * _SECOND, -301 * _SECOND, -2 * _HOUR])


def _place(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["city", "city", "none", "lat_only"]))
    if kind == "none":
        return {}
    lat, lon = draw(st.sampled_from(_CITIES))
    return {"lat": lat} if kind == "lat_only" else {"lat": lat, "lon": lon}


def _row(draw: st.DrawFn, domain: Domain) -> dict[str, Any]:
    def key(*values: str | None) -> str | None:
        return draw(st.sampled_from(values))

    if domain == Domain.payment:
        return {
            "card_id": key("c1", "c2", "c3", "c\u00e9-long-token-0123456789", None),
            "user_id": key("u1", "u2", None),
            "merchant_id": key("m1", "m2", "m3", None),
            "device_id": key("d1", "d2", None),
            "country": key("FR", "GB", None),
            "amount": draw(st.one_of(st.none(), st.integers(0, 1_000_000).map(lambda cents: cents / 100))),
            "home_lat": 48.0,
            "home_lon": draw(st.sampled_from([2.0, None])),
            **_place(draw),
        }
    if domain == Domain.auth:
        return {
            "user_id": key("u1", "u2", "u3", None),
            "src_ip": key("10.0.0.1", "10.0.0.2", "2001:db8::1", None),
            "country": key("FR", "US", None),
            "action": key("login", "login", "logout", None),
            "outcome": key("failure", "failure", "success", None),
            **_place(draw),
        }
    if domain == Domain.cloud:
        return {
            "user_id": key("alice", "bob", None),
            "country": key("NL", "DE", None),
            "outcome": key("success", "failure", "unknown", None),
            **_place(draw),
        }
    return {
        "src_ip": key("10.0.0.1", "10.0.0.2", "10.0.0.3", None),
        "dst_ip": key("10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", None),
        "dst_port": draw(st.sampled_from([22, 80, 443, 8080, None])),
        "bytes_out": draw(st.one_of(st.none(), st.integers(0, 10_000))),
        "bytes_in": draw(st.one_of(st.none(), st.integers(0, 10_000))),
        "packets_out": draw(st.one_of(st.none(), st.integers(0, 50))),
        "conn_state": key("SF", "SF", "S0", "REJ", "RSTO", None),
    }


@st.composite
def streams(
    draw: st.DrawFn,
    domain: Domain,
    gaps: st.SearchStrategy[int],
    jitter: st.SearchStrategy[int],
    max_rows: int = 50,
) -> tuple[list[pl.DataFrame], int | None]:
    """Random batches of one domain and where (if anywhere) to snapshot and restore."""
    count = draw(st.integers(1, max_rows))
    clock = 0
    rows = []
    for number in range(count):
        clock += draw(gaps)
        at = max(clock + draw(jitter), 0)
        rows.append(
            {"event_id": f"e{number}", "ts": EPOCH + dt.timedelta(microseconds=at), **_row(draw, domain)}
        )
    frame = canonical_frame(domain, rows)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(count - 1, 1)), max_size=6))))
    bounds = [0, *[cut for cut in cuts if cut < count], count]
    batches = [frame[start:end] for start, end in itertools.pairwise(bounds)]
    restore_at = draw(st.one_of(st.none(), st.integers(1, max(len(batches) - 1, 1))))
    return batches, restore_at


_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("domain", list(Domain))
@_SETTINGS
@given(data=st.data())
def test_feature_step__matches_reference_small_windows(domain: Domain, data: st.DataObject) -> None:
    batches, restore_at = data.draw(streams(domain, _SMALL_GAPS, _SMALL_JITTER))
    run_both(SMALL, domain, batches, restore_at=restore_at)


@_SETTINGS
@given(data=st.data())
def test_feature_step__matches_reference_default_settings(data: st.DataObject) -> None:
    batches, restore_at = data.draw(streams(Domain.payment, _DEFAULT_GAPS, _DEFAULT_JITTER, max_rows=40))
    run_both(FeatureConfig(evict_every_s=0.0), Domain.payment, batches, restore_at=restore_at)


def test_reference_features__counts_known_stream() -> None:
    """A hand-checked stream, so the reference itself is pinned down (not only compared)."""
    times = [0, 30, 61, 61, 200]  # seconds; small windows: 4 s in 1 s buckets, 60 s in 10 s buckets
    rows = [{"ts": EPOCH + dt.timedelta(seconds=s), "card_id": "c", "amount": 1.0} for s in times]
    out = ReferenceFeatures(SMALL).process(Domain.payment, canonical_frame(Domain.payment, rows))
    # The 60 s window at 61 s covers 10 s buckets 1..6 (10 s..69 s): the row at 0 s is out.
    assert out["card_id__count_60s"].to_list() == [1, 2, 2, 3, 1]
    assert out["card_id__count_4s"].to_list() == [1, 1, 1, 2, 1]
    # Idle 139 s > entity_ttl_s = 60 s before the last row: it starts afresh.
    assert out["card_id__secs_since_last"].to_list() == [None, 30.0, 31.0, 0.0, None]


CAPPED = dataclasses.replace(SMALL, max_entities=2)
"""The small settings with at most two entities per key: with three or four values per key in the
random streams, the cap drops entities (and the distinct-count pairs of dropped sources) constantly."""


@pytest.mark.parametrize("domain", list(Domain))
@_SETTINGS
@given(data=st.data())
def test_feature_step__matches_reference_with_entity_cap(domain: Domain, data: st.DataObject) -> None:
    batches, restore_at = data.draw(streams(domain, _SMALL_GAPS, _SMALL_JITTER))
    run_both(CAPPED, domain, batches, restore_at=restore_at)


def test_reference_features__entity_cap_drops_least_recently_seen() -> None:
    """Cap 2: before the third batch three cards were seen; the least recent (c1) starts afresh."""
    config = dataclasses.replace(SMALL, max_entities=2)
    reference = ReferenceFeatures(config)
    out = []
    for second, card in ((0, "c1"), (1, "c2"), (2, "c3"), (3, "c1"), (4, "c3")):
        row = {"ts": EPOCH + dt.timedelta(seconds=second), "card_id": card, "amount": 1.0}
        out.append(reference.process(Domain.payment, canonical_frame(Domain.payment, [row])))
    since = [frame["card_id__secs_since_last"].item() for frame in out]
    # c1 is dropped before the batch at 3 s (c2, c3 are newer); c3 is kept.
    assert since == [None, None, None, None, 2.0]
