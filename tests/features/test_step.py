"""The feature step as a pipeline step: columns, row order, snapshots, eviction, late events."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pytest

from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features import FEATURE_COLUMNS, FEATURE_DESCRIPTIONS, FeatureConfig, FeatureStep
from finsecure.features.config import DistinctFeatures, DomainFeatures, KeyFeatures
from finsecure.features.entity_index import load_arrays, save_arrays
from finsecure.pipeline.batch import Batch
from tests.features.helpers import EPOCH, assert_frames_match, canonical_frame, run_both


def _batch(domain: Domain, rows: list[dict[str, object]], seq: int = 0) -> Batch:
    return Batch(domain, canonical_frame(domain, rows), source="test", seq=seq)


def _payments(start_s: int, count: int, step_s: int = 60) -> list[dict[str, object]]:
    return [
        {
            "ts": EPOCH + dt.timedelta(seconds=start_s + n * step_s),
            "card_id": f"card-{n % 7}",
            "user_id": f"user-{n % 3}",
            "merchant_id": f"m-{n % 5}",
            "amount": float(n % 11) + 0.25,
            "lat": 48.0 + n % 3,
            "lon": 2.0,
            "country": "FR",
        }
        for n in range(count)
    ]


@pytest.mark.parametrize("domain", list(Domain))
def test_feature_step__adds_the_listed_columns_and_keeps_canonical_ones(domain: Domain) -> None:
    batch = _batch(domain, [{"ts": EPOCH, "user_id": "u", "src_ip": "10.0.0.1"}, {"ts": EPOCH}])
    out = FeatureStep().process(batch).frame
    canonical = arrow_schema(domain).names
    assert out.columns == [*canonical, *FEATURE_COLUMNS[domain]]
    assert out.select(canonical).equals(batch.frame)
    assert list(FEATURE_DESCRIPTIONS[domain]) == list(FEATURE_COLUMNS[domain])
    assert all(text.endswith(")") or text.endswith(".") for text in FEATURE_DESCRIPTIONS[domain].values())


def test_feature_step__keeps_row_order_of_unsorted_batch() -> None:
    rows = _payments(0, 5)
    rows.reverse()
    out = FeatureStep().process(_batch(Domain.payment, rows)).frame
    assert out["event_id"].to_list() == [f"e{n}" for n in range(5)]
    # Row 0 is the newest event of card-4 (its only one); row 4 is card-0's first.
    assert out["card_id__count_24h"].to_list() == [1, 1, 1, 1, 1]
    assert out["user_id__count_24h"].to_list() == [2, 2, 1, 1, 1]


def test_feature_step__empty_batch_and_unconfigured_domain() -> None:
    step = FeatureStep(FeatureConfig(domains={Domain.auth: DomainFeatures(keys=(KeyFeatures("user_id"),))}))
    empty = step.process(_batch(Domain.auth, []))
    assert empty.frame.height == 0
    assert empty.frame.columns[-1] == "event__late"
    payment = _batch(Domain.payment, _payments(0, 2))
    assert step.process(payment) is payment
    assert step.columns(Domain.payment) == ()


def test_feature_step__reprocessing_replaces_old_feature_columns() -> None:
    step = FeatureStep()
    first = step.process(_batch(Domain.payment, _payments(0, 3)))
    again = step.process(first)
    assert again.frame.columns == first.frame.columns
    assert again.frame["card_id__count_24h"].to_list() == [2, 2, 2]


def test_feature_step__late_rows_are_flagged_and_counted() -> None:
    step = FeatureStep()
    step.process(_batch(Domain.payment, _payments(10_000, 1)))
    late = _payments(10_000 - 200, 1) + _payments(10_000 - 400, 1) + _payments(10_000 - 7_200, 1)
    out = step.process(_batch(Domain.payment, late, seq=1)).frame
    # 200 s late: within the 300 s tolerance. 400 s: past it. 2 h: past the 1 h maximum delay.
    assert out["event__late"].to_list() == [False, True, True]
    assert step.late_events == 2


def test_feature_step__snapshot_restore_continues_exactly() -> None:
    rows = _payments(0, 400, step_s=3_600)
    batches = [_batch(Domain.payment, rows[n : n + 50], seq=n) for n in range(0, 400, 50)]
    straight = FeatureStep()
    expected = [straight.process(batch).frame for batch in batches]
    resumed = FeatureStep()
    for batch in batches[:3]:
        resumed.process(batch)
    data = resumed.snapshot()
    restored = FeatureStep()
    restored.restore(data)
    for batch, want in zip(batches[3:], expected[3:], strict=True):
        assert_frames_match(restored.process(batch).frame, want)
    assert restored.live_entities() == straight.live_entities()


def test_feature_step__restore_refuses_other_settings_and_garbage() -> None:
    step = FeatureStep()
    step.process(_batch(Domain.payment, _payments(0, 3)))
    data = step.snapshot()
    other = FeatureStep(dataclasses.replace(FeatureConfig(), late_tolerance_s=10))
    with pytest.raises(ValueError, match="different feature settings"):
        other.restore(data)
    with pytest.raises(ValueError, match="not a feature snapshot"):
        FeatureStep().restore(b"not a snapshot")


def test_feature_step__eviction_bounds_state_and_changes_nothing() -> None:
    config = FeatureConfig(
        windows=FeatureConfig().windows,
        domains={Domain.payment: DomainFeatures(keys=(KeyFeatures("card_id"),))},
        entity_ttl_s=30 * 86_400,
        evict_every_s=0,
    )
    batches = []
    for day in range(0, 120, 3):  # a fresh set of cards every 3 days
        rows = [
            {"ts": EPOCH + dt.timedelta(days=day, minutes=n), "card_id": f"d{day}-{n}"} for n in range(20)
        ]
        batches.append(canonical_frame(Domain.payment, rows))
    step = run_both(config, Domain.payment, batches)
    live = step.live_entities()["payment"]["card_id"]
    assert live == 12 * 20  # cards of the last 30 days + 1 h before the last batch, and its own; not 800
    assert step._engines[Domain.payment].indexes["card_id"].capacity <= 256


def test_feature_step__missing_time_is_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match="no 'ts' column"):
        FeatureStep().process(Batch(Domain.payment, pl.DataFrame({"card_id": ["c"]}), source="test"))


def test_feature_step__handbook_slice_matches_reference(datasets_dir: Path) -> None:
    """Real data: the first days of the fraud-handbook stream, against the reference."""
    raw = pl.read_csv(
        datasets_dir / "fraud-handbook" / "transactions_2018-04-01_to_2018-08-31.csv.gz",
        n_rows=3_000,
        schema_overrides={"CUSTOMER_ID": pl.String, "TERMINAL_ID": pl.String},
    )
    rows = raw.select(
        pl.col("TX_DATETIME").str.to_datetime("%Y-%m-%d %H:%M:%S", time_zone="UTC").alias("ts"),
        pl.col("CUSTOMER_ID").alias("user_id"),
        pl.col("TERMINAL_ID").alias("merchant_id"),
        pl.col("TX_AMOUNT").alias("amount"),
    ).to_dicts()
    frame = canonical_frame(Domain.payment, rows)
    batches = [frame.slice(start, 1_000) for start in range(0, frame.height, 1_000)]
    run_both(FeatureConfig(), Domain.payment, batches, restore_at=2)


def _varied_payments(count: int, seed: int) -> pl.DataFrame:
    """Payments over a few days with every payment key, places, countries and some late rows."""
    rng = np.random.default_rng(seed)
    clock = np.cumsum(rng.choice([0, 1, 30, 600, 3_600, 20_000], size=count))
    jitter = rng.choice([0, 0, 0, -200, -400, -5_000], size=count)
    rows = [
        {
            "ts": EPOCH + dt.timedelta(seconds=int(max(clock[n] + jitter[n], 0))),
            "card_id": f"card-{rng.integers(0, 9)}",
            "user_id": f"user-{rng.integers(0, 4)}" if n % 5 else None,
            "account_id": f"acct-{rng.integers(0, 3)}",
            "merchant_id": f"m-{rng.integers(0, 6)}",
            "device_id": f"dev-{rng.integers(0, 3)}" if n % 3 else None,
            "country": ["FR", "GB", "US"][int(rng.integers(0, 3))],
            "amount": float(rng.integers(0, 100_000)) / 100 if n % 7 else None,
            "lat": 48.0 + float(rng.integers(0, 3)),
            "lon": 2.0,
        }
        for n in range(count)
    ]
    return canonical_frame(Domain.payment, rows)


def test_feature_step__threads_compute_the_same_as_the_reference() -> None:
    """Every batch goes through the thread pool (threshold lowered), keys and pairs side by side."""
    frame = _varied_payments(240, seed=3)
    batches = [frame.slice(start, 60) for start in range(0, frame.height, 60)]
    with mock.patch("finsecure.features.step._PARALLEL_ROWS", 1):
        step = run_both(FeatureConfig(evict_every_s=0), Domain.payment, batches, restore_at=2, threads=3)
    step.close()


def test_feature_step__threads_do_not_change_big_batches() -> None:
    frame = _varied_payments(10_000, seed=5)
    one, two = FeatureStep(threads=1), FeatureStep(threads=2)
    for start in (0, 5_000):
        batch = Batch(Domain.payment, frame.slice(start, 5_000), source="test")
        assert two.process(batch).frame.equals(one.process(batch).frame)
    assert two.live_entities() == one.live_entities()
    two.close()
    with pytest.raises(ValueError, match="threads"):
        FeatureStep(threads=0)


def test_feature_step__restore_refuses_an_older_snapshot_version() -> None:
    """Version 1 snapshots hold keys hashed another way: restoring one would silently lose entities."""
    step = FeatureStep()
    step.process(_batch(Domain.payment, _payments(0, 3)))
    arrays = load_arrays(step.snapshot())
    meta = json.loads(arrays["meta"].tobytes())
    meta["version"] = 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with pytest.raises(ValueError, match="version 1 is not supported"):
        FeatureStep().restore(save_arrays(arrays))


def test_feature_step__a_failing_task_fails_the_batch_on_the_calling_thread() -> None:
    frame = _varied_payments(3_000, seed=9)
    step = FeatureStep(threads=2)
    with (
        mock.patch("finsecure.features.step.NoveltyState.run", side_effect=RuntimeError("pair broke")),
        pytest.raises(RuntimeError, match="pair broke"),
    ):
        step.process(Batch(Domain.payment, frame, source="test"))
    step.close()


def test_feature_step__entity_cap_bounds_state_and_matches_reference() -> None:
    # A scanner-like stream: a new source address every row (never idle long enough for the TTL), each
    # probing a few hosts; sources come back, some after being dropped by the cap of 50 per key.
    config = FeatureConfig(
        windows=FeatureConfig().windows,
        domains={
            Domain.network: DomainFeatures(
                keys=(KeyFeatures("src_ip", count_windows=("5m", "1h"), max_entities=50),),
                distinct=(DistinctFeatures("src_ip", "dst_ip", "5m"),),
            )
        },
        evict_every_s=0,
    )
    rows = [
        {
            "ts": EPOCH + dt.timedelta(seconds=n),
            "src_ip": f"203.0.113.{(n * 7) % 180}",
            "dst_ip": f"10.0.0.{n % 5}",
        }
        for n in range(600)
    ]
    batches = [canonical_frame(Domain.network, rows[start : start + 20]) for start in range(0, 600, 20)]
    step = run_both(config, Domain.network, batches)
    engine = step._engines[Domain.network]
    assert engine.capped_out > 0
    assert step.live_entities()["network"]["src_ip"] <= 50 + 20  # the cap, plus one batch's new sources
    assert engine.indexes["src_ip"].capacity <= 128


def test_feature_config__entity_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entities"):
        FeatureConfig(max_entities=0)
    with pytest.raises(ValueError, match="max_entities of 'card_id'"):
        FeatureConfig(
            domains={Domain.payment: DomainFeatures(keys=(KeyFeatures("card_id", max_entities=0),))}
        )
