from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from finsecure.event.schemas import Domain, conform_batch
from finsecure.sim import SimConfig, World
from finsecure.sim.background import Background

T0 = 1_714_953_600_000_000  # 2024-05-06T00:00:00Z, a Monday
HOUR = 3_600_000_000


def _frames(
    world: World, config: SimConfig, hours: float, *, flat: bool = False
) -> dict[Domain, pl.DataFrame]:
    background = Background(world, config, flat=flat)
    return background.frames(
        lambda d: np.random.default_rng(list(Domain).index(d)), T0, T0 + int(hours * HOUR)
    )


@pytest.fixture(scope="module")
def day(small_world: World) -> dict[Domain, pl.DataFrame]:
    return _frames(small_world, SimConfig(customers=1_000, seed=11), 24)


def test_background__frames_conform_and_are_unlabelled(day: dict[Domain, pl.DataFrame]) -> None:
    for domain, frame in day.items():
        assert frame.height > 100, domain
        batch = conform_batch(domain, frame.with_columns(event_id=pl.lit("x")).to_arrow())
        assert batch.num_rows == frame.height
        assert (frame["label"] == 0).all()
        assert frame["label_detail"].is_null().all()
        assert frame["ts"].is_sorted()


def test_background__follows_the_daily_cycle(day: dict[Domain, pl.DataFrame]) -> None:
    hours = day[Domain.payment]["ts"].dt.hour().to_numpy()
    night = int(((hours >= 1) & (hours < 5)).sum())
    noon = int(((hours >= 10) & (hours < 14)).sum())
    assert noon > 5 * night
    office = day[Domain.cloud].filter(pl.col("user_id").is_not_null())["ts"].dt.hour().to_numpy()
    assert ((office >= 6) & (office < 18)).mean() > 0.8


def test_background__noise_is_present(day: dict[Domain, pl.DataFrame]) -> None:
    auth = day[Domain.auth]
    assert auth.filter(pl.col("outcome") == "failure").height > 0
    assert set(auth["action"].unique().to_list()) >= {"login", "logout", "mfa_challenge"}
    payment = day[Domain.payment]
    assert set(payment["channel"].unique().to_list()) >= {"pos", "ecommerce", "transfer", "instant_transfer"}
    assert (
        payment["card_id"].is_null()
        == payment["channel"].is_in(["transfer", "instant_transfer", "direct_debit"])
    ).all()
    cloud = day[Domain.cloud]
    assert cloud.filter(pl.col("error_code") == "AccessDenied").height > 0
    network = day[Domain.network]
    assert set(network["direction"].unique().to_list()) == {"inbound", "outbound", "internal"}
    assert network.filter(pl.col("conn_state") == "S0").height > 0


def test_background__flat_mode_hits_the_requested_rate(small_world: World) -> None:
    config = SimConfig(customers=1_000, seed=11, realtime=True, rate=5_000.0)
    frames = _frames(small_world, config, 60 / 3_600, flat=True)
    total = sum(frame.height for frame in frames.values())
    assert 0.85 * 300_000 < total < 1.15 * 300_000
    assert all(frame.height > 0 for frame in frames.values())
