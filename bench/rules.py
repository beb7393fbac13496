"""Detection benchmark: the pipeline end to end with the shipped rules versus no rules, on simulator events.

Run with ``make bench`` (or ``.venv/bin/python bench/rules.py [--days 5] [--customers 10000] [--repeat 2]``).
The bank-day simulator (fixed seed, every campaign type) makes at least a million events of the four
domains in memory first; then the same chunks go through a pipeline (10,000-event batches, bounded
queue) twice per repeat:

- ``none``: features only (the feature step the platform runs);
- ``rules``: features, then detection with every rule of ``rules/`` (match, threshold, model and
  sequence), the hits joined with their events' entity columns as the platform does
  (:class:`~finsecure.alert.sink.EntityDetectionStep`); hits are counted, not stored;
- ``subset`` (with ``--subset N``, default 40, the rule count the issue's target names): the same with
  N of the shipped rules, taken round-robin over the four domains in file order (no choice by cost);
- ``rules_staged`` and ``subset_staged`` (unless ``--no-staged``): the same two with detection on a thread
  of its own (:class:`~finsecure.detection.background.BackgroundStep`, a queue of two batches), so the
  rules of batch N run while the features of batch N+1 do; the run ends when the last batch's rules are
  done. ``staged_hits_identical`` / ``subset_staged_hits_identical`` say whether their hits are the same
  (rule, event) pairs as the inline runs'.

``overhead_pct`` = how much longer the ``rules`` run takes than the ``none`` run (best of ``--repeat``
each, runs interleaved so both see the same machine load); ``overhead_cpu_pct`` the same with the
process CPU time of those runs (all threads), the steadier figure on a shared machine, where wall time
mostly measures the neighbours; ``detection_s`` is the wall time spent inside the detection step and
``detection_thread_cpu_s`` the CPU time of the pipeline's worker thread in it (Polars' own threads
not counted).
``load_1m_start``/``load_1m_end`` record the machine's load average around the runs: on a shared machine
read the CPU figures first.
Writes ``bench/results/rules.json`` (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from finsecure.alert.sink import EntityDetectionStep
from finsecure.detection import RuleSet
from finsecure.detection.background import BackgroundStep
from finsecure.detection.rule import Rule
from finsecure.features.step import FeatureStep
from finsecure.pipeline.batch import Batch, Sink, SourceChunk, Step
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline
from finsecure.pipeline.testing import TestingSource
from finsecure.platform import default_rules
from finsecure.sim import SimConfig, SimulatorSource

BATCH_ROWS = 10_000
RESULTS = Path(__file__).parent / "results" / "rules.json"


class CountingSink(Sink):
    """Counts rows; keeps nothing."""

    sink_id = "count"

    def __init__(self) -> None:
        self.rows = 0

    def write(self, batch: Batch) -> None:
        self.rows += len(batch)


class TimedStep(Step):
    """Runs another step and adds up the time it takes."""

    def __init__(self, inner: Step) -> None:
        self.inner = inner
        self.step_id = inner.step_id
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def process(self, batch: Batch) -> Batch | None:
        started, cpu = time.perf_counter(), time.thread_time()
        out = self.inner.process(batch)
        self.seconds += time.perf_counter() - started
        self.cpu_seconds += time.thread_time() - cpu
        return out


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def simulate(days: float, customers: int, seed: int) -> list[SourceChunk]:
    config = SimConfig(customers=customers, duration_s=days * 86_400.0, seed=seed)
    return list(SimulatorSource(config).chunks())


def subset(rules: list[Rule], n: int) -> list[Rule]:
    """``n`` rules taken round-robin over the domains, in file order within each (no choice by cost)."""
    by_domain: dict[str, list[Rule]] = {}
    for rule in rules:
        by_domain.setdefault(rule.domain.value, []).append(rule)
    queues = [list(by_domain[d]) for d in sorted(by_domain)]
    chosen: list[Rule] = []
    while len(chosen) < min(n, len(rules)):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def run(
    chunks: list[SourceChunk],
    rules: list[Rule] | None,
    *,
    staged: bool = False,
    fired: list[pl.DataFrame] | None = None,
) -> dict[str, float]:
    """One pipeline run; ``fired`` (when given) receives the (rule, event) pairs of every hit."""
    hits: Counter[str] = Counter()

    def count(frame: pl.DataFrame) -> None:
        hits.update(frame.get_column("rule_id").to_list())
        if fired is not None:
            fired.append(frame.select("rule_id", "event_id"))

    steps: list[Step] = [FeatureStep()]
    detection = TimedStep(EntityDetectionStep(RuleSet(rules), count)) if rules is not None else None
    if detection is not None:
        steps.append(BackgroundStep(detection) if staged else detection)
    sink = CountingSink()
    pipeline = Pipeline(steps, [sink], max_rows=BATCH_ROWS, max_age_s=0.010, queue_chunks=4)
    cpu, started = cpu_s(), time.perf_counter()
    pipeline.start()
    drive(TestingSource(chunks), pipeline)
    pipeline.stop(drain=True)
    seconds, cpu = time.perf_counter() - started, cpu_s() - cpu
    out = {"seconds": seconds, "cpu_s": cpu, "rows": float(sink.rows), "events_per_s": sink.rows / seconds}
    if detection is not None:
        out |= {
            "detection_s": detection.seconds,
            "detection_thread_cpu_s": detection.cpu_seconds,
            "hits": float(sum(hits.values())),
            "rules_fired": len(hits),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=5.0)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--subset", type=int, default=40, help="also time this many rules (0: skip)")
    parser.add_argument(
        "--no-staged",
        dest="staged",
        action="store_false",
        help="skip the runs with detection on a thread of its own",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    chunks = simulate(args.days, args.customers, args.seed)
    events = sum(chunk.frame.height for chunk in chunks)
    print(f"simulated {events:,} events in {time.perf_counter() - started:.1f} s")
    rules = list(default_rules())
    kinds = Counter(rule.kind for rule in rules)
    warm = [SourceChunk(chunk.domain, chunk.frame.head(2_000)) for chunk in chunks[:8]]
    run(warm, rules)  # load numba kernels and Polars plans before timing
    variants: list[tuple[str, list[Rule] | None, bool]] = [("none", None, False), ("rules", rules, False)]
    if 0 < args.subset < len(rules):
        variants.append(("subset", subset(rules, args.subset), False))
    if args.staged:
        variants.append(("rules_staged", rules, True))
        if 0 < args.subset < len(rules):
            variants.append(("subset_staged", subset(rules, args.subset), True))

    load_start = os.getloadavg()[0]
    best: dict[str, dict[str, float]] = {}
    cpu_runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    pairs: dict[str, pl.DataFrame] = {}  # each variant's (rule, event) hits, to check staged == inline
    for _ in range(args.repeat):
        for label, chosen, staged in variants:
            fired: list[pl.DataFrame] = []
            result = run(chunks, chosen, staged=staged, fired=fired)
            if fired and label not in pairs:
                pairs[label] = pl.concat(fired).sort("rule_id", "event_id")
            cpu_runs[label].append(result)
            print(
                f"  {label:13} {result['events_per_s']:>12,.0f} events/s  {result['seconds']:.2f} s wall  "
                f"{result['cpu_s']:.2f} s CPU"
            )
            if label not in best or result["seconds"] < best[label]["seconds"]:
                best[label] = result
    none, ruled = best["none"], best["rules"]
    overhead = (ruled["seconds"] - none["seconds"]) / none["seconds"] * 100.0
    none_cpu = min(r["cpu_s"] for r in cpu_runs["none"])
    rules_cpu = min(r["cpu_s"] for r in cpu_runs["rules"])
    results: dict[str, Any] = {
        "events": events,
        "rules": len(rules),
        **{f"rules_{kind}": count for kind, count in sorted(kinds.items())},
        "none_events_per_s": round(none["events_per_s"], 1),
        "rules_events_per_s": round(ruled["events_per_s"], 1),
        "none_seconds": round(none["seconds"], 3),
        "rules_seconds": round(ruled["seconds"], 3),
        "none_cpu_s": round(none_cpu, 3),
        "rules_cpu_s": round(rules_cpu, 3),
        "detection_s": round(ruled["detection_s"], 3),
        "detection_thread_cpu_s": round(min(r["detection_thread_cpu_s"] for r in cpu_runs["rules"]), 3),
        "detection_events_per_s": round(events / ruled["detection_s"], 1) if ruled["detection_s"] else None,
        "hits": int(ruled["hits"]),
        "rules_fired": int(ruled["rules_fired"]),
        "overhead_pct": round(overhead, 2),
        "overhead_cpu_pct": round((rules_cpu - none_cpu) / none_cpu * 100.0, 2),
        "repeat": args.repeat,
        "load_1m_start": round(load_start, 2),
        "load_1m_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    if "subset" in best:
        part = best["subset"]
        part_cpu = min(r["cpu_s"] for r in cpu_runs["subset"])
        results |= {
            "subset_rules": args.subset,
            "subset_seconds": round(part["seconds"], 3),
            "subset_cpu_s": round(part_cpu, 3),
            "subset_detection_thread_cpu_s": round(
                min(r["detection_thread_cpu_s"] for r in cpu_runs["subset"]), 3
            ),
            "subset_overhead_pct": round((part["seconds"] - none["seconds"]) / none["seconds"] * 100.0, 2),
            "subset_overhead_cpu_pct": round((part_cpu - none_cpu) / none_cpu * 100.0, 2),
        }
    for label, prefix in (("rules_staged", "staged"), ("subset_staged", "subset_staged")):
        if label in best:
            inline = pairs.get(label.removesuffix("_staged"))
            results[f"{prefix}_hits_identical"] = inline is not None and pairs[label].equals(inline)
            part = best[label]
            part_cpu = min(r["cpu_s"] for r in cpu_runs[label])
            results |= {
                f"{prefix}_seconds": round(part["seconds"], 3),
                f"{prefix}_cpu_s": round(part_cpu, 3),
                f"{prefix}_overhead_pct": round(
                    (part["seconds"] - none["seconds"]) / none["seconds"] * 100.0, 2
                ),
                f"{prefix}_overhead_cpu_pct": round((part_cpu - none_cpu) / none_cpu * 100.0, 2),
            }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
