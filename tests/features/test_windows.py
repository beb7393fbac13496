"""Window counts and sums: bucket boundaries, exact sums, amount statistics, channels."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.features.config import DomainFeatures, FeatureConfig, KeyFeatures, SumFeatures, Window
from finsecure.features.step import FeatureStep
from finsecure.features.windows import channel_values
from finsecure.pipeline.batch import Batch
from tests.features.helpers import EPOCH, canonical_frame

_CONFIG = FeatureConfig(
    windows=(Window("10s", 10, 5), Window("1d", 86_400, 3_600)),
    domains={
        Domain.payment: DomainFeatures(
            keys=(
                KeyFeatures(
                    "card_id",
                    count_windows=("10s", "1d"),
                    sums=(SumFeatures("amount", "sum_amount", ("10s", "1d")),),
                    amount_stats=True,
                ),
            )
        )
    },
    entity_ttl_s=86_400,
)


def _payments(seconds_amounts: list[tuple[float, float | None]], card: str | None = "c") -> pl.DataFrame:
    rows = [
        {"ts": EPOCH + dt.timedelta(seconds=s), "card_id": card, "amount": amount}
        for s, amount in seconds_amounts
    ]
    return canonical_frame(Domain.payment, rows)


def _features(frame: pl.DataFrame, config: FeatureConfig = _CONFIG) -> pl.DataFrame:
    return FeatureStep(config).process(Batch(Domain.payment, frame, source="test")).frame


def test_windows__count_follows_bucket_boundaries() -> None:
    # 10 s window in 5 s buckets: at t=10.0 the window holds buckets 1..2 (5 s..14.99 s).
    out = _features(_payments([(0, 1.0), (4.9, 1.0), (9.9, 1.0), (10.0, 1.0), (19.9, 1.0)]))
    assert out["card_id__count_10s"].to_list() == [1, 2, 3, 2, 2]
    assert out["card_id__count_1d"].to_list() == [1, 2, 3, 4, 5]


def test_windows__sum_is_exact_after_a_huge_amount_leaves() -> None:
    """A running total that subtracted floats would be left with rounding noise here."""
    out = _features(_payments([(0, 1e12), (1, 0.01), (11, 0.07), (12, 0.1)]))
    # At 11 s the window holds 5 s..14.99 s: both earlier payments have left.
    assert out["card_id__sum_amount_10s"].to_list() == [1e12, 1e12 + 0.01, 0.07, 0.07 + 0.1]


def test_windows__null_amount_counts_but_adds_nothing() -> None:
    out = _features(_payments([(0, None), (1, 5.0), (2, None)]))
    assert out["card_id__count_10s"].to_list() == [1, 2, 3]
    assert out["card_id__sum_amount_10s"].to_list() == [0.0, 5.0, 5.0]
    assert out["card_id__mean_amount"].to_list() == [None, None, 5.0]
    assert out["card_id__amount_to_mean"].to_list() == [None, None, None]


def test_windows__amount_statistics_use_earlier_amounts_only() -> None:
    out = _features(_payments([(0, 10.0), (1, 30.0), (2, 20.0), (3, 40.0)]))
    assert out["card_id__mean_amount"].to_list() == [None, 10.0, 20.0, 20.0]
    assert out["card_id__std_amount"].to_list()[:2] == [None, None]
    assert out["card_id__std_amount"][2] == pytest.approx(10.0)
    assert out["card_id__amount_to_mean"].to_list() == [None, 3.0, 1.0, 2.0]
    assert out["card_id__amount_zscore"][3] == pytest.approx((40 - 20) / (200 / 3) ** 0.5)


def test_windows__zscore_is_null_when_earlier_amounts_are_equal() -> None:
    out = _features(_payments([(0, 0.1), (1, 0.1), (2, 0.1), (3, 5.0)]))
    assert out["card_id__std_amount"].to_list() == [None, None, 0.0, 0.0]
    assert out["card_id__amount_zscore"].to_list() == [None, None, None, None]


def test_windows__null_key_rows_get_null_features() -> None:
    frame = pl.concat([_payments([(0, 1.0)]), _payments([(1, 2.0)], card=None)])
    out = _features(frame)
    assert out["card_id__count_1d"].to_list() == [1, None]
    assert out["card_id__secs_since_last"].to_list() == [None, None]


def test_channel_values__failed_logins_and_connections() -> None:
    auth = pl.DataFrame(
        {
            "action": ["login", "login", "logout", None],
            "outcome": ["failure", "success", "failure", "failure"],
        }
    )
    assert channel_values(Domain.auth, auth, ("failed_login",), _CONFIG)[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    network = pl.DataFrame(
        {
            "conn_state": ["SF", "S0", None, "REJ"],
            "bytes_out": [1, None, 3, None],
            "bytes_in": [10, 20, None, None],
        }
    )
    values = channel_values(Domain.network, network, ("failed_conn", "bytes"), _CONFIG)
    assert values[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert values[1].tolist() == [11.0, 20.0, 3.0, 0.0]


def test_feature_config__refuses_windows_over_64_buckets() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        FeatureConfig(windows=(Window("2h", 7_200, 60),), domains={})
