"""The entity graph held in memory: dense node ids, NumPy edge arrays, igraph snapshots, TTL, persistence.

* Nodes are ``"<type>:<key>"`` strings (``"card_id:tok_9f2c"``) mapped to dense integer ids.
* Edges live in growable NumPy arrays (source, target, relation, count, amount, first and last seen);
  an update from one batch is a handful of vectorised operations, whatever its size.
* Analysis works on a :class:`GraphSnapshot`: an immutable igraph copy of the live edges, rebuilt in one
  call (batched) when the graph changed and the previous snapshot is older than ``rebuild_interval_s``.
* Edges not seen for ``ttl_s`` (in event time) are evicted; nodes left without an edge go with them.
* :meth:`GraphStore.flush_to_db` upserts the changed entities and edges into the ``entities`` and
  ``edges`` tables (SQLite and PostgreSQL), adding only what changed since the last flush, so that a
  restart with :meth:`GraphStore.load_from_db` carries on where it stopped.

Example
-------
>>> import datetime as dt
>>> store = GraphStore()
>>> frame = pl.DataFrame({
...     "ts": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 2,
...     "card_id": ["c1", "c2"], "terminal_id": ["t1", "t1"], "amount": [5.0, 7.0],
... })
>>> store.update("payment", frame)
2
>>> snap = store.snapshot()
>>> terminal = snap.node_id("terminal_id:t1")
>>> snap.node_count, snap.edge_count, sorted(snap.keys[v] for v in snap.neighbors(terminal))
(3, 2, ['card_id:c1', 'card_id:c2'])
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import igraph as ig
import numpy as np
import numpy.typing as npt
import polars as pl
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finsecure.entity.models import Edge, Entity
from finsecure.event.schemas import Domain
from finsecure.graph.edges import ENTITY_TYPES, RELATION_TEXT, aggregate_edges

__all__ = ["GraphSnapshot", "GraphStore", "node_key", "split_node_key"]

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Relation names by their small integer code (the order of :data:`RELATION_TEXT`).
RELATION_NAMES: tuple[str, ...] = tuple(RELATION_TEXT)
_RELATION_CODE = {name: code for code, name in enumerate(RELATION_NAMES)}
_TYPE_CODE = {name: code for code, name in enumerate(ENTITY_TYPES)}
_NODE_BITS = 29
_REL_BITS = 5
_DAY_S = 86_400.0


def node_key(entity_type: str, key: str) -> str:
    """The id of a node in the graph and in API payloads.

    >>> node_key("card_id", "tok_1")
    'card_id:tok_1'
    """
    return f"{entity_type}:{key}"


def split_node_key(node: str) -> tuple[str, str]:
    """``(type, key)`` of a node id; the key may itself contain ``:`` (IPv6 addresses).

    >>> split_node_key("ip:2001:db8::1")
    ('ip', '2001:db8::1')
    """
    entity_type, _, key = node.partition(":")
    return entity_type, key


def _grow(array: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array), 1024), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def _us_to_datetime(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(us))


@dataclass(frozen=True)
class GraphSnapshot:
    """An immutable view of the graph at one moment, for analysis and API answers.

    Node ``i`` is ``keys[i]``; edge ``j`` of :attr:`graph` is ``(src[j], dst[j])`` with the attributes at
    index ``j`` of the arrays below. :attr:`graph` is undirected and may hold several edges between two
    nodes (one per relation). ``results`` caches what analyses computed on this snapshot.
    """

    graph: ig.Graph
    keys: list[str]
    index: dict[str, int]
    node_type: npt.NDArray[np.int8]
    blocked: BoolArray
    bad: BoolArray
    src: IntArray
    dst: IntArray
    relation: npt.NDArray[np.int8]
    count: IntArray
    amount: FloatArray
    first_seen: IntArray
    last_seen: IntArray
    now_us: int
    version: int
    epoch: int
    built_at: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def node_count(self) -> int:
        return len(self.keys)

    @property
    def edge_count(self) -> int:
        return len(self.src)

    def node_id(self, key: str) -> int | None:
        """The dense id of ``"<type>:<key>"`` in this snapshot, or ``None``."""
        index = self.index.get(key)
        return index if index is not None and index < len(self.keys) else None

    def type_of(self, node: int) -> str:
        return ENTITY_TYPES[int(self.node_type[node])]

    def neighbors(self, node: int) -> list[int]:
        """Distinct neighbours of ``node``."""
        found: list[int] = self.graph.neighbors(node)
        return sorted(set(found))

    def relation_of(self, edge: int) -> str:
        return RELATION_NAMES[int(self.relation[edge])]

    def edge_record(self, edge: int, *, iso: bool = True) -> dict[str, Any]:
        """One edge as the API payload describes it (times as ISO 8601 text, or datetimes)."""
        first = _us_to_datetime(int(self.first_seen[edge]))
        last = _us_to_datetime(int(self.last_seen[edge]))
        return {
            "source": self.keys[int(self.src[edge])],
            "target": self.keys[int(self.dst[edge])],
            "relation": self.relation_of(edge),
            "count": int(self.count[edge]),
            "amount": round(float(self.amount[edge]), 2),
            "first_seen": first.isoformat() if iso else first,
            "last_seen": last.isoformat() if iso else last,
        }

    def edges_within(self, nodes: Iterable[int]) -> list[int]:
        """Ids of the edges whose two ends are both in ``nodes``."""
        members = np.asarray(sorted(set(nodes)), dtype=np.int64)
        if len(members) == 0:
            return []
        incident = [np.asarray(self.graph.incident(int(node)), dtype=np.int64) for node in members]
        edges = np.unique(np.concatenate(incident))
        if len(edges) == 0:
            return []
        inside = np.isin(self.src[edges], members) & np.isin(self.dst[edges], members)
        found: list[int] = edges[inside].tolist()
        return found


class GraphStore:
    """The live entity graph. Thread-safe: the pipeline updates it while API requests read snapshots.

    Parameters
    ----------
    ttl_s
        Edges whose last event is older than this (in event time, relative to the newest event seen)
        are evicted by :meth:`evict`.
    rebuild_interval_s
        A snapshot is rebuilt at most this often while updates keep coming.
    """

    def __init__(self, *, ttl_s: float = 30 * _DAY_S, rebuild_interval_s: float = 2.0) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.ttl_s = ttl_s
        self.rebuild_interval_s = rebuild_interval_s
        self._lock = threading.RLock()
        self._reset()
        self._snapshot: GraphSnapshot | None = None
        self.events_seen = 0
        #: What analyses keep between calls (see :func:`finsecure.graph.analytics.current_analysis`).
        self.cache: dict[str, Any] = {}

    def _reset(self) -> None:
        self._index: dict[str, int] = {}
        self._keys: list[str] = []
        self._node_type = np.zeros(0, np.int8)
        self._blocked = np.zeros(0, np.bool_)
        self._bad = np.zeros(0, np.bool_)
        self._db_id = np.zeros(0, np.int64)
        # packed (src, dst, relation) keys of the edges, sorted, and the edge slot of each
        self._edge_keys = np.zeros(0, np.int64)
        self._edge_slots = np.zeros(0, np.int64)
        self._src = np.zeros(0, np.int64)
        self._dst = np.zeros(0, np.int64)
        self._rel = np.zeros(0, np.int8)
        self._count = np.zeros(0, np.int64)
        self._amount = np.zeros(0, np.float64)
        self._first = np.zeros(0, np.int64)
        self._last = np.zeros(0, np.int64)
        self._flushed_count = np.zeros(0, np.int64)
        self._flushed_amount = np.zeros(0, np.float64)
        self._dirty = np.zeros(0, np.bool_)
        self._n_edges = 0
        self.now_us = 0
        self.version = 0
        self.epoch = 0

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def node_count(self) -> int:
        return len(self._keys)

    @property
    def edge_count(self) -> int:
        return self._n_edges

    # -- updates -------------------------------------------------------------------------------

    def update(self, domain: Domain | str, frame: pl.DataFrame) -> int:
        """Add the links of one canonical batch; returns how many distinct edges it touched."""
        edges = aggregate_edges(domain, frame)
        touched = self.add_edges(edges)
        with self._lock:
            self.events_seen += frame.height
        return touched

    def _node_ids(self, types: pl.Series, keys: pl.Series) -> IntArray:
        """Dense ids of the nodes named by ``types`` and ``keys``, creating the new ones."""
        full = (types + ":" + keys).rename("node")
        names: list[str] = full.unique().to_list()
        index = self._index
        ids: list[int] = [index.get(name, -1) for name in names]
        if -1 in ids:  # new nodes (rare once the graph is warm): numbered in bulk
            new = [name for name, found in zip(names, ids, strict=True) if found < 0]
            start = len(self._keys)
            n = start + len(new)
            index.update(zip(new, range(start, n), strict=True))
            self._keys.extend(new)
            ids = [index[name] for name in names]
            self._node_type = _grow(self._node_type, n)
            self._blocked = _grow(self._blocked, n)
            self._bad = _grow(self._bad, n)
            self._db_id = _grow(self._db_id, n)
            self._node_type[start:n] = np.asarray([_TYPE_CODE[k.partition(":")[0]] for k in new], np.int8)
        mapping = pl.DataFrame({"node": names, "id": ids}, schema={"node": pl.String, "id": pl.Int64})
        mapped = full.to_frame().join(mapping, on="node", how="left", maintain_order="left")["id"]
        return mapped.to_numpy().astype(np.int64, copy=False)

    def add_edges(self, edges: pl.DataFrame) -> int:
        """Merge an aggregated edge frame (:data:`~finsecure.graph.edges.EDGE_SCHEMA`) into the graph."""
        if edges.height == 0:
            return 0
        with self._lock:
            both = self._node_ids(
                pl.concat([edges["src_type"], edges["dst_type"]]),
                pl.concat([edges["src_key"], edges["dst_key"]]),
            )
            src, dst = both[: edges.height], both[edges.height :]
            rel = edges["relation"].replace_strict(
                RELATION_NAMES, range(len(RELATION_NAMES)), return_dtype=pl.Int64
            )
            rel_np = rel.to_numpy().astype(np.int64, copy=False)
            packed = (src << (_NODE_BITS + _REL_BITS)) | (dst << _REL_BITS) | rel_np
            where = self._find_edges(packed)
            new = where < 0
            n_new = int(new.sum())
            if n_new:
                start = self._n_edges
                end = start + n_new
                self._grow_edges(end)
                slots = np.arange(start, end, dtype=np.int64)
                where[new] = slots
                self._index_edges(packed[new], slots)
                self._src[start:end] = src[new]
                self._dst[start:end] = dst[new]
                self._rel[start:end] = rel_np[new]
                self._first[start:end] = np.iinfo(np.int64).max
                self._last[start:end] = np.iinfo(np.int64).min
                self._n_edges = end
            first = edges["first_seen"].to_numpy()
            last = edges["last_seen"].to_numpy()
            # every edge appears once in an aggregated frame, so plain fancy indexing adds correctly
            self._count[where] += edges["count"].to_numpy()
            self._amount[where] += edges["amount"].to_numpy()
            self._first[where] = np.minimum(self._first[where], first)
            self._last[where] = np.maximum(self._last[where], last)
            self._dirty[where] = True
            self.now_us = max(self.now_us, int(last.max()))
            self.version += 1
            return len(packed)

    def _find_edges(self, packed: IntArray) -> IntArray:
        """The slot of each packed edge key, or -1 for edges not seen yet (a vectorised sorted lookup)."""
        keys = self._edge_keys
        if len(keys) == 0:
            return np.full(len(packed), -1, np.int64)
        at = np.searchsorted(keys, packed)
        inside = at < len(keys)
        found = np.zeros(len(packed), np.bool_)
        found[inside] = keys[at[inside]] == packed[inside]
        return np.where(found, self._edge_slots[np.minimum(at, len(keys) - 1)], -1)

    def _index_edges(self, packed: IntArray, slots: IntArray) -> None:
        """Add new edge keys to the sorted index (one O(n) insert per batch, not per edge)."""
        order = np.argsort(packed)
        packed, slots = packed[order], slots[order]
        at = np.searchsorted(self._edge_keys, packed)
        self._edge_keys = np.insert(self._edge_keys, at, packed)
        self._edge_slots = np.insert(self._edge_slots, at, slots)

    def _grow_edges(self, size: int) -> None:
        self._src = _grow(self._src, size)
        self._dst = _grow(self._dst, size)
        self._rel = _grow(self._rel, size)
        self._count = _grow(self._count, size)
        self._amount = _grow(self._amount, size)
        self._first = _grow(self._first, size)
        self._last = _grow(self._last, size)
        self._flushed_count = _grow(self._flushed_count, size)
        self._flushed_amount = _grow(self._flushed_amount, size)
        self._dirty = _grow(self._dirty, size)

    def set_flags(self, keys: Iterable[str], *, blocked: bool | None = None, bad: bool | None = None) -> int:
        """Mark nodes (``"<type>:<key>"``) as blocked and/or known bad; unknown keys are skipped.

        Known-bad nodes (confirmed fraud, blocked entities) seed risk propagation.
        Returns how many nodes were found.
        """
        with self._lock:
            ids = [i for i in (self._index.get(k) for k in keys) if i is not None]
            if ids:
                if blocked is not None:
                    self._blocked[ids] = blocked
                if bad is not None:
                    self._bad[ids] = bad
                self.version += 1
            return len(ids)

    def clear_flags(self) -> None:
        """Forget every blocked and known-bad mark."""
        with self._lock:
            self._blocked[:] = False
            self._bad[:] = False
            self.version += 1

    def evict(self, now_us: int | None = None) -> int:
        """Drop edges not seen for ``ttl_s`` before ``now_us`` (default: the newest event seen), and the
        nodes left without edges. Returns how many edges went. Node ids change when anything is dropped.
        """
        with self._lock:
            now = self.now_us if now_us is None else now_us
            n = self._n_edges
            keep = self._last[:n] >= now - int(self.ttl_s * 1e6)
            removed = int(n - keep.sum())
            if removed == 0:
                return 0
            kept_edges = np.flatnonzero(keep)
            live_nodes = np.zeros(len(self._keys), np.bool_)
            live_nodes[self._src[kept_edges]] = True
            live_nodes[self._dst[kept_edges]] = True
            old_ids = np.flatnonzero(live_nodes)
            remap = np.full(len(self._keys), -1, np.int64)
            remap[old_ids] = np.arange(len(old_ids), dtype=np.int64)
            self._keys = [self._keys[i] for i in old_ids.tolist()]
            self._index = {k: i for i, k in enumerate(self._keys)}
            self._node_type = self._node_type[old_ids]
            self._blocked = self._blocked[old_ids]
            self._bad = self._bad[old_ids]
            self._db_id = self._db_id[old_ids]
            self._src = remap[self._src[kept_edges]]
            self._dst = remap[self._dst[kept_edges]]
            self._rel = self._rel[kept_edges]
            self._count = self._count[kept_edges]
            self._amount = self._amount[kept_edges]
            self._first = self._first[kept_edges]
            self._last = self._last[kept_edges]
            self._flushed_count = self._flushed_count[kept_edges]
            self._flushed_amount = self._flushed_amount[kept_edges]
            self._dirty = self._dirty[kept_edges]
            self._n_edges = len(kept_edges)
            packed = (
                (self._src << (_NODE_BITS + _REL_BITS))
                | (self._dst << _REL_BITS)
                | self._rel.astype(np.int64)
            )
            order = np.argsort(packed, kind="stable")
            self._edge_keys = packed[order]
            self._edge_slots = order.astype(np.int64)
            self.version += 1
            self.epoch += 1
            return removed

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self, *, max_age_s: float | None = None) -> GraphSnapshot:
        """An immutable igraph view of the graph.

        The previous snapshot is returned while nothing changed, or while it is younger than ``max_age_s``
        (default ``rebuild_interval_s``): rebuilding is batched, not done per update.
        """
        max_age = self.rebuild_interval_s if max_age_s is None else max_age_s
        with self._lock:
            current = self._snapshot
            if current is not None and (
                current.version == self.version
                or (current.epoch == self.epoch and time.monotonic() - current.built_at < max_age)
            ):
                return current
            n, m = len(self._keys), self._n_edges
            src, dst = self._src[:m].copy(), self._dst[:m].copy()
            snap_fields: dict[str, Any] = {
                "keys": list(self._keys),
                "index": self._index,
                "node_type": self._node_type[:n].copy(),
                "blocked": self._blocked[:n].copy(),
                "bad": self._bad[:n].copy(),
                "src": src,
                "dst": dst,
                "relation": self._rel[:m].copy(),
                "count": self._count[:m].copy(),
                "amount": self._amount[:m].copy(),
                "first_seen": self._first[:m].copy(),
                "last_seen": self._last[:m].copy(),
                "now_us": self.now_us,
                "version": self.version,
                "epoch": self.epoch,
            }
        graph = ig.Graph(n=n, edges=np.column_stack([src, dst]), directed=False)
        snap = GraphSnapshot(graph=graph, **snap_fields)
        with self._lock:
            if (
                self._snapshot is None
                or self._snapshot.version < snap.version
                or self._snapshot.epoch < snap.epoch
            ):
                self._snapshot = snap
        return snap

    # -- persistence ---------------------------------------------------------------------------

    def flush_to_db(self, session_factory: SessionFactory) -> int:
        """Upsert the entities and edges changed since the last flush; returns how many edges were written.

        Counts and amounts are added as deltas, first/last seen widened, so several processes (or a
        restart) can share the tables. Runs under the store's lock: call it from the writer thread.
        """
        with self._lock:
            m = self._n_edges
            edges = np.flatnonzero(self._dirty[:m])
            if len(edges) == 0:
                return 0
            nodes = np.unique(np.concatenate([self._src[edges], self._dst[edges]]))
            with session_factory() as session, session.begin():
                dialect = session.get_bind().dialect.name
                self._upsert_entities(session, dialect, nodes, edges)
                self._upsert_edges(session, dialect, edges)
            self._flushed_count[edges] = self._count[edges]
            self._flushed_amount[edges] = self._amount[edges]
            self._dirty[edges] = False
            return len(edges)

    def _upsert_entities(self, session: Session, dialect: str, nodes: IntArray, edges: IntArray) -> None:
        # the newest and oldest time each node was seen in the changed edges
        ends = np.concatenate([self._src[edges], self._dst[edges]])
        lasts = np.concatenate([self._last[edges], self._last[edges]])
        firsts = np.concatenate([self._first[edges], self._first[edges]])
        order = np.searchsorted(nodes, ends)
        last = np.full(len(nodes), np.iinfo(np.int64).min, np.int64)
        first = np.full(len(nodes), np.iinfo(np.int64).max, np.int64)
        np.maximum.at(last, order, lasts)
        np.minimum.at(first, order, firsts)
        rows: list[dict[str, Any]] = []
        for i, node in enumerate(nodes.tolist()):
            entity_type, key = split_node_key(self._keys[node])
            rows.append(
                {
                    "entity_type": entity_type,
                    "key": key[:128],
                    "display_name": None,
                    "risk": 0.0,
                    "blocked": bool(self._blocked[node]),
                    "attributes": {},
                    "first_seen": _us_to_datetime(int(first[i])),
                    "last_seen": _us_to_datetime(int(last[i])),
                }
            )
        stmt: Any
        if dialect == "postgresql":
            stmt = postgresql.insert(Entity)
            newest = func.greatest(Entity.last_seen, stmt.excluded.last_seen)
        elif dialect == "sqlite":
            stmt = sqlite.insert(Entity)
            newest = func.max(Entity.last_seen, stmt.excluded.last_seen)
        else:  # pragma: no cover - only the two supported databases
            raise RuntimeError(f"the graph needs SQLite or PostgreSQL, not {dialect}")
        stmt = stmt.on_conflict_do_update(
            index_elements=["entity_type", "key"], set_={"last_seen": newest}
        ).returning(Entity.id, Entity.entity_type, Entity.key)
        found = session.execute(stmt, rows).all()
        ids = {node_key(t, k): i for i, t, k in found}
        for node in nodes.tolist():
            entity_type, key = split_node_key(self._keys[node])
            self._db_id[node] = ids[node_key(entity_type, key[:128])]

    def _upsert_edges(self, session: Session, dialect: str, edges: IntArray) -> None:
        delta_count = self._count[edges] - self._flushed_count[edges]
        delta_amount = self._amount[edges] - self._flushed_amount[edges]
        rows = [
            {
                "src_id": int(self._db_id[self._src[e]]),
                "dst_id": int(self._db_id[self._dst[e]]),
                "relation": RELATION_NAMES[int(self._rel[e])],
                "count": int(dc),
                "amount_sum": float(da),
                "first_seen": _us_to_datetime(int(self._first[e])),
                "last_seen": _us_to_datetime(int(self._last[e])),
            }
            for e, dc, da in zip(edges.tolist(), delta_count.tolist(), delta_amount.tolist(), strict=True)
        ]
        stmt: Any
        oldest: Any
        newest: Any
        if dialect == "postgresql":
            stmt = postgresql.insert(Edge)
            oldest, newest = func.least, func.greatest
        else:
            stmt = sqlite.insert(Edge)
            oldest, newest = func.min, func.max
        stmt = stmt.on_conflict_do_update(
            index_elements=["src_id", "dst_id", "relation"],
            set_={
                "count": Edge.count + stmt.excluded["count"],
                "amount_sum": Edge.amount_sum + stmt.excluded.amount_sum,
                "first_seen": oldest(Edge.first_seen, stmt.excluded.first_seen),
                "last_seen": newest(Edge.last_seen, stmt.excluded.last_seen),
            },
        )
        session.execute(stmt, rows)

    def load_from_db(self, session: Session, *, since: dt.datetime | None = None) -> int:
        """Load the stored edges seen since ``since`` (default: within ``ttl_s`` of the newest stored edge)
        and the blocked marks of their entities; returns how many edges were loaded.

        Loaded edges count as flushed: they are not written back unless they change.
        """
        if since is None:
            newest = session.scalar(select(func.max(Edge.last_seen)))
            if newest is None:
                return 0
            since = newest - dt.timedelta(seconds=self.ttl_s)
        src = Entity.__table__.alias("src")
        dst = Entity.__table__.alias("dst")
        query = (
            select(
                Edge.relation,
                src.c.entity_type.label("src_type"),
                src.c.key.label("src_key"),
                dst.c.entity_type.label("dst_type"),
                dst.c.key.label("dst_key"),
                Edge.count,
                Edge.amount_sum.label("amount"),
                Edge.first_seen,
                Edge.last_seen,
                src.c.id.label("src_db"),
                dst.c.id.label("dst_db"),
                src.c.blocked.label("src_blocked"),
                dst.c.blocked.label("dst_blocked"),
            )
            .join(src, src.c.id == Edge.src_id)
            .join(dst, dst.c.id == Edge.dst_id)
            .where(Edge.last_seen >= since)
        )
        rows = session.execute(query).all()
        if not rows:
            return 0
        frame = pl.DataFrame([r._asdict() for r in rows], infer_schema_length=None)
        frame = frame.filter(
            pl.col("relation").is_in(RELATION_NAMES)
            & pl.col("src_type").is_in(ENTITY_TYPES)
            & pl.col("dst_type").is_in(ENTITY_TYPES)
        )
        edges = frame.with_columns(
            pl.col("first_seen").dt.epoch("us"), pl.col("last_seen").dt.epoch("us")
        ).select(
            "relation",
            "src_type",
            "src_key",
            "dst_type",
            "dst_key",
            "count",
            "amount",
            "first_seen",
            "last_seen",
        )
        with self._lock:
            self.add_edges(edges)
            m = self._n_edges
            self._flushed_count[:m] = self._count[:m]
            self._flushed_amount[:m] = self._amount[:m]
            self._dirty[:m] = False
            for column, type_column, db_column in (
                ("src_key", "src_type", "src_db"),
                ("dst_key", "dst_type", "dst_db"),
            ):
                keys = (frame[type_column] + ":" + frame[column]).to_list()
                for k, db_id in zip(keys, frame[db_column].to_list(), strict=True):
                    self._db_id[self._index[k]] = db_id
            blocked = set(
                (
                    frame.filter(pl.col("src_blocked"))["src_type"]
                    + ":"
                    + frame.filter(pl.col("src_blocked"))["src_key"]
                ).to_list()
                + (
                    frame.filter(pl.col("dst_blocked"))["dst_type"]
                    + ":"
                    + frame.filter(pl.col("dst_blocked"))["dst_key"]
                ).to_list()
            )
            self.set_flags(blocked, blocked=True, bad=True)
        return frame.height
