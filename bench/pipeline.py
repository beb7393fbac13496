"""Pipeline benchmark: ≥ 2 M real events through ingest → normalise → features, columnar vs a naive loop.

Run with ``make bench`` (or ``.venv/bin/python bench/pipeline.py``). Reads the fraud-handbook and sparkov
payment streams from ``FINSECURE_DATASETS`` or ``../shared/datasets``; prints a table and writes
``bench/results/pipeline.json`` (one flat object of numbers, comparable run to run).

What is measured (all on one process):
- ``parse``: reading the raw CSV.gz files into columnar chunks;
- ``normalise``: raw chunks → canonical payment events (mapping, casts, validation);
- ``features``: the stateful feature step alone over 10,000-event batches;
- ``end_to_end`` (Parquet) and ``ndjson``: canonical files → source → pipeline (10,000 events / 10 ms
  batches, bounded queue) → features → sink, timed from the first read to the drained pipeline;
- batch latency (steps + sinks) and event latency (arrival → features ready, batching wait included);
- ``naive``: the same payment features computed the way a per-event Python service would (a dict of
  deques per entity), on the first ``NAIVE_EVENTS`` events.
"""

from __future__ import annotations

import collections
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from finsecure.event.schemas import Domain
from finsecure.features.step import FeatureStep
from finsecure.ingest.readers import read_raw
from finsecure.ingest.sources import FileSource, open_source
from finsecure.pipeline.batch import Batch, Sink
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline

NAIVE_EVENTS = 200_000
BATCH_ROWS = 10_000
RESULTS = Path(__file__).parent / "results" / "pipeline.json"
DATASETS = {
    "fraud-handbook": "fraud-handbook/transactions_2018-04-01_to_2018-08-31.csv.gz",
    "sparkov": "sparkov-geo/transactions_2023.csv.gz",
}


class CountingSink(Sink):
    """Counts rows; the cheapest possible end of the pipeline, so the numbers are the pipeline's own."""

    sink_id = "count"

    def __init__(self) -> None:
        self.rows = 0

    def write(self, batch: Batch) -> None:
        self.rows += batch.frame.height


def datasets_dir() -> Path:
    env = os.environ.get("FINSECURE_DATASETS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not all((path / rel).exists() for rel in DATASETS.values()):
        sys.exit(f"bench/pipeline.py needs the shared datasets ({', '.join(DATASETS.values())}) under {path}")
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(label: str, results: dict[str, float], events: int, seconds: float) -> None:
    results[f"{label}_events_per_s"] = events / seconds
    print(f"  {label:<12} {events:>11,} events  {seconds:7.2f} s  {events / seconds:>13,.0f} events/s")


def measure_parse_and_normalise(root: Path, results: dict[str, float]) -> list[pl.DataFrame]:
    rows, seconds = 0, 0.0
    for name, rel in DATASETS.items():
        mapping_source = open_source(root / rel, name)
        start = time.perf_counter()
        for chunk in read_raw(root / rel, mapping_source.mapping.read):
            rows += chunk.frame.height
        seconds += time.perf_counter() - start
    timed("parse", results, rows, seconds)

    frames: list[pl.DataFrame] = []
    events, rejects, seconds = 0, 0, 0.0
    for name, rel in DATASETS.items():
        source = open_source(root / rel, name)
        start = time.perf_counter()
        for chunk in source.chunks():
            frames.append(chunk.frame)
            events += chunk.frame.height
            rejects += chunk.rejects.num_rows if chunk.rejects is not None else 0
        seconds += time.perf_counter() - start
    timed("normalise", results, events, seconds)  # parse + normalise, as a source delivers them
    results["events"] = events
    results["rejects"] = rejects
    return frames


def measure_features(frames: list[pl.DataFrame], results: dict[str, float]) -> None:
    step = FeatureStep()
    warm = frames[0].head(BATCH_ROWS)
    step.process(Batch(Domain.payment, warm, "bench"))  # compile the kernels outside the timing
    step = FeatureStep()
    events, start = 0, time.perf_counter()
    for frame in frames:
        for offset in range(0, frame.height, BATCH_ROWS):
            batch = frame.slice(offset, BATCH_ROWS)
            step.process(Batch(Domain.payment, batch, "bench"))
            events += batch.height
    timed("features", results, events, time.perf_counter() - start)


def run_pipeline(source: FileSource, results: dict[str, float], label: str) -> None:
    sink = CountingSink()
    pipeline = Pipeline([FeatureStep()], [sink], max_rows=BATCH_ROWS, max_age_s=0.010, queue_chunks=16)
    warm = Pipeline([FeatureStep()], [CountingSink()]).start()  # numba caches compiled kernels on disk
    warm.stop()
    start = time.perf_counter()
    pipeline.start()
    progress = drive(source, pipeline)
    stats = pipeline.stop(drain=True)
    seconds = time.perf_counter() - start
    assert sink.rows == progress.events, (sink.rows, progress.events)
    timed(label, results, sink.rows, seconds)
    results[f"{label}_p50_batch_latency_ms"] = stats.batch_latency_p50_ms or 0.0
    results[f"{label}_p99_batch_latency_ms"] = stats.batch_latency_p99_ms or 0.0
    results[f"{label}_p99_event_latency_ms"] = stats.event_latency_p99_ms or 0.0


def naive_loop(frame: pl.DataFrame) -> int:
    """Per-event Python: what the columnar path replaces (card and terminal windows, geo speed)."""
    windows = (3600, 86_400, 7 * 86_400, 30 * 86_400)
    state: dict[tuple[str, str], list[collections.deque[tuple[float, float]]]] = {}
    last_place: dict[str, tuple[float, float, float]] = {}
    out = 0
    for row in frame.iter_rows(named=True):
        t = row["ts"].timestamp()
        amount = row["amount"] or 0.0
        features: dict[str, Any] = {}
        for key in ("card_id", "user_id", "merchant_id"):
            if row[key] is None:
                continue
            queues = state.setdefault((key, row[key]), [collections.deque() for _ in windows])
            for w, q in zip(windows, queues, strict=True):
                q.append((t, amount))
                while q and q[0][0] <= t - w:
                    q.popleft()
                features[f"{key}_count_{w}"] = len(q)
                features[f"{key}_sum_{w}"] = sum(a for _, a in q)
        if row["lat"] is not None and row["card_id"] is not None:
            prev = last_place.get(row["card_id"])
            if prev is not None:
                lat1, lon1, lat2, lon2 = map(math.radians, (prev[0], prev[1], row["lat"], row["lon"]))
                a = (
                    math.sin((lat2 - lat1) / 2) ** 2
                    + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
                )
                km = 12_742 * math.asin(math.sqrt(a))
                features["speed"] = km / max((t - prev[2]) / 3600, 1e-6)
            last_place[row["card_id"]] = (row["lat"], row["lon"], t)
        out += len(features)
    return out


def main() -> None:
    root = datasets_dir()
    results: dict[str, float] = {}
    print(f"Pipeline benchmark on {os.cpu_count()} cores, datasets from {root}")
    frames = measure_parse_and_normalise(root, results)
    measure_features(frames, results)

    with tempfile.TemporaryDirectory(prefix="finsecure-bench-") as tmp:
        stream = pl.concat(frames, how="vertical_relaxed", rechunk=True)
        parquet, ndjson = Path(tmp) / "payments.parquet", Path(tmp) / "payments.ndjson"
        stream.write_parquet(parquet, row_group_size=100_000)
        stream.with_columns(pl.lit("payment").alias("domain")).write_ndjson(ndjson)
        del stream
        run_pipeline(open_source(parquet, "parquet"), results, "end_to_end")
        run_pipeline(open_source(ndjson, "ndjson"), results, "ndjson")

    sample = frames[0].head(NAIVE_EVENTS)
    start = time.perf_counter()
    naive_loop(sample)
    timed("naive", results, sample.height, time.perf_counter() - start)
    results["speedup_vs_naive"] = results["end_to_end_events_per_s"] / results["naive_events_per_s"]
    results["p50_batch_latency_ms"] = results["end_to_end_p50_batch_latency_ms"]
    results["p99_batch_latency_ms"] = results["end_to_end_p99_batch_latency_ms"]
    results["p99_event_latency_ms"] = results["end_to_end_p99_event_latency_ms"]
    results["peak_rss_mb"] = peak_rss_mb()

    print()
    print(f"  {'metric':<34} value")
    for key in (
        "events",
        "end_to_end_events_per_s",
        "ndjson_events_per_s",
        "p50_batch_latency_ms",
        "p99_batch_latency_ms",
        "p99_event_latency_ms",
        "naive_events_per_s",
        "speedup_vs_naive",
        "peak_rss_mb",
    ):
        print(f"  {key:<34} {results[key]:,.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
