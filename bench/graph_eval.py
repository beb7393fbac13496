"""How well the entity graph finds what it is meant to find, on labelled data.

Evaluations (each can be chosen with ``--cases``):

- ``handbook``: fraud-handbook scenario 2 (compromised terminals). Each day from ``--from-day`` on, with
  the graph of the previous 28 days (TTL eviction) and the cards with a fraud in the 28 days before the
  book's 7-day feedback delay marked bad, terminals are ranked by the ring scoring's point-of-compromise score
  (how many of a terminal's cards are known bad). Truth of day d: terminals with scenario-2 frauds on day
  d. Reported: mean precision@10 and @50 per day, against the book's own terminal risk feature (share of
  the terminal's known-labelled transactions, same delay and window, that were fraud).
- ``simulator``: the bank-day simulator with more mule-ring and compromised-terminal campaigns. Cards of
  labelled payments count as confirmed fraud. Reported: compromised terminals found in the top-k of the
  point-of-compromise ranking (k = number of compromised terminals), and mule-ring members (customers,
  accounts, devices, addresses, payees) found by the ring scoring: entities within two links of a
  strong ring pattern (shared device/address, funnel) inside a community scored >= 0.5; precision and
  recall against the campaigns' own entities (victims excluded).
- ``sparkov``: whether propagated risk helps. Months 2-12 of 2023; at the start of each month the graph
  holds every earlier transaction and the cards with a fraud before that month are known bad; each
  transaction of the month gets its card's and its shop's propagated risk (personalised PageRank). A
  LightGBM model on plain transaction features (amount, hour, category, card's spending so far) is
  trained on months 2-7 and tested on 8-12: plain; plain + "card already confirmed"; plain + that +
  propagated risk (of cards not yet confirmed, and of shops). ``sparkov_ap_delta_propagation`` is what
  propagation adds over knowing the confirmed cards.

- ``models``: the honest test of propagated risk as a model input: the project's own fraud model
  (LightGBM on the feature step's columns, as ``finsecure evaluate`` trains it) with and without the
  graph risk columns of :func:`~finsecure.graph.risk.risk_history` (each day sees only earlier days'
  graph and earlier frauds), on the fraud handbook's book protocol (7-day delay) and sparkov's
  held-out cards. ``models_*_ap_delta`` is what the columns add (negative when they hurt). Slow: the
  day-by-day propagation takes minutes per data set.

Usage::

    .venv/bin/python bench/graph_eval.py [--cases handbook,simulator,sparkov,models]

Writes ``bench/results/graph_eval.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.graph.analytics import analyse, node_signals, propagate_risk, ring_members
from finsecure.graph.edges import ENTITY_TYPES, entity_type_of
from finsecure.graph.store import GraphStore
from finsecure.ingest.sources import open_source

RESULTS = Path(__file__).resolve().parent / "results" / "graph_eval.json"
HANDBOOK = "fraud-handbook/transactions_2018-04-01_to_2018-08-31.csv.gz"
SPARKOV = "sparkov-geo/transactions_2023.csv.gz"
DAY_US = 86_400_000_000


def datasets_dir() -> Path:
    env = os.environ.get("FINSECURE_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _canonical(name: str, rel: str) -> pl.DataFrame:
    frames = [chunk.frame for chunk in open_source(datasets_dir() / rel, name).chunks()]
    return pl.concat(frames, how="vertical_relaxed", rechunk=True)


def _terminal_scores(store: GraphStore) -> dict[str, float]:
    snap = store.snapshot(max_age_s=0)
    signals = node_signals(snap)
    terminal = ENTITY_TYPES.index("terminal_id")
    nodes = np.flatnonzero(snap.node_type == terminal)
    return {snap.keys[n].partition(":")[2]: float(signals.strength[n]) for n in nodes.tolist()}


def _precision_at(scores: dict[str, float], truth: set[str], k: int) -> float:
    ranked = sorted(scores.items(), key=lambda item: -item[1])[:k]
    return sum(1 for key, score in ranked if key in truth and score > 0) / k


def eval_handbook(results: dict[str, Any], *, from_day: str, delay_days: int = 7) -> None:
    frame = _canonical("fraud-handbook", HANDBOOK).sort("ts")
    frame = frame.with_columns(day=pl.col("ts").dt.date(), us=pl.col("ts").dt.epoch("us"))
    days = frame["day"].unique().sort().to_list()
    store = GraphStore(ttl_s=28 * 86_400.0)
    graph_p10: list[float] = []
    graph_p50: list[float] = []
    base_p10: list[float] = []
    base_p50: list[float] = []
    start = dt.date.fromisoformat(from_day)
    frauds = frame.filter(pl.col("label") == 1)
    for day in days:
        today = frame.filter(pl.col("day") == day)
        if day >= start:
            day_us = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1e6)
            known_until = day_us - delay_days * DAY_US
            recent = (pl.col("us") < known_until) & (pl.col("us") >= known_until - 28 * DAY_US)
            bad_cards = frauds.filter(recent)["card_id"].unique().to_list()
            store.clear_flags()
            store.set_flags((f"card_id:{c}" for c in bad_cards), bad=True)
            scores = _terminal_scores(store)
            truth = set(
                today.filter(pl.col("label_detail") == "compromised_terminal")["terminal_id"]
                .unique()
                .to_list()
            )
            # the book's terminal risk: share of fraud among the terminal's labelled transactions in the
            # 28 days before the delay
            window = frame.filter((pl.col("us") < known_until) & (pl.col("us") >= known_until - 28 * DAY_US))
            risk = window.group_by("terminal_id").agg(pl.col("label").mean().alias("risk"))
            baseline = dict(zip(risk["terminal_id"].to_list(), risk["risk"].to_list(), strict=True))
            if truth:
                graph_p10.append(_precision_at(scores, truth, 10))
                graph_p50.append(_precision_at(scores, truth, 50))
                base_p10.append(_precision_at(baseline, truth, 10))
                base_p50.append(_precision_at(baseline, truth, 50))
        store.update(Domain.payment, today.drop("day", "us"))
        store.evict()
    results.update(
        {
            "handbook_days": len(graph_p10),
            "handbook_delay_days": delay_days,
            "handbook_graph_precision_at_10": round(float(np.mean(graph_p10)), 4),
            "handbook_graph_precision_at_50": round(float(np.mean(graph_p50)), 4),
            "handbook_book_terminal_risk_precision_at_10": round(float(np.mean(base_p10)), 4),
            "handbook_book_terminal_risk_precision_at_50": round(float(np.mean(base_p50)), 4),
        }
    )


def eval_simulator(results: dict[str, Any], *, customers: int, days: float, seed: int) -> None:
    from finsecure.sim import SimConfig, SimulatorSource

    config = SimConfig(customers=customers, duration_s=days * 86_400.0, seed=seed).with_campaign_rates(
        mule_ring=6.0, compromised_terminal=6.0
    )
    source = SimulatorSource(config)
    store = GraphStore(ttl_s=30 * 86_400.0)
    bad_cards: set[str] = set()
    events = 0
    for chunk in source.chunks():
        store.update(chunk.domain, chunk.frame)
        events += chunk.frame.height
        if chunk.domain == Domain.payment:
            labelled = chunk.frame.filter(pl.col("label") == 1)["card_id"].drop_nulls().unique().to_list()
            bad_cards.update(labelled)
    truth = source.truth
    store.set_flags((f"card_id:{c}" for c in bad_cards), bad=True)
    started = time.perf_counter()
    analysis = analyse(store.snapshot(max_age_s=0))
    results["simulator_events"] = events
    results["simulator_graph_edges"] = analysis.snapshot.edge_count
    results["simulator_analysis_s"] = round(time.perf_counter() - started, 3)

    # compromised terminals
    terminals = {
        key
        for c in truth.campaigns
        if c.campaign_type == "compromised_terminal"
        for key in c.entities["terminal_id"]
    }
    scores = _terminal_scores(store)
    k = max(1, len(terminals))
    top = [key for key, score in sorted(scores.items(), key=lambda item: -item[1])[:k] if score > 0]
    results["simulator_compromised_terminals"] = len(terminals)
    results["simulator_terminal_recall_at_k"] = round(len(set(top) & terminals) / k, 4)

    # mule rings
    member_types = ("user_id", "account_id", "device_id", "src_ip", "payee_id")
    ring_truth = {
        f"{entity_type_of(t)}:{key}"
        for c in truth.campaigns
        if c.campaign_type == "mule_ring"
        for t in member_types
        for key in c.entities.get(t, ())
    }
    snap = analysis.snapshot
    found = {snap.keys[n] for n in ring_members(snap, analysis.signals).tolist()}
    any_campaign = {
        f"{entity_type_of(t)}:{key}"
        for c in truth.campaigns
        for t, keys in c.entities.items()
        if not t.startswith("victim_")
        for key in keys
    }
    results["simulator_ring_precision_any_campaign"] = (
        round(len(found & any_campaign) / len(found), 4) if found else 0.0
    )
    hits = len(found & ring_truth)
    results["simulator_mule_rings"] = sum(1 for c in truth.campaigns if c.campaign_type == "mule_ring")
    results["simulator_mule_members"] = len(ring_truth)
    results["simulator_mule_flagged_entities"] = len(found)
    results["simulator_mule_precision"] = round(hits / len(found), 4) if found else 0.0
    results["simulator_mule_recall"] = round(hits / len(ring_truth), 4) if ring_truth else 0.0


def eval_sparkov(results: dict[str, Any]) -> None:
    import lightgbm
    from sklearn.metrics import average_precision_score

    frame = _canonical("sparkov", SPARKOV).sort("ts").with_columns(month=pl.col("ts").dt.month())
    store = GraphStore(ttl_s=400 * 86_400.0)
    parts: list[pl.DataFrame] = []
    for month in range(1, 13):
        rows = frame.filter(pl.col("month") == month)
        if month >= 2:
            past_fraud = frame.filter((pl.col("month") < month) & (pl.col("label") == 1))
            known = set(past_fraud["card_id"].unique().to_list())
            store.clear_flags()
            store.set_flags((f"card_id:{c}" for c in known), bad=True)
            snap = store.snapshot(max_age_s=0)
            risk = propagate_risk(snap)
            lookup = {k: float(risk[i]) for i, k in enumerate(snap.keys)}
            cards = rows["card_id"].to_list()
            parts.append(
                rows.with_columns(
                    card_bad=pl.Series([float(c in known) for c in cards]),
                    # what propagation adds: the risk of cards not yet known bad (known ones carry card_bad)
                    card_prop=pl.Series(
                        [0.0 if c in known else lookup.get(f"card_id:{c}", 0.0) for c in cards]
                    ),
                    shop_risk=pl.Series(
                        [lookup.get(f"merchant_id:{m}", 0.0) for m in rows["merchant_id"].to_list()]
                    ),
                )
            )
        store.update(Domain.payment, rows.drop("month"))
    data = pl.concat(parts).with_columns(
        hour=pl.col("ts").dt.hour(),
        category=pl.col("merchant_category").cast(pl.Categorical).to_physical(),
        card_mean=pl.col("amount").cum_sum().over("card_id") / pl.int_range(1, pl.len() + 1).over("card_id"),
    )
    plain = ["amount", "hour", "category", "card_mean"]
    train, test = data.filter(pl.col("month") <= 7), data.filter(pl.col("month") >= 8)
    for label, columns in (
        ("plain", plain),
        ("known_bad_card", [*plain, "card_bad"]),
        ("graph", [*plain, "card_bad", "card_prop", "shop_risk"]),
    ):
        model = lightgbm.LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=31, verbose=-1)
        model.fit(train.select(columns).to_numpy(), train["label"].to_numpy())
        scores = np.asarray(model.predict_proba(test.select(columns).to_numpy()))[:, 1]
        results[f"sparkov_ap_{label}"] = round(
            float(average_precision_score(test["label"].to_numpy(), scores)), 4
        )
    for stale in ("sparkov_ap_shop_risk", "sparkov_ap_delta_shop_risk_only"):
        results.pop(stale, None)
    results["sparkov_ap_delta_graph_vs_plain"] = round(
        results["sparkov_ap_graph"] - results["sparkov_ap_plain"], 4
    )
    results["sparkov_ap_delta_propagation"] = round(
        results["sparkov_ap_graph"] - results["sparkov_ap_known_bad_card"], 4
    )
    results["sparkov_test_frauds"] = int(test["label"].sum())


def eval_models(results: dict[str, Any], *, cache_dir: Path) -> None:
    """The project's own fraud model (LightGBM on the feature step's columns, as ``finsecure evaluate``
    trains it) with and without the propagated graph risk columns, on the book's protocol for the fraud
    handbook (7-day feedback delay) and the held-out-cards protocol for sparkov (frauds known from the
    day after they happen). Graph risk comes from :func:`~finsecure.graph.risk.risk_history`: each day
    sees only earlier days' graph and earlier confirmed frauds."""
    from sklearn.metrics import average_precision_score

    from finsecure.graph.risk import GRAPH_RISK_COLUMNS, risk_history
    from finsecure.ml.data import DATASETS, featured_frame
    from finsecure.ml.evaluate import _keep_columns, protocols
    from finsecure.ml.feedback import delayed_label_features, feedback_columns
    from finsecure.ml.metrics import classification_metrics
    from finsecure.ml.train import fit_tier

    graph_columns = GRAPH_RISK_COLUMNS[Domain.payment]
    for name, short, delay in (("fraud-handbook", "handbook", 7), ("sparkov", "sparkov", 0)):
        info = DATASETS[name]
        frame = featured_frame(datasets_dir() / info.files["all"], info.format_name, cache_dir=cache_dir)
        started = time.perf_counter()
        frame = risk_history(frame, Domain.payment, label=info.label, delay_s=delay * 86_400.0)
        results[f"models_{short}_graph_features_s"] = round(time.perf_counter() - started, 1)
        results[f"models_{short}_delay_days"] = delay
        if info.feedback_key is not None:
            frame = delayed_label_features(frame, info.feedback_key, label=info.label)
        part = pl.concat(
            [_keep_columns(frame, Domain.payment), frame.select(graph_columns)], how="horizontal"
        )
        base = feedback_columns(info.feedback_key) if info.feedback_key else ()
        protocol = protocols(info, {"all": part}, seed=0)[0]
        for variant, extra in (("without_graph", base), ("with_graph", (*base, *graph_columns))):
            tier = fit_tier(
                protocol.train, protocol.validation, Domain.payment, kinds=("gbdt",), label=info.label,
                time_features=info.time_features, seed=0, extra_features=extra, params=info.params,
            )  # fmt: skip
            for split, test in protocol.tests.items():
                y = test[info.label].fill_null(0).cast(pl.Int32).to_numpy()
                scores = tier.score(test)["gbdt"]
                metrics = classification_metrics(y, scores, tier.thresholds.get("gbdt", 0.5))
                key = f"models_{short}_{split}_{variant}"
                results[f"{key}_ap"] = round(float(average_precision_score(y, scores)), 4)
                results[f"{key}_recall_at_1pct_fpr"] = round(float(metrics["recall_at_1pct_fpr"]), 4)
        for split in protocol.tests:
            key = f"models_{short}_{split}"
            results[f"{key}_ap_delta"] = round(
                results[f"{key}_with_graph_ap"] - results[f"{key}_without_graph_ap"], 4
            )
        test_rows = next(iter(protocol.tests.values()))
        results[f"models_{short}_test_rows_with_graph_risk"] = int((test_rows["graph__risk"] > 0).sum())
        results[f"models_{short}_test_frauds"] = int(test_rows[info.label].sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default="handbook,simulator,sparkov,models")
    parser.add_argument("--from-day", default="2018-07-01", help="first handbook day evaluated")
    parser.add_argument("--sim-customers", type=int, default=20_000)
    parser.add_argument("--sim-days", type=float, default=2.0)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("data/cache/ml"), help="featured datasets (models case)"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if RESULTS.exists():
        results.update(json.loads(RESULTS.read_text()))
    cases = set(args.cases.split(","))
    runs: tuple[tuple[str, Callable[[], None]], ...] = (
        (
            "simulator",
            lambda: eval_simulator(results, customers=args.sim_customers, days=args.sim_days, seed=7),
        ),
        ("handbook", lambda: eval_handbook(results, from_day=args.from_day)),
        ("sparkov", lambda: eval_sparkov(results)),
        ("models", lambda: eval_models(results, cache_dir=args.cache_dir)),
    )
    for case, run in runs:
        if case in cases:
            started = time.perf_counter()
            run()
            results[f"{case}_eval_s"] = round(time.perf_counter() - started, 1)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
