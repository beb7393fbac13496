"""Graph answers for the API: an entity's neighbourhood, the riskiest communities, an explaining path.

Structure comes from the store's latest snapshot; risk and communities from its latest analysis (see
:func:`~finsecure.graph.analytics.current_analysis`), which may be a little older: nodes it has not seen
yet show risk 0 and no community.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from finsecure.graph.analytics import (
    Analysis,
    current_analysis,
    describe_node,
    explaining_path,
    local_communities,
    neighbourhood,
    path_sentence,
)
from finsecure.graph.edges import entity_type_of
from finsecure.graph.schemas import GraphCommunity, GraphEdge, GraphNode, GraphPath, GraphView
from finsecure.graph.store import GraphSnapshot, GraphStore, node_key, split_node_key

__all__ = ["MAX_NODES", "communities_view", "entity_view", "find_node", "path_view"]

#: Most nodes one answer holds (a D3 force layout stays readable and fast up to a few hundred).
MAX_NODES = 300
#: Seconds an analysis (communities, propagated risk, rings) is reused while the graph keeps changing.
ANALYSIS_MAX_AGE_S = 60.0


def _analysis_for(store: GraphStore, snap: GraphSnapshot) -> Analysis | None:
    analysis = current_analysis(store, max_age_s=ANALYSIS_MAX_AGE_S)
    return analysis if analysis.snapshot.epoch == snap.epoch else None


def find_node(snap: GraphSnapshot, entity_type: str, entity_id: str) -> int | None:
    """The node of an entity (``src_ip``/``dst_ip`` name the graph's ``ip``), or ``None``."""
    return snap.node_id(node_key(entity_type_of(entity_type), entity_id))


_Model = TypeVar("_Model", bound=BaseModel)


def _built(model: type[_Model], **values: Any) -> _Model:
    """A response model from values the graph itself produced (already the right types), without
    validation: what ``model_construct`` does for models with no defaults or private attributes, at a
    fraction of its cost (a view holds hundreds of nodes and edges)."""
    obj = model.__new__(model)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _nodes(
    snap: GraphSnapshot, analysis: Analysis | None, nodes: Sequence[int], local: dict[int, int] | None = None
) -> list[GraphNode]:
    # built from the graph's own data: constructed without re-validating every field; the per-node numbers
    # are gathered for all nodes at once
    ids = np.asarray(nodes, dtype=np.int64)
    risk = np.zeros(len(ids))
    community: list[int | None] = [None] * len(ids)
    if analysis is not None:
        analysed = ids < len(analysis.risk)
        at = ids[analysed]
        risk[analysed] = np.minimum(1.0, np.maximum(analysis.risk[at], analysis.signals.strength[at]))
        if local is None:
            groups = np.full(len(ids), -1, np.int64)
            groups[ids < len(analysis.membership)] = analysis.membership[ids[ids < len(analysis.membership)]]
            community = [None if g < 0 else g for g in groups.tolist()]
    if local is not None:
        community = [local.get(node) for node in ids.tolist()]
    out = []
    for node, r, group, blocked in zip(
        ids.tolist(), np.round(risk, 4).tolist(), community, snap.blocked[ids].tolist(), strict=True
    ):
        key = snap.keys[node]
        entity_type, entity_id = split_node_key(key)
        out.append(
            _built(
                GraphNode,
                id=key,
                type=entity_type,
                key=entity_id,
                label=describe_node(key),
                risk=r,
                community=group,
                blocked=blocked,
            )
        )
    return out


def _edges(snap: GraphSnapshot, edges: Sequence[int]) -> list[GraphEdge]:
    ids = np.asarray(edges, dtype=np.int64)
    # datetimes for every edge at once (NumPy's conversion), then marked as UTC
    first = snap.first_seen[ids].astype("datetime64[us]").tolist()
    last = snap.last_seen[ids].astype("datetime64[us]").tolist()
    amounts = np.round(snap.amount[ids], 2).tolist()
    return [
        _built(
            GraphEdge,
            source=snap.keys[int(snap.src[e])],
            target=snap.keys[int(snap.dst[e])],
            relation=snap.relation_of(e),
            count=int(snap.count[e]),
            amount=amount,
            first_seen=f.replace(tzinfo=dt.UTC),
            last_seen=t.replace(tzinfo=dt.UTC),
        )
        for e, amount, f, t in zip(ids.tolist(), amounts, first, last, strict=True)
    ]


def _communities(
    analysis: Analysis | None, ids: Sequence[int], sizes: dict[int, int] | None = None
) -> list[GraphCommunity]:
    if analysis is None:
        return []
    out = []
    all_sizes = analysis.community_sizes
    for community in sorted(set(ids)):
        ring = analysis.rings.get(community)
        if ring is not None:
            out.append(
                _built(
                    GraphCommunity,
                    id=community,
                    size=ring.size,
                    risk=round(ring.risk, 4),
                    reasons=ring.reasons,
                )
            )
        else:
            size = sizes.get(community, 0) if sizes is not None else int(all_sizes[community])
            out.append(_built(GraphCommunity, id=community, size=size, risk=0.0, reasons=[]))
    out.sort(key=lambda c: (-c.risk, c.id))
    return out


def entity_view(
    *,
    store: GraphStore,
    entity_type: str,
    entity_id: str,
    hops: int = 2,
    max_nodes: int = MAX_NODES,
    local: bool = False,
) -> GraphView | None:
    """An entity and its neighbourhood (``hops`` links away, at most ``max_nodes``); ``None`` if unknown.

    With ``local``, communities are found by Leiden on the neighbourhood alone (ids are then local to
    this answer); otherwise they are the whole graph's communities.
    """
    snap = store.snapshot()
    node = find_node(snap, entity_type, entity_id)
    if node is None:
        return None
    analysis = _analysis_for(store, snap)
    risk = analysis.risk if analysis is not None and len(analysis.risk) == snap.node_count else None
    nodes, omitted = neighbourhood(snap, node, hops=hops, cap=max_nodes, risk=risk)
    groups = local_communities(snap, nodes) if local else None
    payload_nodes = _nodes(snap, analysis, nodes, groups)
    if groups is not None:
        communities = [
            GraphCommunity(id=g, size=sum(1 for v in groups.values() if v == g), risk=0.0, reasons=[])
            for g in sorted(set(groups.values()))
        ]
    else:
        ids = [n.community for n in payload_nodes if n.community is not None]
        communities = _communities(analysis, ids)
    return GraphView(
        nodes=payload_nodes,
        edges=_edges(snap, snap.edges_within(nodes)),
        communities=communities,
        nodes_omitted=omitted,
    )


def communities_view(
    *, store: GraphStore, min_risk: float = 0.5, limit: int = 20, max_nodes: int = MAX_NODES
) -> GraphView:
    """The riskiest communities (at least ``min_risk``, at most ``limit``) with their most telling members.

    Members are shown ring pattern first (shared devices, compromised terminals, funnels), then by
    propagated risk, at most ``max_nodes`` in all; the rest are counted in ``nodes_omitted``.
    """
    snap = store.snapshot()
    analysis = _analysis_for(store, snap)
    if analysis is None:
        return GraphView(nodes=[], edges=[], communities=[], nodes_omitted=0)
    rings = sorted((r for r in analysis.rings.values() if r.risk >= min_risk), key=lambda r: (-r.risk, r.id))[
        :limit
    ]
    chosen: list[int] = []
    omitted = 0
    share = max(1, max_nodes // max(1, len(rings)))
    for ring in rings:
        members = ring.members
        score = np.maximum(analysis.signals.strength[members], analysis.risk[members])
        ranked = members[np.argsort(-score, kind="stable")]
        take = ranked[: min(share, max_nodes - len(chosen))].tolist()
        chosen.extend(take)
        omitted += len(members) - len(take)
    return GraphView(
        nodes=_nodes(snap, analysis, chosen),
        edges=_edges(snap, snap.edges_within(chosen)),
        communities=_communities(analysis, [r.id for r in rings], {r.id: r.size for r in rings}),
        nodes_omitted=omitted,
    )


def path_view(*, store: GraphStore, source: tuple[str, str], target: tuple[str, str]) -> GraphPath | None:
    """The explaining path between two entities (``(type, id)`` each); ``None`` if either is unknown."""
    snap = store.snapshot()
    start, end = find_node(snap, *source), find_node(snap, *target)
    if start is None or end is None:
        return None
    analysis = _analysis_for(store, snap)
    nodes, edges = explaining_path(snap, start, end)
    if not nodes:
        return GraphPath(
            found=False,
            nodes=_nodes(snap, analysis, [start, end]),
            edges=[],
            explanation=(
                f"No link was seen between {describe_node(snap.keys[start])} and "
                f"{describe_node(snap.keys[end])} in the graph's time window."
            ),
        )
    sentences = [path_sentence(snap, edge) for edge in edges]
    if not sentences:
        explanation = f"{describe_node(snap.keys[start])} is the same entity."
    else:
        explanation = "; ".join(sentences) + "."
        explanation = explanation[0].upper() + explanation[1:]
    return GraphPath(
        found=True, nodes=_nodes(snap, analysis, nodes), edges=_edges(snap, edges), explanation=explanation
    )
