"""What the graph says: communities (Leiden), fraud rings with reasons, propagated risk, explaining paths.

Everything here reads a :class:`~finsecure.graph.store.GraphSnapshot` and never changes it.

* :func:`communities` - Leiden on the whole graph (igraph's C implementation, which scales to millions of
  edges; warm-started from the previous partition so a re-run mostly confirms it), and
  :func:`local_communities` - Leiden (``leidenalg``) on an entity's k-hop neighbourhood.
* :func:`propagate_risk` - personalised PageRank from the known-bad nodes (blocked entities, confirmed
  fraud): a node's risk says how close, and by how many routes, it sits to known-bad ones.
* :func:`node_signals` and :func:`score_rings` - the patterns of organised fraud, per node and per
  community: devices or addresses shared by many customers, a terminal or shop where many cards later
  turned out to be compromised, money funnels (many accounts pay one payee; an account of the same group
  pays many new payees).
* :func:`neighbourhood` and :func:`explaining_path` - what the API shows.

Example
-------
>>> import datetime as dt
>>> import polars as pl
>>> from finsecure.graph.store import GraphStore
>>> store = GraphStore()
>>> _ = store.update("auth", pl.DataFrame({
...     "ts": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 4,
...     "user_id": ["u1", "u2", "u3", "u4"], "device_id": ["d1"] * 4}))
>>> analysis = analyse(store.snapshot())
>>> [ring.reasons[0] for ring in analysis.rings.values()]
['device d1 is used by 4 different customers']
"""

from __future__ import annotations

import math
import random
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import igraph as ig
import leidenalg
import numpy as np
import numpy.typing as npt

from finsecure.graph.edges import ENTITY_TYPES, RELATION_TEXT
from finsecure.graph.store import GraphSnapshot, GraphStore, split_node_key

__all__ = [
    "Analysis",
    "Ring",
    "analyse",
    "communities",
    "current_analysis",
    "describe_node",
    "explaining_path",
    "local_communities",
    "neighbourhood",
    "node_signals",
    "propagate_risk",
    "ring_members",
    "score_rings",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_T = {name: code for code, name in enumerate(ENTITY_TYPES)}
_REL = {name: code for code, name in enumerate(RELATION_TEXT)}

#: How each entity type reads in a sentence.
TYPE_LABELS: dict[str, str] = {
    "user_id": "customer",
    "account_id": "account",
    "card_id": "card",
    "device_id": "device",
    "ip": "address",
    "merchant_id": "shop",
    "terminal_id": "terminal",
    "payee_id": "payee",
    "principal_id": "cloud identity",
}

#: A device, address or payee linked to at least this many distinct customers/accounts is "shared".
SHARED_MIN = 3
#: Rings share a device or address among a handful of people; one used by far more (a carrier's or an
#: office's address, a shop's tablet) is less telling: its strength falls as ``SHARED_TYPICAL_MAX / users``.
SHARED_TYPICAL_MAX = 10
#: A payee paid by at least this many distinct accounts counts as collecting money for a ring.
COLLECTOR_MIN = 5


def describe_node(node: str) -> str:
    """A node id in plain words.

    >>> describe_node("card_id:tok_9f2c"), describe_node("ip:10.0.0.7")
    ('card tok_9f2c', 'address 10.0.0.7')
    """
    entity_type, key = split_node_key(node)
    return f"{TYPE_LABELS.get(entity_type, entity_type)} {key}"


# -- communities --------------------------------------------------------------------------------


def communities(
    snap: GraphSnapshot, *, previous: IntArray | None = None, resolution: float = 1.0, seed: int = 0
) -> IntArray:
    """Leiden communities of the whole graph (modularity): the community id of every node.

    Parameters
    ----------
    previous
        The membership of an earlier snapshot with the same node ids; nodes added since start alone. The
        optimisation then only has to move what changed.
    """
    n = snap.node_count
    if n == 0:
        return np.zeros(0, np.int64)
    initial: list[int] | None = None
    if previous is not None and len(previous) <= n:
        start = np.arange(n, dtype=np.int64) + (int(previous.max()) + 1 if len(previous) else 0)
        start[: len(previous)] = previous
        _, dense = np.unique(start, return_inverse=True)
        initial = dense.tolist()
    state = random.getstate()
    random.seed(seed)
    ig.set_random_number_generator(random)
    try:
        partition = snap.graph.community_leiden(
            objective_function="modularity", resolution=resolution, n_iterations=2, initial_membership=initial
        )
    finally:
        random.setstate(state)
    return np.asarray(partition.membership, dtype=np.int64)


def local_communities(snap: GraphSnapshot, nodes: Sequence[int], *, seed: int = 0) -> dict[int, int]:
    """Leiden (``leidenalg``, modularity) on the subgraph induced by ``nodes``: node -> local community."""
    if not nodes:
        return {}
    sub = snap.graph.induced_subgraph(list(nodes))
    if sub.ecount() == 0:
        return {node: i for i, node in enumerate(nodes)}
    partition = leidenalg.find_partition(sub, leidenalg.ModularityVertexPartition, seed=seed)
    # induced_subgraph keeps the nodes in increasing id order
    return {node: int(c) for node, c in zip(sorted(nodes), partition.membership, strict=True)}


# -- risk propagation -----------------------------------------------------------------------------


def propagate_risk(
    snap: GraphSnapshot, *, seeds: Iterable[int] | None = None, damping: float = 0.85
) -> FloatArray:
    """Personalised PageRank from the known-bad nodes, scaled to 0..1 (known-bad nodes are 1).

    A node's value is the PageRank mass that random walks restarting at the known-bad nodes leave on it,
    divided by the mean mass of those nodes. Without known-bad nodes every risk is 0.
    """
    n = snap.node_count
    chosen = np.flatnonzero(snap.bad) if seeds is None else np.unique(np.fromiter(seeds, np.int64))
    if n == 0 or len(chosen) == 0:
        return np.zeros(n, np.float64)
    ppr = np.asarray(
        snap.graph.personalized_pagerank(reset_vertices=chosen.tolist(), damping=damping, directed=False),
        dtype=np.float64,
    )
    scale = float(ppr[chosen].mean()) or 1.0
    risk = np.clip(ppr / scale, 0.0, 1.0)
    risk[chosen] = 1.0
    return risk


# -- ring patterns ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSignals:
    """Per-node evidence of organised fraud (arrays indexed by node id)."""

    users: IntArray
    """Distinct customers that used the node (devices and addresses)."""
    cards: IntArray
    """Distinct cards seen at the node (terminals and shops)."""
    bad_cards: IntArray
    """... of which known bad."""
    payers: IntArray
    """Distinct accounts that paid or added the node (payees)."""
    payees: IntArray
    """Distinct payees the node paid or added (accounts)."""
    strength: FloatArray
    """0..1: how strongly the node alone looks like part of a ring."""
    compromise: FloatArray
    """0..1: how unlikely the node's share of known-bad cards is by chance (terminals and shops)."""

    def reasons(self, snap: GraphSnapshot, node: int) -> list[tuple[float, str]]:
        """(strength, sentence) for each pattern the node shows."""
        out: list[tuple[float, str]] = []
        name = describe_node(snap.keys[node])
        if self.users[node] >= SHARED_MIN:
            strength = _shared(int(self.users[node]), snap.type_of(node))
            out.append((strength, f"{name} is used by {self.users[node]} different customers"))
        if self.compromise[node] > 0:
            out.append(
                (
                    float(self.compromise[node]),
                    f"{self.bad_cards[node]} of the {self.cards[node]} cards used at {name} are known to be "
                    "compromised or used for fraud",
                )
            )
        if self.payers[node] >= SHARED_MIN:
            out.append(
                (
                    _fan(self.payers[node]) * 0.5,
                    f"{self.payers[node]} different accounts send money to {name}",
                )
            )
        if self.payees[node] >= SHARED_MIN:
            out.append(
                (_fan(self.payees[node]) * 0.5, f"{name} sends money on to {self.payees[node]} payees")
            )
        return out


def _shared(users: int, entity_type: str) -> float:
    base = (1.0 - 0.5 ** (users - SHARED_MIN + 1)) * min(1.0, SHARED_TYPICAL_MAX / users)
    return base * (0.7 if entity_type == "ip" else 1.0)  # addresses are shared innocently more often


def _fan(count: int) -> float:
    return 1.0 - 0.6 ** (count - SHARED_MIN + 1)


def _distinct_per(owner: IntArray, other: IntArray, n: int) -> IntArray:
    """How many distinct ``other`` nodes each node ``owner`` links to."""
    if len(owner) == 0:
        return np.zeros(n, np.int64)
    pairs = np.unique(owner.astype(np.int64) * max(n, 1) + other)
    return np.bincount(pairs // max(n, 1), minlength=n).astype(np.int64)


def node_signals(snap: GraphSnapshot) -> NodeSignals:
    """Vectorised per-node ring evidence (see :class:`NodeSignals`)."""
    n = snap.node_count
    src, dst, rel = snap.src, snap.dst, snap.relation.astype(np.int64)
    src_type = snap.node_type[src].astype(np.int64) if len(src) else np.zeros(0, np.int64)

    shared = np.isin(rel, [_REL["used_device"], _REL["used_ip"]]) & (src_type == _T["user_id"])
    users = _distinct_per(dst[shared], src[shared], n)

    at = np.isin(rel, [_REL["used_at"], _REL["paid_at"]])
    cards = _distinct_per(dst[at], src[at], n)
    bad_at = at & snap.bad[src] if len(src) else at
    bad_cards = _distinct_per(dst[bad_at], src[bad_at], n)

    pays = np.isin(rel, [_REL["paid"], _REL["added_payee"]])
    payers = _distinct_per(dst[pays], src[pays], n)
    payees = _distinct_per(src[pays], dst[pays], n)

    strength = np.zeros(n, np.float64)
    is_ip = snap.node_type == _T["ip"]
    many = users >= SHARED_MIN
    strength[many] = (1.0 - 0.5 ** (users[many] - SHARED_MIN + 1)) * np.minimum(
        1.0, SHARED_TYPICAL_MAX / np.maximum(users[many], 1)
    )
    strength[many & is_ip] *= 0.7
    compromise = _compromise(cards, bad_cards)
    strength = np.maximum(strength, compromise)
    for fan in (payers, payees):
        big = fan >= SHARED_MIN
        strength[big] = np.maximum(strength[big], 0.5 * (1.0 - 0.6 ** (fan[big] - SHARED_MIN + 1)))
    return NodeSignals(users, cards, bad_cards, payers, payees, strength, compromise)


def _compromise(cards: IntArray, bad_cards: IntArray) -> FloatArray:
    """Common point of compromise: how far a place's count of known-bad cards exceeds what the overall
    share of bad cards predicts (a binomial z-score), as ``1 - exp(-z / 6)``; places with fewer than two
    bad cards score 0."""
    out = np.zeros(len(cards), np.float64)
    total = int(cards.sum())
    if total == 0:
        return out
    rate = min(max(float(bad_cards.sum()) / total, 1e-6), 1.0 - 1e-6)
    hit = bad_cards >= 2
    expected = cards[hit] * rate
    z = (bad_cards[hit] - expected) / np.sqrt(expected * (1.0 - rate))
    out[hit] = 1.0 - np.exp(-np.maximum(z, 0.0) / 6.0)
    return out


def _funnels(snap: GraphSnapshot, signals: NodeSignals, *, max_fan: int = 1_000) -> list[tuple[int, int]]:
    """(collector, spreader) pairs at most two links apart: a payee many accounts pay, and an account that
    pays many payees. Collectors paid by more than ``max_fan`` accounts (utilities, landlords) are skipped."""
    spreaders = set(np.flatnonzero(signals.payees >= SHARED_MIN).tolist())
    if not spreaders:
        return []
    collectors = np.flatnonzero((signals.payers >= SHARED_MIN) & (signals.payers <= max_fan))
    pairs: list[tuple[int, int]] = []
    for collector in collectors.tolist():
        near = set(snap.graph.neighborhood(collector, order=2)) & spreaders
        near.discard(collector)
        pairs.extend((collector, s) for s in near)
    return pairs


@dataclass(frozen=True)
class Ring:
    """A community scored as a possible fraud ring."""

    id: int
    size: int
    risk: float
    reasons: list[str]
    members: IntArray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "risk": round(self.risk, 4), "reasons": self.reasons}


def score_rings(
    snap: GraphSnapshot,
    membership: IntArray,
    risk: FloatArray,
    signals: NodeSignals,
    *,
    max_reasons: int = 5,
) -> dict[int, Ring]:
    """Score every community that shows at least one ring pattern or holds a known-bad node.

    A community's risk combines its strongest node patterns (1 - product of (1 - strength), top five),
    a money funnel when one of its payees collects from many accounts while one of its accounts pays
    many payees, and the highest propagated risk among its members.
    """
    n = snap.node_count
    if n == 0:
        return {}
    interesting = (signals.strength > 0) | snap.bad
    groups = np.unique(membership[interesting])
    funnels = _funnels(snap, signals)
    rings: dict[int, Ring] = {}
    order = np.argsort(membership, kind="stable")
    sorted_membership = membership[order]
    for group in groups.tolist():
        lo, hi = np.searchsorted(sorted_membership, [group, group + 1])
        members = order[lo:hi]
        scored: list[tuple[float, str]] = []
        for node in members[signals.strength[members] > 0].tolist():
            scored.extend(signals.reasons(snap, node))
        collector = members[signals.payers[members] >= SHARED_MIN]
        spreader = members[signals.payees[members] >= SHARED_MIN]
        pairs = [(c, s) for c, s in funnels if membership[c] == group or membership[s] == group]
        if len(collector) and len(spreader):
            pairs.append(
                (
                    int(collector[np.argmax(signals.payers[collector])]),
                    int(spreader[np.argmax(signals.payees[spreader])]),
                )
            )
        if pairs:
            c, s = max(pairs, key=lambda p: int(signals.payers[p[0]]) * int(signals.payees[p[1]]))
            scored.append(
                (
                    _fan(int(signals.payers[c])) * _fan(int(signals.payees[s])) * 0.6 + 0.35,
                    f"money funnel: {signals.payers[c]} accounts pay {describe_node(snap.keys[c])}, and "
                    f"{describe_node(snap.keys[s])} close to it pays {signals.payees[s]} payees",
                )
            )
        bad = int(snap.bad[members].sum())
        if bad:
            scored.append((0.5, f"{bad} member(s) already known to be bad (blocked or confirmed fraud)"))
        scored.sort(key=lambda item: -item[0])
        ring_score = 1.0 - math.prod(1.0 - s for s, _ in scored[:max_reasons])
        outside = members[~snap.bad[members]]
        near = float(risk[outside].max()) if len(outside) else 0.0
        total = 1.0 - (1.0 - ring_score) * (1.0 - 0.5 * near)
        if near >= 0.05:
            scored.append((0.0, f"close to known-bad entities in the graph (propagated risk {near:.2f})"))
        rings[group] = Ring(
            id=group,
            size=len(members),
            risk=float(total),
            reasons=[text for _, text in scored[:max_reasons]],
            members=members,
        )
    return rings


def ring_members(snap: GraphSnapshot, signals: NodeSignals, *, min_strength: float = 0.5) -> IntArray:
    """The entities a ring investigation would start from: each device or address shared strongly enough
    (``min_strength``), the customers who used it and their accounts; payees that collect from
    ``COLLECTOR_MIN`` or more accounts; accounts that pay ``SHARED_MIN`` or more payees, and those payees."""
    src, dst, rel = snap.src, snap.dst, snap.relation.astype(np.int64)
    shared = np.flatnonzero((signals.users >= SHARED_MIN) & (signals.strength >= min_strength))
    used = np.isin(rel, [_REL["used_device"], _REL["used_ip"]]) & np.isin(dst, shared)
    users = np.unique(src[used])
    users = users[snap.node_type[users] == _T["user_id"]]
    owns = (rel == _REL["owns"]) & np.isin(src, users)
    members = [shared, users, dst[owns]]
    # money moving through: payees many accounts pay (collectors), accounts paying many payees (spreaders)
    pairs = _funnels(snap, signals)
    collectors = np.union1d(
        np.asarray([c for c, _ in pairs], np.int64), np.flatnonzero(signals.payers >= COLLECTOR_MIN)
    )
    spreaders = np.union1d(
        np.asarray([s for _, s in pairs], np.int64), np.flatnonzero(signals.payees >= SHARED_MIN)
    )
    pays = np.isin(rel, [_REL["paid"], _REL["added_payee"]]) & np.isin(src, spreaders)
    members += [collectors, spreaders, dst[pays]]
    return np.unique(np.concatenate(members))


# -- the whole analysis, cached ------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """Communities, propagated risk and rings of one snapshot."""

    snapshot: GraphSnapshot
    membership: IntArray
    risk: FloatArray
    signals: NodeSignals
    rings: dict[int, Ring]
    seconds: float
    built_at: float = field(default_factory=time.monotonic)
    community_sizes: IntArray = field(init=False, repr=False)
    """How many nodes each community holds (by community id)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "community_sizes", np.bincount(self.membership).astype(np.int64))

    def community_of(self, node: int) -> int | None:
        return int(self.membership[node]) if node < len(self.membership) else None

    def risk_of(self, node: int) -> float:
        return float(self.risk[node]) if node < len(self.risk) else 0.0


def analyse(snap: GraphSnapshot, *, previous: Analysis | None = None, seed: int = 0) -> Analysis:
    """Run every analysis on ``snap`` (Leiden warm-started from ``previous`` when node ids still match)."""
    started = time.perf_counter()
    warm = previous.membership if previous is not None and previous.snapshot.epoch == snap.epoch else None
    membership = communities(snap, previous=warm, seed=seed)
    risk = propagate_risk(snap)
    signals = node_signals(snap)
    rings = score_rings(snap, membership, risk, signals)
    return Analysis(snap, membership, risk, signals, rings, time.perf_counter() - started)


_ANALYSIS_LOCK = threading.Lock()


def current_analysis(store: GraphStore, *, max_age_s: float = 60.0) -> Analysis:
    """The store's latest analysis, recomputed when the graph changed and the last one is older than
    ``max_age_s`` (one computation at a time; readers wait for it rather than starting their own)."""
    with _ANALYSIS_LOCK:
        cached: Analysis | None = store.cache.get("analysis")
        snap = store.snapshot(max_age_s=max_age_s)
        if cached is not None and (
            cached.snapshot is snap
            or (cached.snapshot.epoch == snap.epoch and time.monotonic() - cached.built_at < max_age_s)
        ):
            return cached
        analysis = analyse(snap, previous=cached)
        store.cache["analysis"] = analysis
        return analysis


# -- neighbourhoods and paths ---------------------------------------------------------------------


def neighbourhood(
    snap: GraphSnapshot,
    node: int,
    *,
    hops: int = 2,
    cap: int = 300,
    risk: FloatArray | None = None,
    budget: int = 200_000,
) -> tuple[list[int], int]:
    """Nodes within ``hops`` of ``node`` (itself first), at most ``cap`` of them; and how many were left out.

    Each ring is filled nearest first, from neighbours of the nodes kept so far (so what is shown stays
    connected); when a ring does not fit, its riskiest nodes are kept, then those with the fewest links
    (which say most about this entity). The count of left-out nodes is exact unless walking every
    left-out node would read more than ``budget`` links (busy hubs); it is then an upper bound.
    """
    indptr, neighbour, _ = snap.adjacency()
    scores = risk if risk is not None else np.zeros(snap.node_count)
    seen = np.zeros(snap.node_count, np.bool_)
    seen[node] = True
    kept = [node]
    omitted = 0
    empty = np.zeros(0, np.int64)
    kept_frontier = np.asarray([node], np.int64)
    hidden_frontier = empty
    for _ in range(hops):
        candidates = np.unique(neighbour[snap.incident_slots(kept_frontier)])
        candidates = candidates[~seen[candidates]]
        hidden = empty
        if len(hidden_frontier):
            links = int((indptr[hidden_frontier + 1] - indptr[hidden_frontier]).sum())
            if links <= budget:
                hidden = np.unique(neighbour[snap.incident_slots(hidden_frontier)])
                hidden = np.setdiff1d(hidden[~seen[hidden]], candidates, assume_unique=True)
            else:
                omitted += links
        room = max(cap - len(kept), 0)
        ring = candidates
        left = hidden
        if len(ring) > room:
            ranked = ring[np.lexsort((ring, indptr[ring + 1] - indptr[ring], -scores[ring]))]
            ring = ranked[:room]
            left = np.union1d(ranked[room:], hidden)
        omitted += len(left)
        kept.extend(ring.tolist())
        seen[candidates] = True
        seen[hidden] = True
        kept_frontier = ring
        hidden_frontier = left
    return kept, omitted


def explaining_path(snap: GraphSnapshot, start: int, end: int) -> tuple[list[int], list[int]]:
    """The shortest path between two nodes that avoids busy hubs: ``(nodes, edges)``, empty if none.

    Each link costs ``log(2 + degree)`` of both its ends, so a route through a shared device beats an
    equally short one through a shop every customer visits.
    """
    if start == end:
        return [start], []
    graph = snap.graph
    with snap.lock:
        weights = snap.results.get("path_weights")
        if weights is None:
            degree = np.asarray(graph.degree(), dtype=np.float64)
            weights = (np.log2(2.0 + degree[snap.src]) + np.log2(2.0 + degree[snap.dst])).tolist()
            snap.results["path_weights"] = weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "couldn't reach some vertices": an empty path
        edges: list[int] = graph.get_shortest_path(start, end, weights=weights, output="epath")
    if not edges:
        return [], []
    nodes = [start]
    for edge in edges:
        a, b = int(snap.src[edge]), int(snap.dst[edge])
        nodes.append(b if nodes[-1] == a else a)
    return nodes, edges


def path_sentence(snap: GraphSnapshot, edge: int) -> str:
    """One link in words, e.g. ``card c1 was used at terminal t1 (3 times, 120.00 in total)``."""
    rel = snap.relation_of(edge)
    source, target = (
        describe_node(snap.keys[int(snap.src[edge])]),
        describe_node(snap.keys[int(snap.dst[edge])]),
    )
    count = int(snap.count[edge])
    detail = f"{count} time{'s' if count != 1 else ''}"
    if snap.amount[edge] > 0:
        detail += f", {snap.amount[edge]:,.2f} in total"
    return f"{source} {RELATION_TEXT[rel]} {target} ({detail})"
