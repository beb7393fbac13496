"""A small simulated day shared by the simulator tests (built once per test session)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.sim import GroundTruth, SimConfig, World, build_world, simulate


@dataclass(frozen=True)
class SmallRun:
    config: SimConfig
    world: World
    frames: dict[Domain, pl.DataFrame]
    truth: GroundTruth

    def events(self) -> pl.DataFrame:
        """Every event of every domain, header columns and a few shared ones, in one frame."""
        shared = [
            "event_id",
            "ts",
            "domain",
            "label",
            "label_detail",
            "user_id",
            "account_id",
            "card_id",
            "device_id",
            "src_ip",
            "dst_ip",
            "merchant_id",
            "lat",
            "lon",
            "country",
        ]
        return pl.concat([frame.select(shared) for frame in self.frames.values()])


SMALL = SimConfig(customers=1_000, duration_s=86_400.0, seed=11, chunk_size=20_000)


@pytest.fixture(scope="session")
def small_world() -> World:
    return build_world(SMALL)


@pytest.fixture(scope="session")
def small_run(small_world: World) -> SmallRun:
    result = simulate(SMALL, collect=True, world=small_world)
    assert result.frames is not None
    return SmallRun(config=SMALL, world=small_world, frames=result.frames, truth=result.truth)
