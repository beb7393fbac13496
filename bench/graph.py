"""Entity-graph benchmark: update throughput, Leiden on a 1 M-edge graph, 2-hop neighbourhood latency.

Cases:

- ``update``: :meth:`GraphStore.update` over real payment streams (fraud-handbook then sparkov, through
  their shipped mappings) in 10,000-event batches: edge aggregation (Polars), dense ids and the NumPy
  edge arrays. Falls back to :func:`~finsecure.pipeline.testing.sample_frame` rows when the shared
  datasets are absent (reported as ``update_source``).
- ``leiden_1m``: a graph of exactly 1,000,000 card-terminal edges with the locality of real card use
  (cards shop mostly in their own town: 250,000 cards, 25,000 terminals, 1,000 towns, 5 % of uses
  elsewhere). Timed: the igraph snapshot build, whole-graph Leiden (igraph's C implementation of
  Leiden, modularity), a warm-started re-run after 1 % new edges, personalised PageRank from 100
  known-bad cards, and the whole analysis (communities + risk + ring scoring).
- ``neighbourhood``: the API's entity view (2 hops, capped at 300 nodes, payload objects built) for
  1,000 random entities of the 1 M-edge graph: p50/p99 latency (wall and CPU of the calling thread).
- ``graph_risk``: propagated risk on the 1 M-edge graph (100 known-bad cards) and the live pipeline's
  :class:`~finsecure.graph.risk.GraphRiskStep` on batches of 10,000 payments (three risk columns).

The machine is shared: wall-clock figures move with the load average (reported beside them); the
per-CPU-second figures (``*_per_cpu_s``, ``*_cpu_*``) are steadier.

Usage::

    .venv/bin/python bench/graph.py [--leidenalg]

``--leidenalg`` also times the ``leidenalg`` package on the 1 M-edge graph (slow: minutes).
Writes ``bench/results/graph.json`` (a flat object of numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.graph import service as graph_service
from finsecure.graph.analytics import analyse, communities, current_analysis, propagate_risk
from finsecure.graph.risk import GraphRisk, GraphRiskStep
from finsecure.graph.store import GraphStore
from finsecure.ingest.sources import open_source
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import sample_frame

BATCH_ROWS = 10_000
RESULTS = Path(__file__).resolve().parent / "results" / "graph.json"
HANDBOOK = "fraud-handbook/transactions_2018-04-01_to_2018-08-31.csv.gz"
SPARKOV = "sparkov-geo/transactions_2023.csv.gz"


def datasets_dir() -> Path | None:
    env = os.environ.get("FINSECURE_DATASETS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return path if (path / HANDBOOK).exists() else None


def payment_stream() -> tuple[str, pl.DataFrame]:
    root = datasets_dir()
    if root is None:
        return "sample_frame", sample_frame(Domain.payment, 2_000_000, entities=200_000)
    frames = [
        chunk.frame
        for name, rel in (("fraud-handbook", HANDBOOK), ("sparkov", SPARKOV))
        for chunk in open_source(root / rel, name).chunks()
    ]
    return "fraud-handbook+sparkov", pl.concat(frames, how="vertical_relaxed", rechunk=True)


def bench_update(results: dict[str, float | str]) -> None:
    source, frame = payment_stream()
    batches = [frame.slice(start, BATCH_ROWS) for start in range(0, frame.height, BATCH_ROWS)]
    store = GraphStore()
    for batch in batches[:3]:  # warm-up (Polars plans, allocations)
        store.update(Domain.payment, batch)
    store = GraphStore()
    latencies = np.empty(len(batches))
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        store.update(Domain.payment, batch)
        latencies[i] = time.perf_counter() - start
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    snap_start = time.perf_counter()
    snap = store.snapshot(max_age_s=0)
    results.update(
        {
            "update_source": source,
            "update_events": frame.height,
            "update_events_per_s": round(frame.height / wall, 1),
            "update_events_per_cpu_s": round(frame.height / cpu, 1),
            "update_load_average_1m": round((load_before + os.getloadavg()[0]) / 2, 2),
            "update_p50_batch_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
            "update_p99_batch_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
            "update_nodes": snap.node_count,
            "update_edges": snap.edge_count,
            "update_snapshot_s": round(time.perf_counter() - snap_start, 3),
        }
    )


def million_edge_frame(seed: int = 0) -> pl.DataFrame:
    """Exactly 1,000,000 distinct card-terminal links with town locality, as aggregated edges."""
    rng = np.random.default_rng(seed)
    cards, terminals, towns, target = 250_000, 25_000, 1_000, 1_000_000
    card_town = rng.integers(0, towns, cards)
    per_town = terminals // towns
    n = int(target * 1.1)  # a few draws collide; trimmed to the target after de-duplication
    card = rng.integers(0, cards, n)
    town = np.where(rng.random(n) < 0.05, rng.integers(0, towns, n), card_town[card])
    terminal = town * per_town + rng.integers(0, per_town, n)
    pairs = np.unique(card.astype(np.int64) * terminals + terminal)[:target]
    rng.shuffle(pairs)
    card, terminal = pairs // terminals, pairs % terminals
    now = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() * 1e6)
    return pl.DataFrame(
        {
            "relation": ["used_at"] * len(pairs),
            "src_type": ["card_id"] * len(pairs),
            "src_key": pl.Series(card).cast(pl.String),
            "dst_type": ["terminal_id"] * len(pairs),
            "dst_key": pl.Series(terminal).cast(pl.String),
            "count": np.ones(len(pairs), np.int64),
            "amount": rng.gamma(2.0, 30.0, len(pairs)),
            "first_seen": np.full(len(pairs), now, np.int64),
            "last_seen": np.full(len(pairs), now, np.int64),
        }
    )


def bench_million(results: dict[str, float | str], *, with_leidenalg: bool) -> None:
    edges = million_edge_frame()
    store = GraphStore()
    start = time.perf_counter()
    store.add_edges(edges)
    results["million_add_edges_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    snap = store.snapshot(max_age_s=0)
    results["million_snapshot_s"] = round(time.perf_counter() - start, 3)
    results["million_nodes"] = snap.node_count
    results["million_edges"] = snap.edge_count

    start, cpu = time.perf_counter(), time.process_time()
    membership = communities(snap)
    results["leiden_1m_edges_s"] = round(time.perf_counter() - start, 3)
    results["leiden_1m_edges_cpu_s"] = round(time.process_time() - cpu, 3)
    results["leiden_1m_communities"] = int(membership.max()) + 1
    results["leiden_1m_modularity"] = round(float(snap.graph.modularity(membership.tolist())), 4)

    rng = np.random.default_rng(1)
    extra = edges.sample(10_000, seed=1).with_columns(
        pl.Series("src_key", rng.integers(0, 250_000, 10_000)).cast(pl.String)
    )
    store.add_edges(extra)
    grown = store.snapshot(max_age_s=0)
    start = time.perf_counter()
    communities(grown, previous=membership)
    results["leiden_1m_warm_rerun_s"] = round(time.perf_counter() - start, 3)

    bad = [f"card_id:{k}" for k in rng.choice(250_000, 100, replace=False).tolist()]
    store.set_flags(bad, bad=True)
    snap = store.snapshot(max_age_s=0)
    start = time.perf_counter()
    propagate_risk(snap)
    results["pagerank_1m_edges_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    analysis = analyse(snap)
    results["analysis_1m_edges_s"] = round(time.perf_counter() - start, 3)
    results["analysis_1m_rings"] = len(analysis.rings)
    store.cache["analysis"] = analysis

    current_analysis(store, max_age_s=3600)  # the API reuses this analysis
    nodes = rng.choice(snap.node_count, 1000, replace=False)
    latencies = np.empty(len(nodes))
    cpu_times = np.empty(len(nodes))
    sizes = np.empty(len(nodes))
    for i, node in enumerate(nodes.tolist()):
        entity_type, _, key = snap.keys[node].partition(":")
        begin, begin_cpu = time.perf_counter(), time.thread_time()
        view = graph_service.entity_view(store=store, entity_type=entity_type, entity_id=key, hops=2)
        latencies[i] = time.perf_counter() - begin
        cpu_times[i] = time.thread_time() - begin_cpu
        assert view is not None
        sizes[i] = len(view.nodes)
    results["neighbourhood_p50_ms"] = round(float(np.percentile(latencies, 50)) * 1e3, 3)
    results["neighbourhood_p99_ms"] = round(float(np.percentile(latencies, 99)) * 1e3, 3)
    results["neighbourhood_cpu_p99_ms"] = round(float(np.percentile(cpu_times, 99)) * 1e3, 3)
    results["neighbourhood_mean_nodes"] = round(float(sizes.mean()), 1)
    results["neighbourhood_load_average_1m"] = round(os.getloadavg()[0], 2)

    # the live pipeline's graph risk columns: a vectorised lookup per batch of 10,000 payments
    risk = GraphRisk(store)
    start = time.perf_counter()
    risk.refresh()
    results["graph_risk_refresh_1m_edges_s"] = round(time.perf_counter() - start, 3)
    step = GraphRiskStep(risk)
    risk.refresh_interval_s = 3600.0
    batch = pl.DataFrame(
        {
            "card_id": pl.Series(rng.integers(0, 300_000, BATCH_ROWS)).cast(pl.String),
            "terminal_id": pl.Series(rng.integers(0, 30_000, BATCH_ROWS)).cast(pl.String),
            "amount": rng.gamma(2.0, 30.0, BATCH_ROWS),
        }
    )
    runs = 50
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(runs):
        out = step.process(Batch(Domain.payment, batch, source="bench", seq=i))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    results["graph_risk_lookup_events_per_s"] = round(runs * BATCH_ROWS / wall, 1)
    results["graph_risk_lookup_events_per_cpu_s"] = round(runs * BATCH_ROWS / cpu, 1)
    results["graph_risk_nonzero_share"] = round(float(np.mean(out.frame["graph__risk"].to_numpy() > 0)), 4)

    if with_leidenalg:
        import leidenalg

        start = time.perf_counter()
        leidenalg.find_partition(snap.graph, leidenalg.ModularityVertexPartition, seed=0)
        results["leidenalg_1m_edges_s"] = round(time.perf_counter() - start, 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leidenalg", action="store_true", help="also time the leidenalg package (minutes)")
    args = parser.parse_args()
    results: dict[str, float | str] = {
        "cpu_count": os.cpu_count() or 0,
        "load_average_1m_start": round(os.getloadavg()[0], 2),
    }
    bench_update(results)
    print(json.dumps(results, indent=2), flush=True)
    bench_million(results, with_leidenalg=args.leidenalg)
    results["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
