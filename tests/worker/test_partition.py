"""Partition runner pieces on the in-process bus: checkpoints, ownership locks, staged lake files, the
commit protocol, second deliveries, and the ingest-side publisher."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from sqlalchemy.orm import Session, sessionmaker

from finsecure.bus import make_bus
from finsecure.bus.base import BusLoop
from finsecure.bus.memory import InProcessBus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.event.schemas import Domain, SchemaError
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import sample_frame
from finsecure.worker.partition import Checkpoint, PartitionLock, PartitionRunner, publish_staged
from finsecure.worker.publish import PUBLISHED_NS_HEADER, BusPublisher
from finsecure.worker.runner import parse_partitions


def test_checkpoint__round_trips_and_defaults_to_empty(tmp_path: Path) -> None:
    assert Checkpoint.load(tmp_path) == Checkpoint()
    Checkpoint(epoch=3, seq=41, done=(39, 41), snapshot="snap-3").save(tmp_path)
    assert Checkpoint.load(tmp_path) == Checkpoint(epoch=3, seq=41, done=(39, 41), snapshot="snap-3")
    assert not list(tmp_path.glob(".*tmp"))


def test_partition_lock__one_owner_at_a_time(tmp_path: Path) -> None:
    first, second = PartitionLock(tmp_path / "p0"), PartitionLock(tmp_path / "p0")
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_publish_staged__moves_finished_files_only_and_is_idempotent(tmp_path: Path) -> None:
    staging, lake = tmp_path / "staging" / "e1", tmp_path / "lake"
    (staging / "payment" / "date=2026-01-01").mkdir(parents=True)
    (staging / "payment" / "date=2026-01-01" / "part-1.parquet").write_bytes(b"x")
    (staging / "payment" / "date=2026-01-01" / ".part-2.parquet.tmp").write_bytes(b"half")
    assert publish_staged(staging, lake) == 1
    assert (lake / "payment" / "date=2026-01-01" / "part-1.parquet").read_bytes() == b"x"
    assert not staging.exists()
    assert publish_staged(staging, lake) == 0


def test_parse_partitions__rejects_out_of_range() -> None:
    assert parse_partitions("6-7,1", 8) == [1, 6, 7]
    with pytest.raises(ValueError, match="outside"):
        parse_partitions("0-8", 8)
    with pytest.raises(ValueError, match="bad partition"):
        parse_partitions("a-b", 8)


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


def lake_ids(lake: Path) -> list[str]:
    files = [str(path) for path in sorted(lake.glob("*/*/*.parquet"))]
    if not files:
        return []
    return list(duckdb.read_parquet(files, union_by_name=True).select("event_id").pl()["event_id"])


def test_partition_runner__commits_to_the_lake_and_resumes_after_restart(
    tmp_path: Path, bus: InProcessBus, session_factory: sessionmaker[Session]
) -> None:
    publisher = BusPublisher(bus, partitions=1)
    loop = BusLoop()
    try:
        publisher.submit("payment", sample_frame("payment", 500), source="t")

        def runner() -> PartitionRunner:
            return PartitionRunner(
                partition=0,
                bus=bus,
                loop=loop,
                directory=tmp_path / "p0",
                lake_dir=tmp_path / "lake",
                steps=[],
                session_factory=session_factory,
                commit_every_s=0.1,
            )

        first = runner().start()
        deadline = time.monotonic() + 20
        while len(lake_ids(tmp_path / "lake")) < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.stop()
        assert sorted(lake_ids(tmp_path / "lake")) == sorted(f"payment-{i}" for i in range(500))
        assert first.checkpoint.epoch >= 1
        assert first.checkpoint.snapshot is not None

        publisher.submit("payment", sample_frame("payment", 700).slice(500), source="t")
        second = runner().start()  # a new owner: resumes after what the first one acknowledged
        deadline = time.monotonic() + 20
        while len(lake_ids(tmp_path / "lake")) < 700 and time.monotonic() < deadline:
            time.sleep(0.05)
        second.stop()
        ids = lake_ids(tmp_path / "lake")
        assert sorted(ids) == sorted(f"payment-{i}" for i in range(700))
        assert second.processed_messages == 1
    finally:
        publisher.close()
        loop.close()


def test_partition_runner__done_but_unacknowledged_messages_are_not_processed_again(
    tmp_path: Path, bus: InProcessBus, session_factory: sessionmaker[Session]
) -> None:
    publisher = BusPublisher(bus, partitions=1)
    loop = BusLoop()
    try:
        publisher.submit("auth", sample_frame("auth", 50), source="t")
        # As if a previous owner had committed message 1 and died before acknowledging it.
        (tmp_path / "p0").mkdir()
        Checkpoint(epoch=5, seq=1, done=(1,)).save(tmp_path / "p0")
        runner = PartitionRunner(
            partition=0,
            bus=bus,
            loop=loop,
            directory=tmp_path / "p0",
            lake_dir=tmp_path / "lake",
            steps=[],
            session_factory=session_factory,
            commit_every_s=0.1,
        ).start()
        deadline = time.monotonic() + 20
        while runner.skipped_messages < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.stop()
        assert runner.skipped_messages == 1
        assert runner.processed_messages == 0
        assert lake_ids(tmp_path / "lake") == []
    finally:
        publisher.close()
        loop.close()


def test_bus_publisher__stamps_messages_and_refuses_non_canonical_frames(bus: InProcessBus) -> None:
    publisher = BusPublisher(bus, partitions=2)
    try:
        messages = publisher.sink.messages(Batch(Domain.network, sample_frame("network", 10), "t"))
        assert {subject for subject, _, _ in messages} <= {"events.network.0", "events.network.1"}
        assert all(headers[PUBLISHED_NS_HEADER].isdigit() for _, _, headers in messages)
        with pytest.raises(SchemaError):
            publisher.submit("network", sample_frame("network", 3).drop("event_id"), source="t")
        publisher.submit("network", sample_frame("network", 10), source="t")
        assert publisher.published == len(messages)
    finally:
        publisher.close()
