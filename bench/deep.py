"""The deep tier on real data: training (``train``) and scoring speed (the default, part of ``make bench``).

``speed`` (default)
    Scores batches of 10,000 events with ONNX Runtime on two threads, for the CNN (one network-flow
    record per event), the LSTM and the Transformer (16-step entity histories). It uses the graphs that
    ``train`` wrote to ``var/deep/`` when they exist, else networks of the same shapes with fresh weights
    (speed does not depend on the weights). Numbers are the best of ``--repeat`` timed runs: events per
    second of wall time through :class:`~finsecure.ml.contract.OnnxScorer` (the serving path, two
    threads), per CPU second of that, and per CPU second of a one-thread session that does not spin
    (``*_events_per_cpu_s_1thread``: the work itself, the steadiest number when other jobs share the
    machine; two idle cores give at most twice that).
    Writes ``bench/results/deep.json`` with ``cnn_events_per_s``, ``lstm_events_per_s`` and
    ``transformer_events_per_s`` (``bench/scoring.py`` folds them into ``scoring.json``), and
    ``history_events_per_s``: the history step building 16-step sequences (100,000 cards).

``train``
    Trains on the shared datasets (``FINSECURE_DATASETS``, default ``../shared/datasets``) through the
    same feature and history code as serving, and writes each model's ONNX graph and metadata (designs,
    history spec, threshold, metrics) to ``var/deep/`` and the metrics to ``bench/results/deep_train.json``:

    - ``cnn-nsl-kdd``: 1-D CNN over a connection's features; trained on KDDTrain+ only (the last seventh
      for validation), scored on KDDTest+ and KDDTest-21.
    - ``lstm-sparkov``: LSTM over each card's last 16 payments. Cards are split 70/10/20 (train,
      validation, test; no card in two splits) and time too: training and validation rows are from
      January to September, ``holdout_cards`` rows are the test cards' October to December.
    - ``lstm-fraud-handbook``: LSTM over each customer's last 16 payments, the book's protocol: trained on
      2018-07-25..31 (validation: the week before), scored on 2018-08-08..14 (``book_test_week``).
    - ``transformer-simulated``: Transformer over each user's last 16 events of any of sign-ins, cloud
      calls and payments (one history across domains, with a flag per domain), on three simulated days
      with campaigns; trained on day 1, validated on day 2, scored on day 3.

Usage::

    .venv/bin/python bench/deep.py [speed] [--repeat 5]
    .venv/bin/python bench/deep.py train [--only cnn-nsl-kdd,lstm-sparkov,...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.features.history import HistorySpec
from finsecure.ml.contract import OnnxScorer
from finsecure.ml.deep import DeepTraining

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ARTEFACTS = ROOT / "var" / "deep"
BATCH_ROWS = 10_000
STEPS = 16
THREADS = [2]
MAX_SECONDS = [900.0]
"""Training threads (``--threads``); one is faster when the machine is oversubscribed."""

CARD_FEATURES = (
    "amount",
    "time__hour",
    "cat__merchant_category",
    "geo__home_distance_km",
    "geo__distance_km",
    "geo__speed_kmh",
    "card_id__secs_since_last",
    "card_id__amount_zscore",
    "card_id__count_24h",
    "card_id__sum_amount_24h",
    "novel__card_merchant",
)
CARD_LOGS = (
    "amount",
    "geo__home_distance_km",
    "geo__distance_km",
    "geo__speed_kmh",
    "card_id__secs_since_last",
    "card_id__count_24h",
    "card_id__sum_amount_24h",
)
USER_FEATURES = (
    "amount",
    "time__hour",
    "user_id__count_1h",
    "user_id__count_24h",
    "user_id__secs_since_last",
    "user_id__failures_1h",
    "user_id__failed_logins_1h",
    "geo__distance_km",
    "geo__speed_kmh",
    "geo__new_country",
    "novel__user_device",
    "novel__user_ip",
    "mfa_used",
)
USER_LOGS = (
    "amount",
    "user_id__count_1h",
    "user_id__count_24h",
    "user_id__secs_since_last",
    "user_id__failures_1h",
    "user_id__failed_logins_1h",
    "geo__distance_km",
    "geo__speed_kmh",
)


def datasets_dir() -> Path:
    env = os.environ.get("FINSECURE_DATASETS")
    return Path(env) if env else ROOT.parent / "shared" / "datasets"


def _log(message: str) -> None:
    print(f"{dt.datetime.now(dt.UTC):%H:%M:%S} {message}", flush=True)


# -- training --------------------------------------------------------------------------------------


def _featured(name: str, part: str) -> pl.DataFrame:
    from finsecure.ml.data import DATASETS, featured_frame

    info = DATASETS[name]
    cache = Path(os.environ.get("FINSECURE_ML_CACHE", ROOT / "var" / "cache" / "ml"))
    return featured_frame(datasets_dir() / info.files[part], info.format_name, cache_dir=cache)


def _masks(rows: int, **named: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(mask, dtype=np.bool_) for name, mask in named.items() if len(mask) == rows}


def _cnn_nsl_kdd() -> dict[str, Any]:
    from finsecure.ml.deep import train_sequence_model

    parts = [_featured("nsl-kdd", part) for part in ("KDDTrain+", "KDDTest+", "KDDTest-21")]
    sizes = [p.height for p in parts]
    which = np.repeat(np.arange(3), sizes)
    stream = [("network", p) for p in parts]
    splits = _masks(len(which), train=which == 0, **{"KDDTest+": which == 1, "KDDTest-21": which == 2})
    return _run(
        "cnn-nsl-kdd",
        lambda: train_sequence_model(
            "cnn",
            stream,
            splits,
            domain="network",
            time_features=False,
            epochs=20,
            batch_size=256,
            patience=4,
            lr=2e-3,
            channels=32,
            max_seconds=MAX_SECONDS[0],
            threads=THREADS[0],
            log=_log,
        ),
    )


def _card_split(cards: pl.Series, seed: str) -> np.ndarray:
    """A stable number in [0, 100) per card (its split bucket)."""
    unique = cards.unique().drop_nulls().to_list()
    bucket = {c: int(hashlib.sha256(f"{seed}{c}".encode()).hexdigest()[:8], 16) % 100 for c in unique}
    return np.array([bucket.get(c, 0) for c in cards.to_list()], dtype=np.int64)


def _lstm_sparkov() -> dict[str, Any]:
    from finsecure.ml.deep import train_sequence_model

    frame = _featured("sparkov", "all")
    bucket = _card_split(frame["card_id"], "sparkov-cards")
    early = (frame["ts"] < dt.datetime(2023, 10, 1, tzinfo=dt.UTC)).to_numpy()
    splits = _masks(
        frame.height,
        train=(bucket < 70) & early,
        validation=(bucket >= 70) & (bucket < 80) & early,
        holdout_cards=(bucket >= 80) & ~early,
        holdout_cards_all_year=bucket >= 80,
    )
    spec = HistorySpec(key="card_id", features=CARD_FEATURES, steps=STEPS, log_features=CARD_LOGS)
    return _run(
        "lstm-sparkov",
        lambda: train_sequence_model(
            "lstm",
            frame,
            splits,
            domain="payment",
            history=spec,
            max_train_rows=120_000,
            epochs=12,
            batch_size=256,
            patience=3,
            lr=3e-3,
            hidden=32,
            max_seconds=MAX_SECONDS[0],
            threads=THREADS[0],
            log=_log,
        ),
    )


def _lstm_fraud_handbook() -> dict[str, Any]:
    from finsecure.ml.deep import train_sequence_model

    frame = _featured("fraud-handbook", "all")
    day = frame["ts"].dt.date().to_numpy()

    def between(a: str, b: str) -> np.ndarray:
        return (day >= np.datetime64(a)) & (day <= np.datetime64(b))

    splits = _masks(
        frame.height,
        train=between("2018-07-25", "2018-07-31"),
        validation=between("2018-07-18", "2018-07-24"),
        book_test_week=between("2018-08-08", "2018-08-14"),
    )
    # No coordinates in this set, and terminals have no windows of their own in the feature step (the
    # mapping keys them as terminal_id), so the compromised-terminal scenario is only seen through amounts.
    features = tuple(name for name in CARD_FEATURES if not name.startswith("geo__"))
    logs = tuple(name for name in CARD_LOGS if name in features)
    spec = HistorySpec(key="card_id", features=features, steps=STEPS, log_features=logs)
    test = splits["book_test_week"]

    def card_precision(result: DeepTraining) -> None:
        """The book's card precision@100: per test day, the share of the 100 cards with the highest score
        that had a fraud that day, averaged over the days (without the book's removal of cards already
        caught on earlier days, which can only raise it)."""
        rows = frame.filter(pl.Series(test)).select("card_id", "label", day=pl.col("ts").dt.date())
        rows = rows.with_columns(score=pl.Series(result.scores["book_test_week"]))
        per_card = rows.group_by("day", "card_id").agg(pl.col("score").max(), pl.col("label").max())
        top = per_card.sort("score", descending=True).group_by("day").head(100)
        daily = top.group_by("day").agg(pl.col("label").mean())
        precision = float(np.mean(daily["label"].to_numpy()))
        result.metrics["book_test_week"]["card_precision_at_100"] = precision

    return _run(
        "lstm-fraud-handbook",
        lambda: train_sequence_model(
            "lstm",
            frame,
            splits,
            domain="payment",
            history=spec,
            epochs=12,
            batch_size=256,
            patience=3,
            lr=3e-3,
            hidden=32,
            max_seconds=MAX_SECONDS[0],
            threads=THREADS[0],
            log=_log,
        ),
        card_precision,
    )


def _transformer_simulated() -> dict[str, Any]:
    from finsecure.features import FeatureStep
    from finsecure.ml.deep import train_sequence_model
    from finsecure.pipeline.batch import Batch
    from finsecure.sim.config import SimConfig
    from finsecure.sim.source import SimulatorSource

    config = SimConfig(customers=5_000, duration_s=3 * 86_400, seed=11, campaign_scale=3.0)
    source = SimulatorSource(config)
    step = FeatureStep()
    stream: list[tuple[str, pl.DataFrame]] = []
    for chunk in source.chunks():
        if chunk.domain.value == "network":
            continue  # network flows are the CNN's; a user's behaviour is sign-ins, cloud calls, payments
        stream.append((chunk.domain.value, step.process(Batch(chunk.domain, chunk.frame, "sim")).frame))
    step.close()
    start = config.start
    days = np.concatenate([((f["ts"] - start).dt.total_seconds() // 86_400).to_numpy() for _, f in stream])
    splits = _masks(len(days), train=days == 0, validation=days == 1, day_3=days == 2)
    spec = HistorySpec(
        key="user_id",
        features=USER_FEATURES,
        steps=STEPS,
        domains=("auth", "cloud", "payment"),
        domain_flags=True,
        log_features=USER_LOGS,
    )
    return _run(
        "transformer-simulated",
        lambda: train_sequence_model(
            "transformer",
            stream,
            splits,
            domain="auth",
            history=spec,
            epochs=12,
            batch_size=256,
            patience=3,
            lr=2e-3,
            d_model=32,
            heads=4,
            layers=1,
            ff=64,
            max_seconds=MAX_SECONDS[0],
            threads=THREADS[0],
            log=_log,
        ),
    )


def _run(
    name: str, train: Callable[[], DeepTraining], after: Callable[[DeepTraining], None] | None = None
) -> dict[str, Any]:
    _log(f"{name}: training")
    started = time.monotonic()
    result = train()
    if after is not None:
        after(result)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    result.model.export_onnx(ARTEFACTS / f"{name}.onnx")
    meta = result.metadata()
    meta["wall_s"] = round(time.monotonic() - started, 1)
    (ARTEFACTS / f"{name}.json").write_text(json.dumps(meta, indent=2, default=float))
    _log(f"{name}: {json.dumps(result.metrics, default=float)}")
    return meta


RECIPES: dict[str, Callable[[], dict[str, Any]]] = {
    "cnn-nsl-kdd": _cnn_nsl_kdd,
    "lstm-sparkov": _lstm_sparkov,
    "lstm-fraud-handbook": _lstm_fraud_handbook,
    "transformer-simulated": _transformer_simulated,
}


def train(only: list[str]) -> None:
    for name in only:
        RECIPES[name]()
    # The summary is rebuilt from every model's metadata, so runs of different models (even at the same
    # time) add up instead of overwriting each other.
    results = {}
    for path in sorted(ARTEFACTS.glob("*.json")):
        meta = json.loads(path.read_text())
        results[path.stem] = {key: meta[key] for key in ("metrics", "threshold", "wall_s", "training")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, sort_keys=True, default=float)
    (RESULTS / "deep_train.json").write_text(text + "\n")


# -- speed ------------------------------------------------------------------------------------------


def _graph(name: str, make: Callable[[], bytes]) -> tuple[bytes, str]:
    """The trained graph for ``name`` if ``train`` wrote one, else a fresh network of the same shape."""
    path = ARTEFACTS / f"{name}.onnx"
    if path.exists():
        return path.read_bytes(), "trained"
    return make(), "untrained"


def _fresh(kind: str, n_features: int, rank: int) -> Callable[[], bytes]:
    def make() -> bytes:
        import torch

        from finsecure.ml.deep import export_module_onnx
        from finsecure.ml.nn import SequenceCNN, SequenceLSTM, SequenceTransformer

        torch.manual_seed(0)
        module: torch.nn.Module
        if kind == "cnn":
            module = SequenceCNN(n_features, over="features", channels=32)
        elif kind == "lstm":
            module = SequenceLSTM(n_features, hidden=32)
        else:
            module = SequenceTransformer(n_features, steps=STEPS, d_model=32, heads=4, layers=1, ff=64)
        return export_module_onnx(module.eval(), steps=STEPS, n_features=n_features, rank=rank)

    return make


def _time(score: Callable[[np.ndarray], object], X: np.ndarray, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` events per second of wall time and per CPU second."""
    score(X)  # warm-up
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        score(X)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return len(X) / best_wall, len(X) / max(best_cpu, 1e-9)


def _one_thread(path: Path) -> Callable[[np.ndarray], object]:
    """A one-thread session without spin-waiting: its CPU time is the work itself, whatever else runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda X: session.run(None, {"x": X})


def _history_speed(repeat: int) -> float:
    """Events per second through :class:`SequenceHistory` (10,000-event batches, 100,000 cards)."""
    from finsecure.features.history import SequenceHistory

    rng = np.random.default_rng(1)
    spec = HistorySpec(key="card_id", features=CARD_FEATURES, steps=STEPS, log_features=CARD_LOGS)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    batches = []
    for b in range(20):
        frame = pl.DataFrame(
            {
                "ts": [start + dt.timedelta(seconds=b * 600 + i * 0.06) for i in range(BATCH_ROWS)],
                "card_id": pl.Series(rng.integers(0, 100_000, BATCH_ROWS)).cast(pl.String),
                **{name: rng.exponential(10.0, BATCH_ROWS) for name in CARD_FEATURES},
            }
        )
        batches.append(frame)
    best = float("inf")
    for _ in range(max(repeat // 2, 1)):
        history = SequenceHistory(spec)
        history.update(batches[0])  # compile and warm
        started = time.perf_counter()
        for frame in batches[1:]:
            history.update(frame)
        best = min(best, time.perf_counter() - started)
    events_per_s = BATCH_ROWS * (len(batches) - 1) / best
    _log(f"history: {events_per_s:,.0f} events/s")
    return events_per_s


def _step_speed() -> float | None:
    """Events per second through the whole serving path of the trained sparkov LSTM (design columns,
    history, ONNX Runtime on every row), over sparkov's first 300,000 payments; None without them."""
    from finsecure.ml.deep import SequenceScoringStep, ServedSequenceModel
    from finsecure.pipeline.batch import Batch

    onnx_path, meta_path = ARTEFACTS / "lstm-sparkov.onnx", ARTEFACTS / "lstm-sparkov.json"
    if not (onnx_path.exists() and meta_path.exists() and (datasets_dir() / "README.md").exists()):
        return None
    frame = _featured("sparkov", "all").head(300_000)
    step = SequenceScoringStep([ServedSequenceModel.load(onnx_path, meta_path)])
    step.process(Batch(Domain.payment, frame.head(BATCH_ROWS), "bench"))
    started = time.perf_counter()
    for offset in range(BATCH_ROWS, frame.height, BATCH_ROWS):
        step.process(Batch(Domain.payment, frame.slice(offset, BATCH_ROWS), "bench"))
    rate = (frame.height - BATCH_ROWS) / (time.perf_counter() - started)
    _log(f"lstm serving step (design + history + scoring): {rate:,.0f} events/s")
    return rate


def speed(repeat: int) -> None:
    import tempfile

    rng = np.random.default_rng(0)
    cases = {
        "cnn": ("cnn-nsl-kdd", 31, 2),
        "lstm": ("lstm-sparkov", len(CARD_FEATURES), 3),
        "transformer": ("transformer-simulated", len(USER_FEATURES) + 3, 3),
    }
    out: dict[str, Any] = {"batch_rows": BATCH_ROWS, "threads": 2, "steps": STEPS, "repeat": repeat}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (artefact, n_features, rank) in cases.items():
            try:
                data, origin = _graph(artefact, _fresh(kind, n_features, rank))
            except ImportError:  # neither a trained graph nor PyTorch to build one
                _log(f"{kind}: skipped (no var/deep/{artefact}.onnx and no PyTorch)")
                continue
            path = Path(tmp) / f"{kind}.onnx"
            path.write_bytes(data)
            scorer = OnnxScorer(path, intra_op_threads=2)
            width = scorer.input_shape[-1]
            n_features = width if isinstance(width, int) else n_features
            shape = (BATCH_ROWS, n_features) if scorer.rank == 2 else (BATCH_ROWS, STEPS, n_features)
            X = np.abs(rng.normal(size=shape)).astype(np.float32)
            per_wall, per_cpu = _time(scorer.predict_proba, X, repeat)
            _, one_cpu = _time(_one_thread(path), X, repeat)
            out[f"{kind}_events_per_s"] = round(per_wall)
            out[f"{kind}_events_per_cpu_s"] = round(per_cpu)
            out[f"{kind}_events_per_cpu_s_1thread"] = round(one_cpu)
            out[f"{kind}_graph"] = origin
            out[f"{kind}_features"] = n_features
            _log(f"{kind} ({origin}, {n_features} features): {per_wall:,.0f}/s, {per_cpu:,.0f} per CPU s")
    out["history_events_per_s"] = round(_history_speed(repeat))
    step_rate = _step_speed()
    if step_rate is not None:
        out["lstm_step_events_per_s"] = round(step_rate)
    out["load_average_1m"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deep.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(json.dumps(out, indent=2, sort_keys=True))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="speed", choices=["speed", "train"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default=",".join(RECIPES))
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="training time budget per model")
    args = parser.parse_args(argv)
    THREADS[0] = args.threads
    MAX_SECONDS[0] = args.max_seconds
    if args.mode == "train":
        train([name for name in args.only.split(",") if name])
    else:
        speed(args.repeat)


if __name__ == "__main__":
    main(sys.argv[1:])
