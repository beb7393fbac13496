from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from finsecure.sim.config import CampaignType, SimConfig, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1d", 86_400.0),
        ("1h30m", 5400.0),
        ("2.5h", 9000.0),
        ("1w", 604_800.0),
        ("250ms", 0.25),
        ("45", 45.0),
    ],
)
def test_parse_duration__units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "1x", "h", "1h 2q", "nan"])
def test_parse_duration__rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"customers": 10}, "customers"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"start": dt.datetime(2024, 5, 6)}, "time zone"),
        ({"scenario": "bank-week"}, "scenario"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"campaign_rates": {"bank_heist": 1.0}}, "unknown campaign"),
        ({"campaign_rates": {"card_testing": -1.0}}, "campaign rates"),
        ({"rate": 0.0}, "rate"),
    ],
)
def test_sim_config__rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**changes)


def test_sim_config__rate_of_scales_and_defaults() -> None:
    config = SimConfig(campaign_scale=2.0).with_campaign_rates(mule_ring=3.0)
    assert config.rate_of(CampaignType.mule_ring) == 6.0
    assert config.rate_of("card_testing") == 2.0 * SimConfig().rate_of("card_testing")
    assert SimConfig(customers=20_000).n_employees == 100
    assert SimConfig(customers=1_000).n_employees == 40
