"""Feature-step benchmark: per-entity features over real payment streams, in 10,000-event batches.

Only :class:`~finsecure.features.step.FeatureStep` is timed (no source, no pipeline), on frames already
in memory. Cases:

- ``handbook``: the fraud-handbook stream (1.47 M transactions over five months; customers as
  ``user_id``, terminals as ``merchant_id``) with the default payment features;
- ``handbook_book``: the same stream with only the handbook's own features (1, 7 and 30-day count and
  amount windows per customer and per terminal);
- ``payments``: both shared payment streams normalised the way ``bench/pipeline.py`` feeds them
  (fraud-handbook then sparkov: cards, accounts, merchants, places), default features.

Each case runs with one thread and with the step's default threads. Numbers are the best of
``--repeat`` runs: events per second of wall time and per CPU second (all threads; the steadier number
when other jobs share the machine), batch latency p50/p99, and the feature state's memory.

Usage::

    .venv/bin/python bench/features.py [--repeat 3] [--cases handbook,handbook_book,payments]

Writes ``bench/results/features.json`` (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain, arrow_schema
from finsecure.features import FeatureConfig, FeatureStep
from finsecure.features.config import DomainFeatures, KeyFeatures, SumFeatures, Window
from finsecure.ingest.sources import open_source
from finsecure.pipeline.batch import Batch

BATCH_ROWS = 10_000
RESULTS = Path(__file__).resolve().parent / "results" / "features.json"
HANDBOOK = "fraud-handbook/transactions_2018-04-01_to_2018-08-31.csv.gz"
SPARKOV = "sparkov-geo/transactions_2023.csv.gz"


def datasets_dir() -> Path:
    env = os.environ.get("FINSECURE_DATASETS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not (path / HANDBOOK).exists():
        sys.exit(f"bench/features.py needs the shared datasets ({HANDBOOK}) under {path}")
    return path


def handbook_frame(root: Path) -> pl.DataFrame:
    """The fraud-handbook transactions as canonical payments (customer = user, terminal = merchant)."""
    raw = pl.read_csv(root / HANDBOOK, schema_overrides={"CUSTOMER_ID": pl.String, "TERMINAL_ID": pl.String})
    mapped = raw.select(
        pl.col("TRANSACTION_ID").cast(pl.String).alias("event_id"),
        pl.col("TX_DATETIME")
        .str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us", time_zone="UTC")
        .alias("ts"),
        pl.lit("fraud_handbook").alias("source"),
        pl.col("CUSTOMER_ID").alias("user_id"),
        pl.col("TERMINAL_ID").alias("merchant_id"),
        pl.col("TX_AMOUNT").cast(pl.Float64).alias("amount"),
    )
    schema = pl.DataFrame(arrow_schema(Domain.payment).empty_table()).schema
    defaults = {"domain": "payment", "tenant": "default"}
    return mapped.select(
        pl.col(name).cast(dtype) if name in mapped.columns else pl.lit(defaults.get(name), dtype).alias(name)
        for name, dtype in schema.items()
    )


def payments_frame(root: Path) -> pl.DataFrame:
    """Both payment streams through their shipped mappings, as the pipeline benchmark feeds them."""
    frames = [
        chunk.frame
        for name, rel in (("fraud-handbook", HANDBOOK), ("sparkov", SPARKOV))
        for chunk in open_source(root / rel, name).chunks()
    ]
    return pl.concat(frames, how="vertical_relaxed", rechunk=True)


def book_config() -> FeatureConfig:
    """The handbook's own features: 1, 7 and 30-day count and amount sums per customer and terminal."""
    days = ("1d", "7d", "30d")

    def key(name: str) -> KeyFeatures:
        sums = (SumFeatures("amount", "sum_amount", days),)
        return KeyFeatures(name, count_windows=days, sums=sums, secs_since_last=False)

    return FeatureConfig(
        windows=(
            Window("1d", 86_400, 86_400),
            Window("7d", 604_800, 86_400),
            Window("30d", 2_592_000, 86_400),
        ),
        domains={Domain.payment: DomainFeatures(keys=(key("user_id"), key("merchant_id")))},
    )


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(
    label: str, frame: pl.DataFrame, config: FeatureConfig, threads: int, repeat: int
) -> dict[str, float]:
    batches = [frame.slice(start, BATCH_ROWS) for start in range(0, frame.height, BATCH_ROWS)]
    warm = FeatureStep(config, threads=threads)  # loads (or compiles) every kernel variant first
    for batch in (*batches[:3], *batches[-3:]):
        warm.process(Batch(Domain.payment, batch, source="warm-up"))
    warm.close()
    best: dict[str, float] = {}
    for _ in range(repeat):
        step = FeatureStep(config, threads=threads)
        latencies = np.empty(len(batches))
        cpu, wall = cpu_s(), time.perf_counter()
        for seq, batch in enumerate(batches):
            start = time.perf_counter()
            step.process(Batch(Domain.payment, batch, source="bench", seq=seq))
            latencies[seq] = time.perf_counter() - start
        wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
        run = {
            f"{label}_events_per_s": frame.height / wall,
            f"{label}_events_per_cpu_s": frame.height / cpu,
            f"{label}_p50_batch_ms": float(np.percentile(latencies, 50)) * 1e3,
            f"{label}_p99_batch_ms": float(np.percentile(latencies, 99)) * 1e3,
            f"{label}_state_mb": step.state_nbytes() / 1e6,
        }
        step.close()
        for key, value in run.items():
            higher_is_better = key.endswith("_per_s") or key.endswith("_per_cpu_s")
            if key not in best or (value > best[key] if higher_is_better else value < best[key]):
                best[key] = value
    print(
        f"  {label:<26} {best[f'{label}_events_per_s'] / 1e6:6.2f} M/s wall "
        f"{best[f'{label}_events_per_cpu_s'] / 1e6:6.2f} M/cpu-s  "
        f"batch p50 {best[f'{label}_p50_batch_ms']:5.2f} ms p99 {best[f'{label}_p99_batch_ms']:6.2f} ms  "
        f"state {best[f'{label}_state_mb']:6.1f} MB"
    )
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept")
    parser.add_argument("--cases", default="handbook,handbook_book,payments", help="comma-separated cases")
    args = parser.parse_args(argv)
    root = datasets_dir()
    cases = args.cases.split(",")
    default_threads = FeatureStep().threads
    print(f"Feature benchmark on {os.cpu_count()} cores, {BATCH_ROWS:,}-event batches, best of {args.repeat}")
    results: dict[str, float] = {}
    handbook = handbook_frame(root) if {"handbook", "handbook_book"} & set(cases) else None
    for case in cases:
        if case == "payments":
            frame, config = payments_frame(root), FeatureConfig()
        elif case in ("handbook", "handbook_book") and handbook is not None:
            frame, config = handbook, (book_config() if case == "handbook_book" else FeatureConfig())
        else:
            sys.exit(f"unknown case {case!r}")
        results[f"{case}_events"] = frame.height
        for threads in sorted({1, default_threads}):
            results.update(run_case(f"{case}_threads{threads}", frame, config, threads, args.repeat))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({k: round(v, 3) for k, v in results.items()}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
