"""The simulator as a stream source, and `simulate` to write a whole run to a file.

Generation walks through simulated time in slices. For each slice it draws the background of every
domain (`finsecure.sim.background`), stages the campaigns that start in it (`finsecure.sim.campaigns`),
merges in rows carried over from earlier slices (a logout after a sign-in, a campaign's later steps),
then cuts the slice into time windows and yields, window by window, one chunk per domain. So chunks come
in time order across domains (to within one window), each domain's rows are sorted by ``ts``, and no
chunk holds more than ``chunk_size`` rows. Event ids are numbered per domain in that order.

Everything random is drawn from generators seeded by ``(seed, slice number, domain)`` or
``(seed, campaign number)``, so the same configuration gives the same rows however they are chunked.

Example
-------
>>> from finsecure.sim.config import SimConfig
>>> source = SimulatorSource(SimConfig(customers=1_000, duration_s=600, seed=5, chunk_size=5_000))
>>> chunks = list(source.chunks())
>>> sorted({chunk.domain.value for chunk in chunks})
['auth', 'cloud', 'network', 'payment']
>>> all(chunk.frame.height <= 5_000 for chunk in chunks), len(source.truth.campaigns) == 8
(True, True)
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Source, SourceChunk
from finsecure.sim.background import US, Background
from finsecure.sim.campaigns import PlannedCampaign, plan_campaigns, realtime_plan, stage
from finsecure.sim.config import SimConfig
from finsecure.sim.frames import CAMPAIGN_COLUMN
from finsecure.sim.truth import CampaignTruth, GroundTruth, truth_path, write_truth
from finsecure.sim.world import World, build_world
from finsecure.sim.writers import open_writer

__all__ = ["SimProgress", "SimulationResult", "SimulatorSource", "simulate"]

DOMAIN_ORDER: tuple[Domain, ...] = (Domain.network, Domain.cloud, Domain.auth, Domain.payment)
_LETTER = {Domain.network: "n", Domain.cloud: "c", Domain.auth: "a", Domain.payment: "p"}
_SLICE_CHOICES_S = (60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600)
_TARGET_SLICE_ROWS = 300_000
_REALTIME_SLICE_S = 1.0
_KEEP_LIVE_TRUTH = 10_000


@dataclass(frozen=True, slots=True)
class SimProgress:
    """Where a run is: simulated time reached (seconds since its start), and rows so far."""

    simulated_s: float
    total_s: float
    events: int


@dataclass(slots=True)
class _OpenCampaign:
    truth: CampaignTruth
    expected: int
    event_ids: list[tuple[int, str]]
    """(ts in µs, event id), sorted at the end."""


class SimulatorSource(Source):
    """The bank-day simulator as a `Source`: canonical frames, one domain per chunk, in time order.

    Parameters
    ----------
    config
        What to simulate; by default ``SimConfig()``.
    realtime
        Live mode (overrides ``config.realtime``): ``ts`` follows the wall clock from the first chunk on
        and the stream never ends. The caller paces consumption; if it falls more than two slices behind
        real time, the source skips ahead (dropping the missed time) so that ``ts`` stays near now.
    rate
        Live mode: background events per second (overrides ``config.rate``; default 2,000).
    chunk_size
        Largest chunk (overrides ``config.chunk_size``).
    world
        A world already built for this configuration (to share it between sources).
    pace
        Live mode: wait until the wall clock reaches each slice before yielding it, for callers that do not
        throttle themselves (blocks the calling thread; run it in a worker thread under asyncio).

    Live mode, in practice: ``SimulatorSource(SimConfig.live(rate=200), pace=True)`` sizes the world so
    each customer keeps a realistic pace, and yields about one slice (one second) of every domain per
    second; every enabled campaign type starts once per ``campaign_period_s``, the first after two seconds.
    """

    source_id = "sim"

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        realtime: bool | None = None,
        rate: float | None = None,
        chunk_size: int | None = None,
        world: World | None = None,
        pace: bool = False,
    ) -> None:
        config = config or SimConfig()
        if realtime is not None:
            config = dataclasses.replace(config, realtime=realtime)
        if rate is not None:
            config = dataclasses.replace(config, rate=rate)
        if chunk_size is not None:
            config = dataclasses.replace(config, chunk_size=chunk_size)
        if config.realtime and config.rate is None:
            config = dataclasses.replace(config, rate=2_000.0)
        self.config = config
        self.pace = pace
        self._world = world
        self._closed = False
        self._done: collections.deque[CampaignTruth] | list[CampaignTruth] = (
            collections.deque(maxlen=_KEEP_LIVE_TRUTH) if config.realtime else []
        )
        self._open: dict[int, _OpenCampaign] = {}
        self.events_by_domain: dict[Domain, int] = dict.fromkeys(DOMAIN_ORDER, 0)

    # ------------------------------------------------------------------ public

    @property
    def world(self) -> World:
        """The simulated world (built on first use)."""
        if self._world is None:
            self._world = build_world(self.config)
        return self._world

    @property
    def truth(self) -> GroundTruth:
        """Campaigns whose every event has been yielded so far (all of them once a finite run ends)."""
        campaigns = sorted(self._done, key=lambda c: (c.start, c.campaign_id))
        return GroundTruth(run=self.run_info(), campaigns=tuple(campaigns))

    def run_info(self) -> dict[str, object]:
        """What describes this run in its ground truth (no wall-clock values, so reruns match)."""
        c = self.config
        info: dict[str, object] = {
            "scenario": c.scenario,
            "fingerprint": c.fingerprint(),
            "seed": c.seed,
            "customers": c.customers,
            "employees": c.n_employees,
            "realtime": c.realtime,
            "events": sum(self.events_by_domain.values()),
            "events_by_domain": {d.value: n for d, n in self.events_by_domain.items()},
        }
        if not c.realtime:
            info["start"] = _iso(c.start)
            info["end"] = _iso(c.end)
        return info

    def chunks(self) -> Iterator[SourceChunk]:
        """Yield chunks until the run's end (forever in live mode, until `close`)."""
        world = self.world
        config = self.config
        background = Background(world, config, flat=config.realtime)
        if config.realtime:
            origin = int(time.time() * 1_000) * 1_000
            slice_us = int((config.slice_s or _REALTIME_SLICE_S) * US)
            end = None
            planned: list[PlannedCampaign] = []
        else:
            origin = int(config.start.timestamp() * US)
            end = origin + int(config.duration_s * US)
            slice_us = (
                int(config.slice_s * US) if config.slice_s else _auto_slice_us(background.events_per_day)
            )
            planned = plan_campaigns(config, origin, end)
        run = config.fingerprint() if not config.realtime else f"live{origin // 1_000:x}"
        prefixes = {d: f"{run}-{_LETTER[d]}" for d in DOMAIN_ORDER}
        seq = dict.fromkeys(DOMAIN_ORDER, 0)
        pending: dict[Domain, list[pl.DataFrame]] = {d: [] for d in DOMAIN_ORDER}
        next_plan, next_period = 0, 0
        t0 = origin
        index = 0
        while not self._closed and (end is None or t0 < end):
            if config.realtime:
                now = int(time.time() * US)
                if self.pace and t0 > now:
                    time.sleep((t0 - now) / US)
                    now = int(time.time() * US)
                if now - t0 > 2 * slice_us:  # the caller fell behind: skip ahead, keep carried rows in order
                    shift = now - t0
                    t0 += shift
                    origin += shift
                    pending = {d: [_shift(f, shift) for f in frames] for d, frames in pending.items()}
                    planned = [dataclasses.replace(p, start_us=p.start_us + shift) for p in planned]
            t1 = t0 + slice_us if end is None else min(t0 + slice_us, end)
            frames = background.frames(_rng_factory(config.seed, index), t0, t1)
            if config.realtime:
                while origin + next_period * int(config.campaign_period_s * US) < t1:
                    planned.extend(realtime_plan(config, origin, next_period))
                    next_period += 1
            while next_plan < len(planned) and planned[next_plan].start_us < t1:
                staged = stage(planned[next_plan], world, seed=config.seed, tenant=config.tenant)
                expected = 0
                for domain, frame in staged.frames.items():
                    pending[domain].append(frame)
                    expected += frame.height
                self._open[staged.plan.cid] = _OpenCampaign(staged.truth, expected, [])
                next_plan += 1
            if config.realtime:
                planned, next_plan = planned[next_plan:], 0
            released: dict[Domain, pl.DataFrame | None] = {}
            for domain in DOMAIN_ORDER:
                frame = frames[domain]
                late = frame.filter(pl.col("ts") >= _ts(t1)) if _last_us(frame) >= t1 else None
                if late is not None:
                    frames[domain] = frame.filter(pl.col("ts") < _ts(t1))
                    if end is None or t1 < end:
                        late = late.filter(pl.col("ts") < _ts(end)) if end is not None else late
                        pending[domain].append(
                            late.with_columns(pl.lit(None, pl.Int32).alias(CAMPAIGN_COLUMN))
                        )
                released[domain], pending[domain] = _release(pending[domain], t1)
            yield from self._emit(frames, released, t0, t1, prefixes, seq)
            t0 = t1
            index += 1
        if end is not None and not self._closed:
            leftovers = [cid for cid, c in self._open.items() if len(c.event_ids) < c.expected]
            if leftovers:  # pragma: no cover - campaigns are fitted into the run
                raise RuntimeError(f"simulation ended with unfinished campaigns {leftovers}")

    def close(self) -> None:
        """Stop a live stream after the chunk being consumed."""
        self._closed = True

    # ------------------------------------------------------------------ internals

    def _emit(
        self,
        background: dict[Domain, pl.DataFrame],
        released: dict[Domain, pl.DataFrame | None],
        t0: int,
        t1: int,
        prefixes: dict[Domain, str],
        seq: dict[Domain, int],
    ) -> Iterator[SourceChunk]:
        """Cut one slice into time windows of at most ``chunk_size`` rows and yield its chunks in order."""
        size = self.config.chunk_size
        total = sum(f.height for f in background.values()) + sum(
            f.height for f in released.values() if f is not None
        )
        windows = max(1, math.ceil(total / size))
        cuts = [t0 + (t1 - t0) * k // windows for k in range(windows + 1)]
        cuts[0] = -(2**62)  # carried rows are never earlier than the slice, but never drop one that is
        cuts[-1] = t1
        bg_ts = {d: _epoch_us(f) for d, f in background.items()}
        rel_ts = {d: _epoch_us(f) for d, f in released.items() if f is not None}
        for w in range(windows):
            for domain in DOMAIN_ORDER:
                lo, hi = np.searchsorted(bg_ts[domain], [cuts[w], cuts[w + 1]], side="left")
                piece = background[domain].slice(int(lo), int(hi - lo))
                extra = released.get(domain)
                if extra is not None:
                    a, b = np.searchsorted(rel_ts[domain], [cuts[w], cuts[w + 1]], side="left")
                    if b > a:
                        piece = _insert(piece, extra.slice(int(a), int(b - a)))
                for start in range(0, piece.height, size):
                    chunk = self._finish(domain, piece.slice(start, size), prefixes[domain], seq)
                    yield SourceChunk(domain=domain, frame=chunk, offset_end=seq[domain])

    def _finish(
        self, domain: Domain, frame: pl.DataFrame, prefix: str, seq: dict[Domain, int]
    ) -> pl.DataFrame:
        """Give rows their event ids (and payments their transaction ids); record campaign events."""
        first = seq[domain]
        numbers = pl.int_range(first, first + frame.height, dtype=pl.Int64)
        ids = {"event_id": pl.format(prefix + "{}", numbers)}
        if domain is Domain.payment:
            ids["transaction_id"] = pl.format("tx" + prefix + "{}", numbers)
        frame = frame.with_columns(**ids)
        seq[domain] = first + frame.height
        self.events_by_domain[domain] += frame.height
        if CAMPAIGN_COLUMN in frame.columns:
            tagged = frame.filter(pl.col(CAMPAIGN_COLUMN).is_not_null()).select(
                CAMPAIGN_COLUMN, pl.col("ts").dt.epoch("us"), "event_id"
            )
            for cid, ts_us, event_id in tagged.iter_rows():
                campaign = self._open[cid]
                campaign.event_ids.append((ts_us, event_id))
                if len(campaign.event_ids) == campaign.expected:
                    ordered = tuple(e for _, e in sorted(campaign.event_ids))
                    self._done.append(dataclasses.replace(campaign.truth, event_ids=ordered))
                    del self._open[cid]
            frame = frame.drop(CAMPAIGN_COLUMN)
        return frame


def _rng_factory(seed: int, index: int) -> Callable[[Domain], np.random.Generator]:
    codes = {d: k for k, d in enumerate(DOMAIN_ORDER)}

    def rng_for(domain: Domain) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([seed, 1_000 + index, codes[domain]]))

    return rng_for


def _auto_slice_us(events_per_day: float) -> int:
    """A slice long enough to amortise per-slice work (about 300,000 rows), at most six hours."""
    per_s = max(events_per_day / 86_400.0, 1e-9)
    wanted = _TARGET_SLICE_ROWS / per_s
    fitting = [s for s in _SLICE_CHOICES_S if s <= wanted]
    return (fitting[-1] if fitting else _SLICE_CHOICES_S[0]) * US


def _ts(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _epoch_us(frame: pl.DataFrame) -> np.ndarray:
    return frame["ts"].dt.epoch("us").to_numpy()


def _last_us(frame: pl.DataFrame) -> int:
    if frame.height == 0:
        return -(2**62)
    return int(frame["ts"].dt.epoch("us")[-1])


def _shift(frame: pl.DataFrame, us: int) -> pl.DataFrame:
    return frame.with_columns(pl.col("ts") + pl.duration(microseconds=us))


def _release(frames: list[pl.DataFrame], t1: int) -> tuple[pl.DataFrame | None, list[pl.DataFrame]]:
    """Split carried rows into those due before ``t1`` (sorted) and the rest."""
    if not frames:
        return None, []
    merged = pl.concat(frames, how="vertical").sort("ts", maintain_order=True)
    cut = int(np.searchsorted(_epoch_us(merged), t1, side="left"))
    due = merged.slice(0, cut) if cut else None
    rest = [merged.slice(cut)] if cut < merged.height else []
    return due, rest


def _insert(base: pl.DataFrame, extra: pl.DataFrame) -> pl.DataFrame:
    """Merge a few sorted rows into a sorted frame (stable: base rows first on equal times)."""
    base = base.with_columns(pl.lit(None, pl.Int32).alias(CAMPAIGN_COLUMN))
    # A stable sort of two single-chunk frames costs ~60 ns a row; merging piece by piece costs far more.
    return pl.concat([base, extra], how="vertical").sort("ts", maintain_order=True)


# ====================================================================== whole runs


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a finite run produced.

    Attributes
    ----------
    config
        The configuration it ran with.
    events, events_by_domain
        Rows written (or collected), in total and per domain.
    labelled
        Rows belonging to campaigns (``label = 1``).
    truth
        Every staged campaign (also written to `truth_path` when there is an output file).
    out, truth_path
        The output and its ground truth, when written.
    elapsed_s
        Wall-clock seconds the run took.
    frames
        With ``collect=True``: every row, one frame per domain, in order.
    """

    config: SimConfig
    events: int
    events_by_domain: dict[str, int]
    labelled: int
    truth: GroundTruth
    out: Path | None
    truth_path: Path | None
    elapsed_s: float
    frames: dict[Domain, pl.DataFrame] | None = None

    @property
    def events_per_s(self) -> float:
        """Generation (and writing) rate of the run."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else math.inf


def simulate(
    config: SimConfig,
    out: Path | str | None = None,
    *,
    fmt: str | None = None,
    collect: bool = False,
    rate: float | None = None,
    progress: Callable[[SimProgress], None] | None = None,
    world: World | None = None,
) -> SimulationResult:
    """Run a finite simulation, writing it to ``out`` (and ``<out>.truth.json``) and/or collecting it.

    Parameters
    ----------
    config
        What to simulate (``realtime`` must be off).
    out
        Output file: ``.parquet`` (a directory dataset), ``.ndjson`` / ``.jsonl``, optionally ``.gz``.
    fmt
        ``"parquet"`` or ``"ndjson"`` when the name does not say.
    collect
        Also return every row in `SimulationResult.frames` (for tests and small runs).
    rate
        Emit at most this many events per wall-clock second (compressing simulated time); None: as fast
        as possible.
    progress
        Called after every chunk.
    world
        A world already built for ``config``.
    """
    if config.realtime:
        raise ValueError(
            "simulate() runs a finite simulation; use SimulatorSource(realtime=True) for live mode"
        )
    started = time.perf_counter()
    source = SimulatorSource(config, world=world)
    writer = open_writer(out, fmt) if out is not None else None
    collected: dict[Domain, list[pl.DataFrame]] = {d: [] for d in DOMAIN_ORDER}
    labelled = 0
    events = 0
    origin = config.start.timestamp()
    try:
        for chunk in source.chunks():
            if writer is not None:
                writer.write(chunk.domain, chunk.frame)
            if collect:
                collected[chunk.domain].append(chunk.frame)
            events += chunk.frame.height
            labelled += int(chunk.frame["label"].sum() or 0)
            if rate is not None:
                ahead = events / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if progress is not None and chunk.frame.height:
                last = chunk.frame["ts"][-1].timestamp()
                progress(SimProgress(simulated_s=last - origin, total_s=config.duration_s, events=events))
    finally:
        if writer is not None:
            writer.close()
    truth = source.truth
    written_truth = write_truth(truth_path(out), truth) if out is not None else None
    frames = None
    if collect:
        frames = {d: pl.concat(parts) for d, parts in collected.items() if parts}
    return SimulationResult(
        config=config,
        events=events,
        events_by_domain={d.value: n for d, n in source.events_by_domain.items()},
        labelled=labelled,
        truth=truth,
        out=Path(out) if out is not None else None,
        truth_path=written_truth,
        elapsed_s=time.perf_counter() - started,
        frames=frames,
    )
