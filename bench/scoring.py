"""Scoring benchmark: ONNX Runtime throughput of each model tier and of the cascade, batches of 10,000.

Measured (events per second of wall time, best of ``--repeat``, ``--threads`` intra-op threads, 2 by
default):

- ``gbdt_events_per_s``: LightGBM, 100 trees of 31 leaves on 21 features (the reference size), ONNX;
- ``cnn_events_per_s``, ``lstm_events_per_s``, ``transformer_events_per_s``: the deep tier's networks
  (``finsecure.ml.catalog`` specs, 16 steps x 21 features), exported to ONNX (needs PyTorch to export;
  ``null`` without it). Their cost does not depend on training, so they are fitted for one epoch only;
- ``cascade_events_per_s``: every event through the GBDT, and only the events it leaves uncertain
  (score between ``--low`` and ``--high``) through the three deep models. The share routed is measured on
  the GBDT's scores of a simulated bank day's payments (validation rows), reported as
  ``cascade_routed_share``;
- ``scoring_step_events_per_s``: the pipeline's :class:`~finsecure.ml.step.ScoringStep` on featured
  payment batches with the simulated tier promoted (design matrix, GBDT + Isolation Forest + half-space
  trees + ensemble, explanations of flagged rows).

Usage::

    .venv/bin/python bench/scoring.py [--repeat 5] [--threads 2]

Writes ``bench/results/scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.ml.catalog import get_spec
from finsecure.ml.contract import OnnxScorer
from finsecure.ml.gbdt import GbdtModel

BATCH = 10_000
FEATURES = 21
STEPS = 16
RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"


CPU_RATES: dict[str, int] = {}
"""Events per CPU second (all threads) of the last :func:`best_rate` runs, by name: steadier than wall-clock
rates when other jobs share the machine."""


def best_rate(run: Callable[[], object], rows: int, repeat: int, name: str | None = None) -> float:
    run()  # warm-up (allocations, thread pool)
    best = best_cpu = float("inf")
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    if name is not None:
        CPU_RATES[f"{name}_events_per_cpu_s"] = round(rows / max(best_cpu, 1e-9))
    return rows / best


def gbdt_scorer(folder: Path, threads: int) -> tuple[OnnxScorer, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50_000, FEATURES)).astype(np.float32)
    y = ((X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=len(X))) > 1.5).astype(np.int32)
    model = GbdtModel("payment", tuple(f"f{i}" for i in range(FEATURES)), n_estimators=100, num_leaves=31)
    model.fit(X, y)
    model.export_onnx(folder / "gbdt.onnx")
    return OnnxScorer(folder / "gbdt.onnx", intra_op_threads=threads), X[:BATCH]


def deep_scorers(folder: Path, threads: int) -> dict[str, OnnxScorer]:
    try:
        import torch  # noqa: F401 - only to know whether the deep tier can be exported here
    except ImportError:
        return {}
    rng = np.random.default_rng(1)
    X = rng.normal(size=(512, STEPS, FEATURES)).astype(np.float32)
    y = (X[:, -1, 0] > 1).astype(np.int32)
    scorers = {}
    for name in ("cnn", "lstm", "transformer"):
        spec = get_spec(name)
        model = spec.build("payment", tuple(f"f{i}" for i in range(FEATURES)), epochs=1, threads=threads)
        model.fit(X, y)
        model.export_onnx(folder / f"{name}.onnx")
        scorers[name] = OnnxScorer(folder / f"{name}.onnx", intra_op_threads=threads)
    return scorers


def routed_share(low: float, high: float) -> tuple[float, dict[str, object]]:
    """Share of simulated payments the GBDT leaves uncertain, and the GBDT's quality on them."""
    from finsecure.ml.bootstrap import simulated_frames
    from finsecure.ml.metrics import classification_metrics
    from finsecure.ml.train import fit_tier

    frame = simulated_frames(customers=20_000, hours=24.0, seed=3)[Domain.payment]
    is_val = pl.Series(np.random.default_rng(0).random(frame.height) < 0.3)
    train, validation = frame.filter(~is_val), frame.filter(is_val)
    tier = fit_tier(train, validation, Domain.payment, kinds=("gbdt",))
    p = tier.score(validation)["gbdt"]
    y = validation["label"].fill_null(0).to_numpy()
    uncertain = (p >= low) & (p < high)
    metrics = classification_metrics(y, p, tier.thresholds["gbdt"])
    info = {
        "rows": len(p),
        "positives": int(y.sum()),
        "gbdt_average_precision": metrics["average_precision"],
        "positives_in_uncertain_band": int(y[uncertain].sum()),
    }
    return float(uncertain.mean()), info


def scoring_step_rate(repeat: int, threads: int) -> float:
    from finsecure.ml.bootstrap import register_tier, simulated_frames
    from finsecure.ml.registry import load_artefact
    from finsecure.ml.step import ScoringStep
    from finsecure.ml.train import fit_tier
    from finsecure.pipeline.batch import Batch

    frame = simulated_frames(customers=20_000, hours=24.0, seed=5)[Domain.payment]
    is_val = pl.Series(np.random.default_rng(0).random(frame.height) < 0.2)
    tier = fit_tier(frame.filter(~is_val), frame.filter(is_val), Domain.payment)

    from finsecure.core import migrate
    from finsecure.core.database import create_db_engine, make_session_factory

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{tmp}/bench.db")
        migrate.upgrade(engine)
        with make_session_factory(engine)() as session, session.begin():
            rows = register_tier(
                db_session=session,
                data_dir=Path(tmp),
                tier=tier,
                validation=frame.filter(is_val),
                dataset="bench",
                promote=False,
            )
            paths = [r.artefact_path for r in rows]
        engine.dispose()
        step = ScoringStep(models=[load_artefact(p, intra_op_threads=threads) for p in paths])
        reps = -(-BATCH // frame.height)
        batch = Batch(Domain.payment, pl.concat([frame] * reps)[:BATCH], source="bench")
        return best_rate(lambda: step.process(batch), BATCH, repeat, "scoring_step")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--low", type=float, default=0.02, help="GBDT scores below: confidently good")
    parser.add_argument("--high", type=float, default=0.9, help="GBDT scores at or above: confidently bad")
    args = parser.parse_args()
    results: dict[str, object] = {
        "batch_rows": BATCH,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),  # other jobs on the machine skew the rates
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gbdt, X = gbdt_scorer(folder, args.threads)
        gbdt_rate = best_rate(lambda: gbdt.predict_proba(X), BATCH, args.repeat, "gbdt")
        results["gbdt_events_per_s"] = round(gbdt_rate)
        deep = deep_scorers(folder, args.threads)
        sequences = np.random.default_rng(2).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)
        for name in ("cnn", "lstm", "transformer"):
            scorer = deep.get(name)
            results[f"{name}_events_per_s"] = (
                round(best_rate(lambda s=scorer: s.predict_proba(sequences), BATCH, args.repeat, name))  # type: ignore[misc]
                if scorer is not None
                else None
            )
        share, info = routed_share(args.low, args.high)
        results["cascade_routed_share"] = round(share, 4)
        results["cascade_band"] = [args.low, args.high]
        results["cascade_gbdt_quality"] = info
        routed = max(1, round(share * BATCH))
        picked = np.arange(routed)

        def cascade() -> None:
            p = gbdt.predict_proba(X)
            if deep:
                for scorer in deep.values():
                    scorer.predict_proba(sequences[picked])
            del p

        cascade_rate = best_rate(cascade, BATCH, args.repeat, "cascade") if deep else None
        results["cascade_events_per_s"] = round(cascade_rate) if cascade_rate is not None else None
    results["scoring_step_events_per_s"] = round(scoring_step_rate(args.repeat, args.threads))
    results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    results.update(CPU_RATES)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
