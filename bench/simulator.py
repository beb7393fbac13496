"""How fast the bank-day simulator generates events, in memory and to files, and how much memory it takes.

Run ``python bench/simulator.py`` (options: ``--customers``, ``--duration``, ``--repeat``). Each measurement
runs in a fresh process, so peak memory is per scenario and thread settings apply:

* ``1core``: pinned to one CPU with one Polars thread and the Parquet writer inline;
* ``all_cores``: every CPU, Polars' default threads, Parquet parts encoded on a background thread.

Rates are events per wall-clock second, and for one-core runs also per CPU second (robust when other
processes share the machine). Prints a table and writes ``bench/results/simulator.json`` (numbers only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finsecure.sim import SimConfig, SimulatorSource, World, build_world, parse_duration
from finsecure.sim.writers import EventWriter, ParquetDatasetWriter, open_writer

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "simulator.json"

# Scenario name → (output suffix or None for in memory, pinned to one core?)
SCENARIOS: dict[str, tuple[str | None, bool]] = {
    "generate_1core": (None, True),
    "parquet_1core": (".parquet", True),
    "parquet_all_cores": (".parquet", False),
    "ndjson_1core": (".ndjson", True),
}


def worker(scenario: str, customers: int, duration: str, seed: int) -> dict[str, float]:
    """One measurement, in this process (the parent set threads and affinity)."""
    suffix, one_core = SCENARIOS[scenario]
    config = SimConfig(customers=customers, duration_s=parse_duration(duration), seed=seed)
    started = time.perf_counter()
    world = build_world(config)
    world_s = time.perf_counter() - started
    _run(SimConfig(customers=customers, duration_s=60.0, seed=seed), world, None)  # warm caches
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"bench{suffix}" if suffix else None
        writer: EventWriter | None = None
        if out is not None and suffix == ".parquet":
            # One core: encode inline (a second thread only adds switching). All cores: overlap.
            writer = ParquetDatasetWriter(out, background=not one_core)
        elif out is not None:
            writer = open_writer(out)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = _run(config, world, writer)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        size = _size(out) if out is not None else 0
    events = result["events"]
    return {
        "events": events,
        "labelled": result["labelled"],
        "campaigns": result["campaigns"],
        "world_build_s": round(world_s, 3),
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall),
        "events_per_cpu_s": round(events / cpu),
        "bytes_per_event": round(size / events, 2) if events else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _run(config: SimConfig, world: World, writer: EventWriter | None) -> dict[str, float]:
    """Drive the source into the writer (as `simulate` does), returning counts."""
    source = SimulatorSource(config, world=world)
    events = labelled = 0
    try:
        for chunk in source.chunks():
            if writer is not None:
                writer.write(chunk.domain, chunk.frame)
            events += chunk.frame.height
            labelled += int(chunk.frame["label"].sum() or 0)
    finally:
        if writer is not None:
            writer.close()
    return {"events": events, "labelled": labelled, "campaigns": len(source.truth.campaigns)}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _spawn(scenario: str, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    _, one_core = SCENARIOS[scenario]
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", scenario]
    command += ["--customers", str(args.customers), "--duration", args.duration, "--seed", str(args.seed)]
    if one_core:
        env["POLARS_MAX_THREADS"] = "1"
        env["OMP_NUM_THREADS"] = "1"
        env["NUMBA_NUM_THREADS"] = "1"
        if shutil.which("taskset"):
            command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise SystemExit(f"benchmark {scenario} failed:\n{done.stderr[-4000:]}")
    measured: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--duration", default="1d")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs per scenario; the fastest counts")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--worker", choices=list(SCENARIOS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.customers, args.duration, args.seed)))
        return
    best: dict[str, dict[str, float]] = {}
    for scenario in args.scenarios.split(","):
        for _ in range(args.repeat):
            measured = _spawn(scenario, args)
            if scenario not in best or measured["events_per_s"] > best[scenario]["events_per_s"]:
                best[scenario] = measured
    first = next(iter(best.values()))
    results: dict[str, float] = {
        "customers": args.customers,
        "simulated_s": parse_duration(args.duration),
        "seed": args.seed,
        "events": first["events"],
        "labelled_events": first["labelled"],
        "campaigns": first["campaigns"],
        "world_build_s": min(m["world_build_s"] for m in best.values()),
        "cpu_count": os.cpu_count() or 0,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for scenario, measured in best.items():
        results[f"{scenario}_events_per_s"] = measured["events_per_s"]
        if SCENARIOS[scenario][1]:
            results[f"{scenario}_events_per_cpu_s"] = measured["events_per_cpu_s"]
        results[f"{scenario}_peak_rss_mb"] = measured["peak_rss_mb"]
        if measured["bytes_per_event"]:
            results[f"{scenario}_bytes_per_event"] = measured["bytes_per_event"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{args.customers:,} customers x {args.duration}: {int(first['events']):,} events")
    print(f"{'scenario':20s} {'events/s':>12s} {'events/cpu-s':>13s} {'peak RSS MB':>12s} {'B/event':>8s}")
    for scenario, m in best.items():
        per_cpu = f"{m['events_per_cpu_s']:,.0f}" if SCENARIOS[scenario][1] else "-"
        size = f"{m['bytes_per_event']:.1f}" if m["bytes_per_event"] else "-"
        print(
            f"{scenario:20s} {m['events_per_s']:>12,.0f} {per_cpu:>13s} {m['peak_rss_mb']:>12,.0f} {size:>8s}"
        )
    print(f"world build {results['world_build_s']:.2f} s; wrote {RESULTS}")


if __name__ == "__main__":
    main()
