"""A scale-out worker behaves like the embedded platform: block flags before detection, playbooks on its
alerts; when the database is away it redoes the epoch instead of acknowledging; and it times each rule
hit from publication on the bus to its alert write."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from finsecure.bus import make_bus
from finsecure.bus.base import BusLoop
from finsecure.bus.memory import InProcessBus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.event.models import StoredEvent
from finsecure.pipeline.batch import Batch, Step
from finsecure.pipeline.testing import sample_frame
from finsecure.response.blocklist import BlockedFlagStep
from finsecure.worker.partition import Checkpoint, DatabaseAway, PartitionRunner, database_away
from finsecure.worker.publish import BusPublisher
from finsecure.worker.runner import Worker, WorkerOptions, _PartitionHits
from tests.conftest import make_settings
from tests.worker.test_partition import lake_ids


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    migrate.upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def bus() -> InProcessBus:
    made = make_bus(f"memory://{secrets.token_hex(4)}")
    assert isinstance(made, InProcessBus)
    return made


def away() -> OperationalError:
    return OperationalError("INSERT ...", {}, ConnectionRefusedError("connection refused"))


def test_database_away__connection_errors_only() -> None:
    assert database_away(away())
    assert not database_away(IntegrityError("INSERT ...", {}, ValueError("duplicate key")))
    assert not database_away(ValueError("bad row"))


class ScoreEverything(Step):
    """Gives every event a high score, so the scored-events sink writes each batch to the database."""

    step_id = "score"

    def process(self, batch: Batch) -> Batch:
        return batch.with_frame(batch.frame.with_columns(pl.lit(0.9).alias("score")))


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_partition_runner__database_away__epoch_redone_from_the_checkpoint(
    tmp_path: Path, bus: InProcessBus, session_factory: sessionmaker[Session]
) -> None:
    database_up = False

    def flaky() -> Session:
        if not database_up:
            raise away()
        return session_factory()

    publisher = BusPublisher(bus, partitions=1)
    loop = BusLoop()

    def runner() -> PartitionRunner:
        return PartitionRunner(
            partition=0,
            bus=bus,
            loop=loop,
            directory=tmp_path / "p0",
            lake_dir=tmp_path / "lake",
            steps=[ScoreEverything()],
            session_factory=flaky,
            commit_every_s=0.1,
        )

    try:
        publisher.submit("payment", sample_frame("payment", 200), source="t")
        first = runner().start()
        wait_until(lambda: not first.alive)
        first.stop()
        assert isinstance(first.error, DatabaseAway)
        assert Checkpoint.load(tmp_path / "p0").epoch == 0  # nothing committed ...
        assert lake_ids(tmp_path / "lake") == []  # ... nothing in the lake, nothing acknowledged

        database_up = True
        second = runner().start()  # what the worker does at its next rebalance
        wait_until(lambda: len(lake_ids(tmp_path / "lake")) >= 200)
        second.stop()
        assert second.error is None
        assert sorted(lake_ids(tmp_path / "lake")) == sorted(f"payment-{i}" for i in range(200))
        with session_factory() as session:
            assert len(session.scalars(select(StoredEvent.event_id)).all()) == 200
    finally:
        publisher.close()
        loop.close()


def test_worker__default_steps_flag_blocked_entities_and_run_playbooks(
    tmp_path: Path, bus: InProcessBus, session_factory: sessionmaker[Session]
) -> None:
    worker = Worker(
        bus=bus,
        partitions=[0],
        state_dir=tmp_path / "state",
        lake_dir=tmp_path / "lake",
        session_factory=session_factory,
        rules=(),
        settings=make_settings(),
        options=WorkerOptions(balance=False),
    ).start()
    try:
        steps = worker.runners[0].pipeline.steps
        names = [step.step_id for step in steps]
        assert any(isinstance(step, BlockedFlagStep) for step in steps)
        assert names.index("blocklist") < names.index("detection")
        assert worker.responses is not None
        assert worker.alerts is not None
        assert worker.responses.submit in worker.alerts.listeners
    finally:
        worker.stop()


class FakeAlerts:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.written: list[int] = []
        self.errors = 0

    def deliver(self, hits: pl.DataFrame) -> None:
        if self.error is not None:
            raise self.error
        self.written.append(hits.height)


class FakeRunner:
    def __init__(self, published: dict[str, int]) -> None:
        self.published = published
        self.failures: list[BaseException] = []

    def published_at(self, event_ids: list[str]) -> list[int | None]:
        return [self.published.get(event_id) for event_id in event_ids]

    def database_failed(self, exc: BaseException) -> None:
        self.failures.append(exc)


def latency_count(worker: Worker) -> float:
    samples = [s for m in worker.alert_latency.collect() for s in m.samples if s.name.endswith("_count")]
    return samples[0].value


def test_worker_write_hits__times_each_hit_from_publication_and_marks_the_epoch_when_the_db_is_away(
    tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    worker = Worker(
        bus=make_bus("memory://unused"),
        partitions=[],
        state_dir=tmp_path,
        lake_dir=tmp_path,
        session_factory=session_factory,
    )
    origin = _PartitionHits(worker, 0)
    runner = FakeRunner({"e1": time.time_ns() - 40_000_000})
    origin.runner = runner  # type: ignore[assignment]
    hits = pl.DataFrame({"event_id": ["e1", "e2"], "rule_id": ["r", "r"]})

    worker.alerts = FakeAlerts()  # type: ignore[assignment]
    worker.write_hits(hits, origin)
    assert latency_count(worker) == 1  # e2 was not published through the bus: not timed
    sums = [s for m in worker.alert_latency.collect() for s in m.samples if s.name.endswith("_sum")]
    assert sums[0].value >= 0.04

    worker.alerts = FakeAlerts(away())  # type: ignore[assignment]
    worker.write_hits(hits, origin)
    assert len(runner.failures) == 1
    assert latency_count(worker) == 1  # a failed write is not a latency
