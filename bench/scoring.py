"""Scoring benchmark: ONNX Runtime throughput of each model tier and of the cascade, batches of 10,000.

Measured (events per second of wall time, best of ``--repeat``, ``--threads`` intra-op threads, 2 by
default):

- ``gbdt_events_per_s``: LightGBM, 100 trees of 31 leaves on 21 features (the reference size), ONNX;
- ``cnn_events_per_s``, ``lstm_events_per_s``, ``transformer_events_per_s``: the deep tier's networks
  (``finsecure.ml.catalog`` specs, 16 steps x 21 features), exported to ONNX (needs PyTorch to export;
  ``null`` without it). Their cost does not depend on training, so they are fitted for one epoch only;
- ``cascade_events_per_s``: every event through the GBDT, and only the events it leaves uncertain
  (score between ``--low`` and ``--high``) through the three deep models. The share routed is measured on
  held-out cards of a simulated bank day (``cascade_routed_share``), with the cascade's quality against
  scoring every event with every model (``cascade_quality``, :func:`cascade_quality`:
  ``gbdt_only_average_precision``, ``every_model_average_precision``, ``cascade_average_precision``, and
  the share and quality of wider bands);
- ``*_events_per_cpu_s``: the same per CPU second (steadier when other jobs share the machine), and
  ``gbdt_1thread_events_per_cpu_s``: a one-thread session (the work itself);
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
from finsecure.ml.deep import DEFAULT_BAND
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


CARD_HISTORY = (
    "amount",
    "time__hour",
    "cat__merchant_category",
    "geo__home_distance_km",
    "geo__distance_km",
    "geo__speed_kmh",
    "card_id__secs_since_last",
    "card_id__amount_zscore",
    "card_id__count_24h",
    "novel__card_merchant",
)


def cascade_quality(low: float, high: float, threads: int) -> tuple[dict[str, object], OnnxScorer | None]:
    """The cascade against scoring every event with every model, on the same held-out payments.

    A simulated bank day (20,000 customers) is split by card: 60% of the cards train, 20% validate, 20%
    are held out. The fast tier is the GBDT; the deep tier an LSTM over each card's last 8 payments
    (trained here, one thread, a few epochs). "Every model" scores each held-out event with the fusion of
    both (a logistic fusion fitted on the validation cards); the cascade keeps the GBDT's score where it
    is sure (outside ``[low, high)``) and uses the fusion where it is not. Returns the measures and the
    trained LSTM's ONNX scorer (None without PyTorch).
    """
    from finsecure.features.history import HistorySpec
    from finsecure.ml.bootstrap import simulated_frames
    from finsecure.ml.ensemble import FusionModel
    from finsecure.ml.metrics import classification_metrics
    from finsecure.ml.train import fit_tier

    frame = simulated_frames(customers=20_000, hours=24.0, seed=3)[Domain.payment]
    bucket = ((frame["card_id"].cast(pl.String).hash(11) % 100).to_numpy()).astype(np.int64)
    train, val, held = bucket < 60, (bucket >= 60) & (bucket < 80), bucket >= 80
    tier = fit_tier(
        frame.filter(pl.Series(train)), frame.filter(pl.Series(val)), Domain.payment, kinds=("gbdt",)
    )
    y_held = frame.filter(pl.Series(held))["label"].fill_null(0).to_numpy()
    y_val = frame.filter(pl.Series(val))["label"].fill_null(0).to_numpy()
    gbdt_held = tier.score(frame.filter(pl.Series(held)))["gbdt"]
    gbdt_val = tier.score(frame.filter(pl.Series(val)))["gbdt"]
    uncertain = (gbdt_held >= low) & (gbdt_held < high)
    info: dict[str, object] = {
        "data": "simulated payments, 20,000 customers, 24 h; cards split 60/20/20 (train/validation/test)",
        "held_out_rows": int(held.sum()),
        "held_out_positives": int(y_held.sum()),
        "routed_share": round(float(uncertain.mean()), 4),
        "positives_in_uncertain_band": int(y_held[uncertain].sum()),
        "gbdt_average_precision": classification_metrics(y_held, gbdt_held, 0.5)["average_precision"],
    }
    try:
        import torch  # noqa: F401 - the LSTM is trained here
    except ImportError:
        return info, None
    from finsecure.ml.deep import train_sequence_model

    spec = HistorySpec(key="card_id", features=CARD_HISTORY, steps=8, log_features=("amount",))
    started = time.process_time()
    deep = train_sequence_model(
        "lstm",
        frame,
        {"train": train, "validation": val, "held_out": held},
        domain="payment",
        history=spec,
        epochs=4,
        hidden=16,
        threads=1,
        max_seconds=300.0,
    )
    lstm_val, lstm_held = deep.scores["validation"], deep.scores["held_out"]
    fusion = FusionModel("payment", ("score__payment_gbdt", "score__payment_lstm")).fit(
        np.column_stack([gbdt_val, lstm_val]), y_val
    )
    every = fusion.predict_proba(np.column_stack([gbdt_held, lstm_held]))
    cascade = np.where(uncertain, every, gbdt_held)
    info.update(
        {
            "deep_model": "LSTM over the card's last 8 payments (hidden 16)",
            "lstm_training_cpu_s": round(time.process_time() - started, 1),
            "lstm_average_precision": classification_metrics(y_held, lstm_held, 0.5)["average_precision"],
            "every_model_average_precision": classification_metrics(y_held, every, 0.5)["average_precision"],
            "cascade_average_precision": classification_metrics(y_held, cascade, 0.5)["average_precision"],
            "fusion_weights": fusion.voters(),
            # Wider bands route more to the deep tier: what each would cost (share) and give (AP).
            "bands": [
                {
                    "band": [lo, hi],
                    "routed_share": round(float(band.mean()), 4),
                    "cascade_average_precision": classification_metrics(
                        y_held, np.where(band, every, gbdt_held), 0.5
                    )["average_precision"],
                }
                for lo, hi in ((0.02, 0.9), (0.05, 0.95), (0.005, 0.95), (0.001, 0.99), (0.0002, 0.999))
                for band in [(gbdt_held >= lo) & (gbdt_held < hi)]
            ],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        deep.model.export_onnx(Path(tmp) / "lstm.onnx")
        scorer = OnnxScorer(Path(tmp) / "lstm.onnx", intra_op_threads=threads)
    return info, scorer


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
    # The platform's band (finsecure.ml.deep.DEFAULT_BAND) by default.
    parser.add_argument("--low", type=float, default=DEFAULT_BAND[0], help="GBDT scores below: surely good")
    parser.add_argument(
        "--high", type=float, default=DEFAULT_BAND[1], help="GBDT scores at or above: surely bad"
    )
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
        one = OnnxScorer(folder / "gbdt.onnx", intra_op_threads=1)
        best_rate(lambda: one.predict_proba(X), BATCH, args.repeat, "gbdt_1thread")
        deep = deep_scorers(folder, args.threads)
        sequences = np.random.default_rng(2).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)
        for name in ("cnn", "lstm", "transformer"):
            scorer = deep.get(name)
            results[f"{name}_events_per_s"] = (
                round(best_rate(lambda s=scorer: s.predict_proba(sequences), BATCH, args.repeat, name))  # type: ignore[misc]
                if scorer is not None
                else None
            )
        info, _trained_lstm = cascade_quality(args.low, args.high, args.threads)
        share = float(info["routed_share"])  # type: ignore[arg-type]
        results["cascade_routed_share"] = share
        results["cascade_band"] = [args.low, args.high]
        results["cascade_quality"] = info
        # Average precision on the same held-out payments: GBDT alone, every model on every event, cascade.
        results["gbdt_only_average_precision"] = info.get("gbdt_average_precision")
        results["every_model_average_precision"] = info.get("every_model_average_precision")
        results["cascade_average_precision"] = info.get("cascade_average_precision")
        routed = max(1, round(share * BATCH))

        def cascade() -> None:
            p = gbdt.predict_proba(X)
            picked = np.flatnonzero((p >= args.low) & (p < args.high))[:routed]
            if len(picked) < routed:  # the benchmark's random rows: route the measured share anyway
                picked = np.arange(routed)
            for scorer in deep.values():
                scorer.predict_proba(sequences[picked])

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
