"""Feature settings: every impossible setting is refused with a message that names it."""

from __future__ import annotations

from typing import Any

import pytest

from finsecure.event.schemas import Domain
from finsecure.features.config import (
    DEFAULT_CONFIG,
    DistinctFeatures,
    DomainFeatures,
    FeatureConfig,
    KeyFeatures,
    PairFeatures,
    SumFeatures,
    Window,
)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"windows": (Window("1h", 3_600, 60), Window("1h", 7_200, 3_600))}, "unique"),
        ({"windows": (Window("odd", 100, 30),)}, "whole number of buckets"),
        ({"late_tolerance_s": -1.0}, "late_tolerance_s"),
        (
            {
                "entity_ttl_s": 3_600.0,
                "domains": {Domain.payment: DomainFeatures(keys=(KeyFeatures("card_id"),))},
            },
            "entity_ttl_s must be at least the longest window",
        ),
        (
            {
                "domains": {
                    Domain.auth: DomainFeatures(
                        keys=(KeyFeatures("user_id", sums=(SumFeatures("amount", "x", ("1h",)),)),)
                    )
                }
            },
            "no channel 'amount'",
        ),
        (
            {"domains": {Domain.auth: DomainFeatures(keys=(KeyFeatures("amount"),))}},
            "not auth columns: amount",
        ),
        (
            {"domains": {Domain.auth: DomainFeatures(keys=(KeyFeatures("user_id"),), geo_key="src_ip")}},
            "geo_key",
        ),
        (
            {
                "domains": {
                    Domain.network: DomainFeatures(distinct=(DistinctFeatures("src_ip", "dst_ip", "5m"),))
                }
            },
            "distinct counts need window features",
        ),
        (
            {"domains": {Domain.payment: DomainFeatures(pairs=(PairFeatures("x", "card_id", "colour"),))}},
            "colour",
        ),
    ],
)
def test_feature_config__refuses_impossible_settings(changes: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"windows": DEFAULT_CONFIG.windows, "domains": {}, **changes}
    with pytest.raises(ValueError, match=message):
        FeatureConfig(**settings)


def test_feature_config__window_lookup_and_fingerprint() -> None:
    assert DEFAULT_CONFIG.window("24h") == Window("24h", 86_400, 3_600)
    with pytest.raises(ValueError, match="no window named '2h'"):
        DEFAULT_CONFIG.window("2h")
    assert FeatureConfig().fingerprint() == DEFAULT_CONFIG.fingerprint()
    assert FeatureConfig(late_tolerance_s=1.0).fingerprint() != DEFAULT_CONFIG.fingerprint()
