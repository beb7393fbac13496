"""Ingest benchmark: rows per second read + normalised end to end through ``FileSource``.

Measures the shared data sets (fraud-handbook CSV.gz, sparkov CSV.gz, NSL-KDD KDDTrain+) and generated
canonical payment events on one process: ``ndjson`` (12 fields a card switch sends, ~250 bytes a line),
``ndjson_gz`` (the same, gzipped), ``ndjson_wide`` (22 fields, ~460 bytes a line) and ``parquet`` (the
wide events in the canonical schema). Data sets are read from ``FINSECURE_DATASETS`` or
``/work/shared/datasets``; an absent one is skipped, saying so.

Prints a table and writes ``bench/results/ingest.json``: a flat object of numbers per case
(``<case>_rows_per_s`` from the best wall time, ``<case>_cpu_us_per_row`` from the best CPU time of
all threads, the steadier number on a shared machine, ``<case>_rows``, ``<case>_rejects``,
``<case>_seconds``, ``<case>_bytes_per_row`` for generated files).

Usage::

    .venv/bin/python bench/ingest.py [--events 1000000] [--repeat 3] [--only ndjson,parquet] [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.ingest.normalise import canonical_polars_schema
from finsecure.ingest.sources import FileSource, open_source

RESULTS = Path(__file__).resolve().parent / "results" / "ingest.json"


def _datasets_dir() -> Path:
    return Path(os.environ.get("FINSECURE_DATASETS", "/work/shared/datasets"))


def canonical_payments(n: int, seed: int = 7) -> pl.DataFrame:
    """``n`` canonical payment events with realistic cardinalities (exactly the canonical schema)."""
    rng = np.random.default_rng(seed)
    customers = rng.integers(0, 50_000, n)
    terminals = rng.integers(0, 10_000, n)
    start = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z in microseconds
    ts = start + np.sort(rng.integers(0, 30 * 86_400 * 1_000_000, n))
    channels = np.array(["pos", "ecommerce", "atm", "transfer"])
    countries = np.array(["GB", "FR", "DE", "US", "ES"])
    frame = pl.DataFrame(
        {
            "event_id": pl.Series(np.arange(n)).cast(pl.String).str.replace(r"^", "tx-"),
            "ts": pl.Series(ts).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "domain": pl.repeat("payment", n, eager=True),
            "source": pl.repeat("card_switch", n, eager=True),
            "tenant": pl.repeat("default", n, eager=True),
            "user_id": pl.Series(customers).cast(pl.String).str.replace(r"^", "C"),
            "account_id": pl.Series(customers).cast(pl.String).str.replace(r"^", "acct_"),
            "card_id": pl.Series(customers).cast(pl.String).str.replace(r"^", "tok_"),
            "src_ip": pl.Series(rng.integers(1, 255, n)).cast(pl.String).str.replace(r"^", "10.0.3."),
            "merchant_id": pl.Series(terminals % 2_000).cast(pl.String).str.replace(r"^", "M"),
            "lat": rng.uniform(35.0, 60.0, n),
            "lon": rng.uniform(-10.0, 20.0, n),
            "country": countries[rng.integers(0, len(countries), n)],
            "label": (rng.random(n) < 0.01).astype(np.int8),
            "transaction_id": pl.Series(np.arange(n)).cast(pl.String),
            "amount": np.round(rng.lognormal(3.0, 1.0, n), 2),
            "currency": pl.repeat("EUR", n, eager=True),
            "channel": channels[rng.integers(0, len(channels), n)],
            "mcc": pl.Series(rng.integers(1000, 9999, n)).cast(pl.String),
            "terminal_id": pl.Series(terminals).cast(pl.String).str.replace(r"^", "T"),
            "card_present": rng.random(n) < 0.6,
            "auth_result": pl.repeat("approved", n, eager=True),
        }
    )
    schema = canonical_polars_schema("payment")
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )


COMPACT = (
    "event_id", "ts", "domain", "source", "card_id", "merchant_id", "terminal_id",
    "amount", "currency", "channel", "card_present", "label",
)  # fmt: skip
"""Fields of the compact events: what a card switch sends for a card payment."""


def write_canonical(folder: Path, n: int) -> dict[str, Path]:
    """The generated events as files: NDJSON (compact and wide; only non-null fields, as a feed writes
    them), gzipped compact NDJSON, and Parquet of the wide events in the canonical schema."""
    paths = {
        "ndjson": folder / "payments.ndjson",
        "ndjson_gz": folder / "payments.ndjson.gz",
        "ndjson_wide": folder / "payments-wide.ndjson",
        "parquet": folder / "payments.parquet",
    }
    stamp = folder / f"events-{n}"
    if stamp.exists() and all(path.exists() for path in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    frame = canonical_payments(n)
    present = [name for name in frame.columns if frame[name].null_count() < frame.height]
    text = frame.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    text.select(COMPACT).write_ndjson(paths["ndjson"])
    text.select(present).write_ndjson(paths["ndjson_wide"])
    paths["ndjson_gz"].write_bytes(gzip.compress(paths["ndjson"].read_bytes(), compresslevel=6))
    frame.write_parquet(paths["parquet"])
    stamp.touch()
    return paths


def measure(make: Callable[[], FileSource], repeat: int) -> tuple[float, float, int, int]:
    """Best wall time and best CPU time (all threads) of ``repeat`` full reads, with the row and
    reject counts of the last one. CPU time is the steadier number on a shared machine."""
    best = best_cpu = float("inf")
    rows = rejects = 0
    for _ in range(repeat):
        source = make()
        rows = rejects = 0
        started, cpu = time.perf_counter(), time.process_time()
        for chunk in source.chunks():
            rows += chunk.frame.height
            rejects += 0 if chunk.rejects is None else chunk.rejects.num_rows
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu, rows, rejects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="generated canonical events")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--data", type=Path, default=None, help="keep the generated files here (reused when present)"
    )
    args = parser.parse_args(argv)
    only = {name for name in args.only.split(",") if name}
    data = _datasets_dir()

    cases: list[tuple[str, Path, Callable[[Path], FileSource]]] = [
        (
            "fraud_handbook_csv_gz",
            data / "fraud-handbook" / "transactions_2018-04-01_to_2018-08-31.csv.gz",
            lambda p: FileSource(p, "fraud-handbook"),
        ),
        (
            "sparkov_csv_gz",
            data / "sparkov-geo" / "transactions_2023.csv.gz",
            lambda p: FileSource(p, "sparkov"),
        ),
        ("nsl_kdd_train", data / "nsl-kdd" / "KDDTrain+.txt.gz", lambda p: FileSource(p, "nsl-kdd")),
    ]
    results: dict[str, float] = {}
    out = sys.stdout
    out.write(f"{'case':<24}{'rows':>12}{'rejects':>10}{'seconds':>10}{'rows/s':>14}{'cpu µs/row':>12}\n")

    def run(name: str, path: Path, make: Callable[[Path], FileSource]) -> None:
        if only and name not in only:
            return
        if not path.exists():
            out.write(f"{name:<24}skipped: {path} is absent\n")
            return
        seconds, cpu, rows, rejects = measure(lambda: make(path), args.repeat)
        rate = rows / seconds
        cpu_per_row = cpu / max(rows, 1) * 1e6
        results.update(
            {
                f"{name}_rows_per_s": round(rate),
                f"{name}_rows": rows,
                f"{name}_rejects": rejects,
                f"{name}_seconds": round(seconds, 4),
                f"{name}_cpu_us_per_row": round(cpu_per_row, 4),
            }
        )
        out.write(f"{name:<24}{rows:>12,}{rejects:>10,}{seconds:>10.3f}{rate:>14,.0f}{cpu_per_row:>12.3f}\n")
        out.flush()

    for name, path, make in cases:
        run(name, path, make)
    generated = ("ndjson", "ndjson_gz", "ndjson_wide", "parquet")
    if not only or only & set(generated):
        with contextlib.ExitStack() as stack:
            folder = args.data or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finsecure-")))
            paths = write_canonical(folder, args.events)
            for kind in generated:
                results[f"{kind}_bytes_per_row"] = round(paths[kind].stat().st_size / args.events)
                fmt = "parquet" if kind == "parquet" else "ndjson"
                run(kind, paths[kind], functools.partial(open_source, format_name=fmt))
    results["events_generated"] = args.events
    results["cpu_count"] = os.cpu_count() or 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    out.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
