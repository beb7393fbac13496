"""A worker process: owns some partitions of the bus, one :class:`PartitionRunner` each.

Ownership is an exclusive lock on each partition's state directory (see
:class:`~finsecure.worker.partition.PartitionLock`). Every ``takeover_every_s`` a worker rebalances:

* with ``balance`` (workers sharing one state directory, e.g. on one host or a shared volume), each
  worker counts the live members (``members/<id>`` files touched at every rebalance) and owns an equal
  share: when a worker joins, the others commit and release their extra partitions and the newcomer takes
  them; when one leaves or dies (even by ``kill -9``: the kernel drops its locks), the others take its
  partitions over, restoring their snapshots and replaying the bus from their checkpoints;
* without it (``--member i/n``, e.g. a Kubernetes StatefulSet ordinal with its own volume), a worker owns
  its fixed set of partitions, and a restarted pod resumes them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from prometheus_client import Histogram
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertSink
from finsecure.alert.suppression import Suppressor
from finsecure.bus import make_bus
from finsecure.bus.base import Bus, BusLoop
from finsecure.bus.nats import NatsBus
from finsecure.core.settings import Settings
from finsecure.correlation import Correlator
from finsecure.detection.rule import Rule
from finsecure.ops.metrics import Metrics
from finsecure.pipeline.batch import Step
from finsecure.platform import default_rules, default_steps
from finsecure.response.worker import ResponseWorker
from finsecure.worker.notify import AlertNotifier
from finsecure.worker.partition import (
    DatabaseAway,
    PartitionLock,
    PartitionRunner,
    database_away,
    durable_name,
)

__all__ = ["Worker", "WorkerOptions", "parse_partitions"]

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_partitions(spec: str, total: int) -> list[int]:
    """``"0-7"``, ``"0,2,5-6"`` or ``"all"`` as a sorted list of partition numbers below ``total``.

    Examples
    --------
    >>> parse_partitions("0-3,6", 8), parse_partitions("all", 3)
    ([0, 1, 2, 3, 6], [0, 1, 2])

    Raises
    ------
    ValueError
        On a malformed range, or a partition at or above ``total``.
    """
    if spec.strip() == "all":
        return list(range(total))
    chosen: set[int] = set()
    for part in spec.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"bad partition range {part!r}: use e.g. 0-7 or 0,2,4")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low or high >= total:
            raise ValueError(f"partitions {part!r} outside 0-{total - 1} (the bus has {total} partitions)")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def _member_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


#: Buckets of the ingest-to-alert latency (seconds): fine below 100 ms, where the target is.
ALERT_LATENCY_BUCKETS = (
    0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1,
    0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class _PartitionHits:
    """The rule-hit callback of one partition's steps; knows its runner once that exists."""

    def __init__(self, worker: Worker, partition: int) -> None:
        self.worker = worker
        self.partition = partition
        self.runner: PartitionRunner | None = None

    def __call__(self, hits: pl.DataFrame) -> None:
        self.worker.write_hits(hits, self)


@dataclass
class WorkerOptions:
    """How a worker commits and batches (defaults suit a small box)."""

    commit_every_s: float = 5.0
    """A checkpoint snapshots a partition's feature and rule state (0.2-0.5 s of work on a busy box,
    during which the partition takes nothing new): rarer checkpoints leave more time for events. Alerts
    are written at the end of each batch and never wait for a checkpoint. Each partition stretches this
    by a fixed 0-25 % (:func:`~finsecure.worker.partition.commit_spread`) so they do not all checkpoint
    at once."""
    commit_every_messages: int = 768
    """Also checkpoint after this many messages: keep it below the bus's ``max_ack_pending`` (1000)."""
    ack_wait_s: float = 30.0
    max_rows: int = 10_000
    max_age_s: float = 0.05
    takeover_every_s: float = 2.0
    balance: bool = True
    """Own an equal share of the partitions among the live workers that share the state directory."""
    member_ttl_s: float = 10.0
    """A worker that has not rebalanced for this long is considered gone."""
    subject_prefix: str = "events"


@dataclass
class Worker:
    """Runs the partitions it can own until :meth:`stop`.

    Parameters
    ----------
    bus
        A bus or its URL; the worker runs it on a loop of its own.
    partitions
        The partitions this worker may own.
    state_dir
        Where partition state lives (``p<N>/``): checkpoints, snapshots, lake staging, ownership locks.
    lake_dir
        The shared lake.
    session_factory
        The shared database.
    steps_factory
        Builds one partition's steps (default: features then detection with this worker's alert writer).
    """

    bus: Bus | str
    partitions: Sequence[int]
    state_dir: Path
    lake_dir: Path
    session_factory: Callable[[], Session]
    store_score_threshold: float = 0.5
    options: WorkerOptions = field(default_factory=WorkerOptions)
    metrics: Metrics = field(default_factory=Metrics)
    rules: Sequence[Rule] | None = None
    steps_factory: Callable[[Callable[[pl.DataFrame], None]], list[Step]] | None = None
    engine: Engine | None = None
    correlator_factory: Callable[[], Correlator] = Correlator
    """Makes the correlator (``finsecure worker`` passes one built from the settings)."""
    settings: Settings | None = None
    """With settings, the worker also runs the response worker (playbooks and actions on its alerts), as
    the embedded platform does; ``finsecure worker`` passes them."""
    block_flags: bool = True
    """Default steps only: mark the events of blocked entities (``blocked`` column) before detection."""
    notify_alerts: bool = True
    """On a NATS bus, announce each committed alert write on ``alerts.<partition>`` for the API processes
    (see :mod:`finsecure.worker.notify`)."""
    responses: ResponseWorker | None = field(init=False, default=None)
    notifier: AlertNotifier | None = field(init=False, default=None)
    alert_latency: Histogram = field(init=False)
    runners: dict[int, PartitionRunner] = field(init=False, default_factory=dict)
    _locks: dict[int, PartitionLock] = field(init=False, default_factory=dict)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _loop: BusLoop | None = field(init=False, default=None)
    _bus: Bus | None = field(init=False, default=None)
    _alert_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    alerts: AlertSink | None = field(init=False, default=None)
    member_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )

    def __post_init__(self) -> None:
        self.alert_latency = Histogram(
            "finsecure_worker_ingest_to_alert_seconds",
            "From ingest publishing an event on the bus to its rule hit written (committed) as an alert",
            buckets=ALERT_LATENCY_BUCKETS,
            registry=self.metrics.registry,
        )

    def write_hits(self, hits: pl.DataFrame, origin: _PartitionHits) -> None:
        """Write one batch's rule hits as alerts (then playbooks run on them), and time them.

        When the database is away, the partition's epoch is marked for redoing instead: the hits come
        again from the bus once it is back (alert writes are idempotent on the alert key).
        """
        # One writer for all partitions (the correlator joins alerts across them), one batch at a time.
        assert self.alerts is not None  # noqa: S101 - set in start()
        with self._alert_lock:
            try:
                result = self.alerts.deliver(hits)  # committed when it returns
            except Exception as exc:
                if origin.runner is not None and database_away(exc):
                    origin.runner.database_failed(exc)
                else:
                    self.alerts.errors += 1
                    logger.exception("could not store %d rule hits as alerts", hits.height)
                return
        done_ns = time.time_ns()
        if self.notifier is not None:  # never waits, never raises: the API is told after the commit
            committed_at = dt.datetime.fromtimestamp(done_ns / 1e9, dt.UTC)
            self.notifier.notify(origin.partition, result, committed_at=committed_at)
        if origin.runner is not None and "event_id" in hits.columns:
            for published in origin.runner.published_at(hits["event_id"].to_list()):
                if published is not None:
                    self.alert_latency.observe(max(0, done_ns - published) / 1e9)

    def start(self) -> Worker:
        """Connect and take every free partition it was given."""
        self._loop = BusLoop("finsecure-worker-bus")
        self._bus = make_bus(self.bus) if isinstance(self.bus, str) else self.bus
        if self.notify_alerts and isinstance(self._bus, NatsBus):
            self.notifier = AlertNotifier(
                self._bus, self._loop, worker=self.member_id, registry=self.metrics.registry
            )
        self.alerts = AlertSink(
            self.session_factory,
            correlator=self.correlator_factory(),
            suppressor=Suppressor(self.session_factory),
            storm_clock="event",
        )
        correlator = self.alerts.correlator
        if correlator is not None:
            try:
                with self.session_factory() as session:
                    correlator.warm_up(db_session=session)
            except Exception:  # a cold correlator only means fewer joins until the window refills
                logger.exception("could not reload open incidents for correlation")
        if self.settings is not None:
            self.responses = ResponseWorker(self.settings, self.session_factory)
            self.alerts.listeners.append(self.responses.submit)
            self.responses.start()
        self.metrics.watch_alerts(self.session_factory, self.alerts)
        if self.rules is None:
            self.rules = default_rules()
        self.rebalance()
        return self

    def _steps(self, on_hits: Callable[[pl.DataFrame], None]) -> list[Step]:
        if self.steps_factory is not None:
            return self.steps_factory(on_hits)
        from finsecure.ml.step import ScoringStep, registry_resolver

        scoring = ScoringStep(registry_resolver(self.session_factory))  # promoted models, hot-reloaded
        return default_steps(
            on_hits=on_hits,
            rules=self.rules,
            scoring=scoring,
            session_factory=self.session_factory if self.block_flags else None,
            rule_states_from=self.session_factory,
        )

    def rebalance(self) -> list[int]:
        """Take the wanted partitions nobody owns; restart a partition whose runner died. Returns the new."""
        assert self._loop is not None  # noqa: S101 - set in start()
        assert self._bus is not None  # noqa: S101
        taken: list[int] = []
        for partition, runner in list(self.runners.items()):
            if not runner.alive and not self._stop.is_set():
                level = logging.WARNING if isinstance(runner.error, DatabaseAway) else logging.ERROR
                logger.log(level, "partition %d: runner stopped (%s); restarting it", partition, runner.error)
                runner.stop()
                del self.runners[partition]
        share = self.fair_share()
        for partition in sorted(self.runners, reverse=True)[: max(0, len(self.runners) - share)]:
            self.release(partition)  # a worker joined: hand partitions over (committed first)
        for partition in self.partitions:
            if partition in self.runners or self._stop.is_set() or len(self.runners) >= share:
                continue
            directory = self.state_dir / f"p{partition}"
            lock = self._locks.get(partition) or PartitionLock(directory)
            if partition not in self._locks:
                if not lock.acquire():
                    continue
                self._locks[partition] = lock
            hits = _PartitionHits(self, partition)
            runner = PartitionRunner(
                partition=partition,
                bus=self._bus,
                loop=self._loop,
                directory=directory,
                lake_dir=self.lake_dir,
                steps=self._steps(hits),
                session_factory=self.session_factory,
                store_score_threshold=self.store_score_threshold,
                metrics=self.metrics,
                commit_every_s=self.options.commit_every_s,
                commit_every_messages=self.options.commit_every_messages,
                ack_wait_s=self.options.ack_wait_s,
                max_rows=self.options.max_rows,
                max_age_s=self.options.max_age_s,
                subject_prefix=self.options.subject_prefix,
            )
            hits.runner = runner
            self.runners[partition] = runner.start()
            taken.append(partition)
        if taken:
            logger.info("worker owns partitions %s", sorted(self.runners))
        return taken

    def fair_share(self) -> int:
        """How many partitions this worker should own: all it may, or with ``balance`` an equal share
        among the live workers (each touches ``members/<id>`` in the state directory at every rebalance).
        """
        if not self.options.balance:
            return len(self.partitions)
        members = self.state_dir / "members"
        members.mkdir(parents=True, exist_ok=True)
        (members / self.member_id).touch()
        now = time.time()
        live = 0
        for entry in members.iterdir():
            try:
                fresh = now - entry.stat().st_mtime < self.options.member_ttl_s
            except FileNotFoundError:
                continue
            live += fresh
        return -(-len(self.partitions) // max(live, 1))

    def release(self, partition: int) -> None:
        """Commit a partition, stop consuming it and give up its lock (for another worker to take)."""
        runner = self.runners.pop(partition, None)
        if runner is not None:
            runner.stop()
        lock = self._locks.pop(partition, None)
        if lock is not None:
            lock.release()
        logger.info("worker released partition %d; owns %s", partition, sorted(self.runners))

    def update_lag(self) -> dict[int, int]:
        """Messages waiting per owned partition (JetStream's ``num_pending``), also exported as metrics."""
        bus, loop = self._bus, self._loop
        if not isinstance(bus, NatsBus) or loop is None:
            return {}

        async def pending() -> dict[int, int]:
            js = await bus.connect()
            out: dict[int, int] = {}
            for partition in list(self.runners):
                try:
                    info = await js.consumer_info(bus.stream, durable_name(partition))
                except Exception as exc:  # a lag gauge must never stop a worker
                    logger.debug("no lag for partition %d: %s", partition, exc)
                    continue
                out[partition] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            return out

        lag = loop.run(pending(), 10)
        for partition, value in lag.items():
            self.metrics.bus_pending.labels(str(partition)).set(value)
        return lag

    def run(self, stop: threading.Event | None = None) -> None:
        """Rebalance every ``takeover_every_s`` until ``stop`` (or :meth:`stop`) is set."""
        stop = stop or self._stop
        while not stop.wait(self.options.takeover_every_s) and not self._stop.is_set():
            try:
                self.rebalance()
            except Exception:  # e.g. the database is away while a partition's steps are built: next time
                logger.exception("rebalancing failed; trying again in %s s", self.options.takeover_every_s)
            try:
                self.update_lag()
            except Exception as exc:
                logger.debug("lag not updated: %s", exc)

    def stop(self) -> None:
        """Commit and release every partition, then the bus."""
        self._stop.set()
        for runner in self.runners.values():
            runner.stop()
        self.runners.clear()
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()
        (self.state_dir / "members" / self.member_id).unlink(missing_ok=True)
        if self.responses is not None:
            self.responses.stop(timeout=10.0)  # pending retries stay in the table for the next start
        if self._loop is not None:
            if self._bus is not None:
                self._loop.run(self._bus.close(), 10)
            self._loop.close()
