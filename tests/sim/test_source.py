from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from pathlib import Path

import polars as pl
import pytest

from finsecure.event.schemas import ARROW_SCHEMAS, Domain, conform_batch, validate_rows
from finsecure.pipeline.batch import Source, SourceChunk
from finsecure.sim import SimConfig, SimulatorSource, World, load_truth, simulate

from .conftest import SMALL, SmallRun

SHORT = SimConfig(customers=1_000, duration_s=4 * 3_600.0, seed=21, chunk_size=3_000)


def _collect(chunks: list[SourceChunk]) -> dict[Domain, pl.DataFrame]:
    frames: dict[Domain, list[pl.DataFrame]] = {}
    for chunk in chunks:
        frames.setdefault(chunk.domain, []).append(chunk.frame)
    return {d: pl.concat(parts) for d, parts in frames.items()}


@pytest.fixture(scope="module")
def short_chunks(small_world: World) -> list[SourceChunk]:
    return list(SimulatorSource(SHORT, world=small_world).chunks())


def test_simulator_source__is_a_source_of_conforming_chunks(short_chunks: list[SourceChunk]) -> None:
    assert isinstance(SimulatorSource(SHORT), Source)
    for chunk in short_chunks:
        assert 0 < chunk.frame.height <= SHORT.chunk_size
        assert chunk.frame.columns == ARROW_SCHEMAS[chunk.domain].names
        assert (chunk.frame["domain"] == chunk.domain.value).all()
        batch = conform_batch(chunk.domain, chunk.frame.to_arrow())
        assert batch.num_rows == chunk.frame.height
        assert chunk.rejects is None


def test_simulator_source__each_domain_stream_is_sorted_with_unique_ids(
    short_chunks: list[SourceChunk],
) -> None:
    frames = _collect(short_chunks)
    assert set(frames) == set(Domain)
    for domain, frame in frames.items():
        assert frame["ts"].is_sorted(), domain
        assert frame["event_id"].n_unique() == frame.height
    ids = pl.concat([f["event_id"] for f in frames.values()])
    assert ids.n_unique() == len(ids)
    payments = frames[Domain.payment]
    assert payments["transaction_id"].n_unique() == payments.height
    start, end = SHORT.start, SHORT.end
    assert all(f["ts"].min() >= start and f["ts"].max() < end for f in frames.values())


def test_simulator_source__chunks_come_in_time_order_across_domains(short_chunks: list[SourceChunk]) -> None:
    firsts = [chunk.frame["ts"][0] for chunk in short_chunks]
    lasts = [chunk.frame["ts"][-1] for chunk in short_chunks]
    # A chunk never starts before an earlier chunk's window began: windows advance monotonically.
    window_start = list(itertools.accumulate(firsts, max))
    assert all(last >= first for first, last in zip(firsts, lasts, strict=True))
    assert max(ws - f for ws, f in zip(window_start, firsts, strict=True)) < dt.timedelta(hours=4)


def test_simulator_source__chunking_does_not_change_the_rows(
    small_world: World, short_chunks: list[SourceChunk]
) -> None:
    coarse = _collect(list(SimulatorSource(SHORT, chunk_size=50_000, world=small_world).chunks()))
    fine = _collect(short_chunks)
    assert all(coarse[d].equals(fine[d]) for d in Domain)


def test_simulate__background_only_run_has_no_campaigns(small_world: World) -> None:
    result = simulate(dataclasses.replace(SHORT, campaign_scale=0.0), collect=True, world=small_world)
    assert result.frames is not None
    assert result.truth.campaigns == ()
    assert result.labelled == 0
    assert all((frame["label"] == 0).all() for frame in result.frames.values())
    assert set(result.frames) == set(Domain)


def test_simulate__same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, small_world: World) -> None:
    config = dataclasses.replace(SHORT, duration_s=3_600.0)
    outputs = {}
    for name, seed in (("a", 21), ("b", 21), ("c", 22)):
        for suffix in (".parquet", ".ndjson.gz"):
            target = tmp_path / f"{name}{suffix}"
            simulate(dataclasses.replace(config, seed=seed), target, world=small_world)
            files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
            files.append(target.with_name(target.name + ".truth.json"))
            outputs[name, suffix] = [
                (
                    p.relative_to(tmp_path / (name + suffix))
                    if p.is_relative_to(tmp_path / (name + suffix))
                    else p.name.removeprefix(name),
                    p.read_bytes(),
                )
                for p in files
            ]
    for suffix in (".parquet", ".ndjson.gz"):
        assert outputs["a", suffix] == outputs["b", suffix]
        assert outputs["a", suffix] != outputs["c", suffix]


def test_simulate__truth_file_round_trips(tmp_path: Path, small_world: World) -> None:
    target = tmp_path / "run.ndjson"
    result = simulate(dataclasses.replace(SHORT, duration_s=3_600.0), target, world=small_world)
    assert result.truth_path == tmp_path / "run.ndjson.truth.json"
    loaded = load_truth(target)
    assert loaded.campaigns == result.truth.campaigns
    assert loaded.run["seed"] == SHORT.seed
    assert loaded.run["events"] == result.events
    assert result.events == len(target.read_bytes().splitlines()) == sum(result.events_by_domain.values())


def test_simulate__refuses_live_mode() -> None:
    with pytest.raises(ValueError, match="live mode"):
        simulate(SimConfig(realtime=True))


def test_simulator_source__realtime_starts_now_with_every_domain_and_recurring_campaigns(
    small_world: World,
) -> None:
    config = dataclasses.replace(
        SMALL, realtime=True, rate=3_000.0, campaign_period_s=8.0, realtime_campaign_span_s=4.0
    )
    before = dt.datetime.now(dt.UTC)
    source = SimulatorSource(config, world=small_world)
    seen: dict[Domain, dt.datetime] = {}
    campaigns: list[dt.datetime] = []
    for chunk in source.chunks():
        first = chunk.frame["ts"][0]
        seen.setdefault(chunk.domain, first)
        campaigns.extend(chunk.frame.filter(pl.col("label") == 1)["ts"].to_list())
        if first - before > dt.timedelta(seconds=20):
            source.close()
    assert set(seen) == set(Domain)
    assert all(dt.timedelta(0) <= ts - before < dt.timedelta(seconds=2) for ts in seen.values())
    assert campaigns
    assert min(campaigns) - before < dt.timedelta(seconds=10)
    assert max(campaigns) - min(campaigns) > dt.timedelta(seconds=8), "campaigns recur each period"
    assert len({c.campaign_type for c in source.truth.campaigns}) >= 4
    assert source.truth.run["realtime"] is True


def test_small_run__all_four_domains_and_volumes(small_run: SmallRun) -> None:
    sizes = {d: f.height for d, f in small_run.frames.items()}
    assert set(sizes) == set(Domain)
    assert sizes[Domain.network] > sizes[Domain.payment] > 0
    assert sizes[Domain.cloud] > 0


def test_simulator_source__pace_keeps_live_time_near_the_clock(small_world: World) -> None:
    config = dataclasses.replace(SMALL, realtime=True, rate=2_000.0, slice_s=0.2)
    source = SimulatorSource(config, world=small_world, pace=True)
    started = time.monotonic()
    ahead: list[float] = []
    for chunk in source.chunks():
        ahead.append((chunk.frame["ts"][0] - dt.datetime.now(dt.UTC)).total_seconds())
        if time.monotonic() - started > 0.7:
            source.close()
    assert len(ahead) > 4
    assert max(ahead) < 0.3


def test_small_run__every_row_passes_the_row_rules(small_run: SmallRun) -> None:
    for domain, frame in small_run.frames.items():
        assert validate_rows(domain, frame.to_arrow()).rejected == 0, domain
        assert conform_batch(domain, frame.to_arrow()).num_rows == frame.height
