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
from finsecure.graph.edges import ENTITY_TYPES, RELATION_TEXT, RELATIONS, entity_type_of

__all__ = ["GraphSnapshot", "GraphStore", "node_key", "split_node_key"]

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
UIntArray = npt.NDArray[np.uint64]

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


_HASH_SEED = 0x5EED
#: Mixed into a key's hash so that equal keys of two entity types are two nodes.
_TYPE_SALT = np.asarray(
    [(0x9E3779B97F4A7C15 * (code + 1)) % (1 << 64) for code in range(len(ENTITY_TYPES))], np.uint64
)


def _hash_keys(keys: pl.Series, types: int | npt.NDArray[np.int8]) -> UIntArray:
    """64-bit hashes of (type, key) for a whole column at once (Polars' vectorised hash)."""
    hashed: UIntArray = keys.cast(pl.String).hash(seed=_HASH_SEED).to_numpy()
    return np.bitwise_xor(hashed, _TYPE_SALT[types])


def _ts_us(frame: pl.DataFrame) -> pl.Expr:
    if isinstance(frame.schema["ts"], pl.Datetime):
        return pl.col("ts").dt.epoch("us")
    return pl.col("ts").cast(pl.Int64)


def _lookup(sorted_keys: npt.NDArray[Any], values: IntArray, keys: npt.NDArray[Any]) -> IntArray:
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, np.int64)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == keys, values[at], -1)


class _SortedIndex:
    """Distinct keys -> ids, looked up many at once (binary search over sorted NumPy arrays).

    New keys go into a small sorted part that is merged into the main part once it holds an eighth as
    many keys: each key is copied a bounded number of times however the graph grows.
    """

    def __init__(self, dtype: type[np.generic]) -> None:
        self._main = np.zeros(0, dtype)
        self._main_ids = np.zeros(0, np.int64)
        self._recent = np.zeros(0, dtype)
        self._recent_ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._main) + len(self._recent)

    def find(self, keys: npt.NDArray[Any]) -> IntArray:
        """The id of each key, ``-1`` for keys not in the index."""
        out = _lookup(self._main, self._main_ids, keys)
        if len(self._recent):
            missing = np.flatnonzero(out < 0)
            out[missing] = _lookup(self._recent, self._recent_ids, keys[missing])
        return out

    def add(self, keys: npt.NDArray[Any], ids: IntArray) -> None:
        """Add distinct keys that are not in the index yet."""
        if len(keys) == 0:
            return
        order = np.argsort(keys)
        keys, ids = keys[order], ids[order]
        at = np.searchsorted(self._recent, keys)
        self._recent = np.insert(self._recent, at, keys)
        self._recent_ids = np.insert(self._recent_ids, at, ids)
        if len(self._recent) > max(65_536, len(self._main) // 8):
            at = np.searchsorted(self._main, self._recent)
            self._main = np.insert(self._main, at, self._recent)
            self._main_ids = np.insert(self._main_ids, at, self._recent_ids)
            self._recent = self._recent[:0]
            self._recent_ids = self._recent_ids[:0]


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

    def adjacency(self) -> tuple[IntArray, IntArray, IntArray]:
        """``(indptr, neighbour, edge)``: node ``v`` reaches ``neighbour[indptr[v]:indptr[v + 1]]`` by the
        edges ``edge[...]`` (compressed sparse rows, built once per snapshot, for vectorised hops)."""
        with self.lock:
            cached: tuple[IntArray, IntArray, IntArray] | None = self.results.get("adjacency")
            if cached is None:
                m = self.edge_count
                ends = np.concatenate([self.src, self.dst])
                order = np.argsort(ends, kind="stable")
                indptr = np.zeros(self.node_count + 1, np.int64)
                np.cumsum(np.bincount(ends, minlength=self.node_count), out=indptr[1:])
                edge_ids = np.concatenate([np.arange(m, dtype=np.int64)] * 2)
                cached = (indptr, np.concatenate([self.dst, self.src])[order], edge_ids[order])
                self.results["adjacency"] = cached
        return cached

    def incident_slots(self, nodes: IntArray) -> IntArray:
        """Positions in :meth:`adjacency`'s ``neighbour``/``edge`` arrays of every link of ``nodes``."""
        indptr = self.adjacency()[0]
        starts = indptr[nodes]
        lengths = indptr[nodes + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total, dtype=np.int64)

    def edges_within(self, nodes: Iterable[int]) -> list[int]:
        """Ids of the edges whose two ends are both in ``nodes`` (ascending)."""
        members = np.unique(np.fromiter(nodes, np.int64))
        if len(members) == 0:
            return []
        edges = np.unique(self.adjacency()[2][self.incident_slots(members)])
        inside = np.zeros(self.node_count, np.bool_)
        inside[members] = True
        found: list[int] = edges[inside[self.src[edges]] & inside[self.dst[edges]]].tolist()
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
        # the raw key of every node (without its type), for checking hash lookups in bulk
        self._raw_keys = pl.Series("key", [], pl.String)
        self._node_type = np.zeros(0, np.int8)
        self._blocked = np.zeros(0, np.bool_)
        self._bad = np.zeros(0, np.bool_)
        self._db_id = np.zeros(0, np.int64)
        # nodes by the 64-bit hash of (type, key), sorted: a vectorised lookup for a whole column
        self._node_hashes = _SortedIndex(np.uint64)
        # packed (src, dst, relation) keys of the edges, sorted, and the edge slot of each
        self._edge_index = _SortedIndex(np.int64)
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
        """Add the links of one canonical batch; returns how many distinct edges it touched.

        The same links as :func:`~finsecure.graph.edges.aggregate_edges`, computed on integers: each entity
        column is hashed once, mapped to dense node ids in bulk, and the links are summed by their packed
        ``(source, target, relation)`` key with NumPy; no Python code runs per event or per edge.
        """
        domain = Domain(domain)
        relations = [
            rel
            for rel in RELATIONS[domain]
            if rel.src_column in frame.columns
            and rel.dst_column in frame.columns
            and (rel.only_when is None or rel.only_when[0] in frame.columns)
        ]
        if frame.height == 0 or "ts" not in frame.columns or not relations:
            with self._lock:
                self.events_seen += frame.height
            return 0
        columns = sorted({c for rel in relations for c in (rel.src_column, rel.dst_column)})
        # one Polars pass computes every column's key hash and null mask, the filters, times and amounts
        exprs = [_ts_us(frame).fill_null(0).alias("ts")]
        for c in columns:
            exprs += [
                pl.col(c).cast(pl.String).hash(seed=_HASH_SEED).alias(f"hash:{c}"),
                pl.col(c).is_not_null().alias(f"present:{c}"),
            ]
        for rel in relations:
            if rel.only_when is not None:
                column, value = rel.only_when
                exprs.append((pl.col(column) == value).fill_null(False).alias(f"when:{column}={value}"))
            amount = rel.amount_column
            if (
                amount is not None
                and amount in frame.columns
                and f"amount:{amount}" not in {e.meta.output_name() for e in exprs}
            ):
                raw = pl.col(amount).cast(pl.Float64)
                exprs.append(pl.when(raw.is_finite()).then(raw).otherwise(0.0).alias(f"amount:{amount}"))
        computed = frame.select(exprs)
        hashes = {
            c: np.bitwise_xor(computed[f"hash:{c}"].to_numpy(), _TYPE_SALT[_TYPE_CODE[entity_type_of(c)]])
            for c in columns
        }
        present = {c: computed[f"present:{c}"].to_numpy() for c in columns}
        keeps: list[BoolArray] = []
        used = {c: np.zeros(frame.height, np.bool_) for c in columns}
        for rel in relations:
            keep = present[rel.src_column] & present[rel.dst_column]
            if entity_type_of(rel.src_column) == entity_type_of(rel.dst_column):
                keep &= hashes[rel.src_column] != hashes[rel.dst_column]
            if rel.only_when is not None:
                keep &= computed[f"when:{rel.only_when[0]}={rel.only_when[1]}"].to_numpy()
            keeps.append(keep)
            used[rel.src_column] |= keep
            used[rel.dst_column] |= keep
        ts = computed["ts"].to_numpy().astype(np.int64, copy=False)
        with self._lock:
            self.events_seen += frame.height
            ids = {
                c: self._column_ids(frame[c], hashes[c], used[c], _TYPE_CODE[entity_type_of(c)])
                for c in columns
            }
            packed_parts: list[IntArray] = []
            amount_parts: list[FloatArray] = []
            ts_parts: list[IntArray] = []
            for rel, keep in zip(relations, keeps, strict=True):
                rows = np.flatnonzero(keep)
                if len(rows) == 0:
                    continue
                src, dst = ids[rel.src_column][rows], ids[rel.dst_column][rows]
                packed_parts.append(
                    (src << (_NODE_BITS + _REL_BITS)) | (dst << _REL_BITS) | _RELATION_CODE[rel.relation]
                )
                if f"amount:{rel.amount_column}" in computed.columns:
                    amount_parts.append(computed[f"amount:{rel.amount_column}"].to_numpy()[rows])
                else:
                    amount_parts.append(np.zeros(len(rows), np.float64))
                ts_parts.append(ts[rows])
            if not packed_parts:
                return 0
            packed = np.concatenate(packed_parts)
            order = np.argsort(packed)
            packed = packed[order]
            starts = np.flatnonzero(np.concatenate(([True], packed[1:] != packed[:-1])))
            ts_sorted = np.concatenate(ts_parts)[order]
            return self._merge(
                packed[starts],
                np.diff(np.append(starts, len(packed))).astype(np.int64),
                np.add.reduceat(np.concatenate(amount_parts)[order], starts),
                np.minimum.reduceat(ts_sorted, starts),
                np.maximum.reduceat(ts_sorted, starts),
            )

    def _column_ids(self, keys: pl.Series, hashes: UIntArray, used: BoolArray, type_code: int) -> IntArray:
        """Dense node ids of the ``used`` rows of one entity column (``-1`` elsewhere), creating new nodes."""
        out = np.full(len(keys), -1, np.int64)
        rows = np.flatnonzero(used)
        if len(rows) == 0:
            return out
        unique, first, inverse = np.unique(hashes[rows], return_index=True, return_inverse=True)
        names = keys.cast(pl.String).gather(rows[first])
        types = np.full(len(unique), type_code, np.int8)
        out[rows] = self._node_ids(unique, names, types)[inverse.reshape(-1)]
        return out

    def _node_ids(self, hashes: UIntArray, keys: pl.Series, types: npt.NDArray[np.int8]) -> IntArray:
        """Dense ids of distinct nodes given by their hash, raw key and type code; new ones are created.

        Found hashes are checked against the stored keys in bulk; a (very unlikely) hash collision is
        resolved by the exact ``"<type>:<key>"`` dictionary.
        """
        ids = self._node_hashes.find(hashes)
        found = np.flatnonzero(ids >= 0)
        if len(found):
            stored = self._raw_keys.gather(ids[found])
            same = (stored == keys.gather(found)).to_numpy() & (self._node_type[ids[found]] == types[found])
            ids[found[~same]] = -1
        missing = np.flatnonzero(ids < 0)
        if len(missing) == 0:
            return ids
        names = [
            f"{ENTITY_TYPES[t]}:{k}"
            for t, k in zip(types[missing].tolist(), keys.gather(missing).to_list(), strict=True)
        ]
        index = self._index
        known = [index.get(name, -1) for name in names]  # collisions found earlier, or nodes not hashed
        new = [i for i, k in enumerate(known) if k < 0]
        start = len(self._keys)
        n = start + len(new)
        for offset, i in enumerate(new):
            known[i] = start + offset
            index[names[i]] = start + offset
        ids[missing] = known
        if new:
            new_rows = missing[new]
            self._keys.extend(names[i] for i in new)
            self._raw_keys = self._raw_keys.append(keys.gather(new_rows))
            if self._raw_keys.n_chunks() > 64:
                self._raw_keys = self._raw_keys.rechunk()
            self._node_type = _grow(self._node_type, n)
            self._blocked = _grow(self._blocked, n)
            self._bad = _grow(self._bad, n)
            self._db_id = _grow(self._db_id, n)
            self._node_type[start:n] = types[new_rows]
            # a new hash equal to a stored one (another key) stays out of the hash index: the dictionary
            # finds that node
            new_hashes = hashes[new_rows]
            fresh = self._node_hashes.find(new_hashes) < 0
            _, distinct = np.unique(new_hashes, return_index=True)
            fresh &= np.isin(np.arange(len(new_hashes)), distinct)
            self._node_hashes.add(new_hashes[fresh], np.arange(start, n, dtype=np.int64)[fresh])
        return ids

    def lookup_ids(self, keys: pl.Series, entity_type: str) -> tuple[IntArray, int]:
        """Dense node ids of a column of keys of one entity type (``-1`` for unknown keys and nulls), and
        the :attr:`epoch` they belong to (ids change when the epoch does). Vectorised, read-only.

        >>> import datetime as dt
        >>> store = GraphStore()
        >>> _ = store.update("payment", pl.DataFrame({"ts": [dt.datetime(2026, 1, 1)], "card_id": ["c1"],
        ...     "terminal_id": ["t1"]}))
        >>> store.lookup_ids(pl.Series(["t1", None, "c1"]), "terminal_id")[0].tolist()
        [1, -1, -1]
        """
        code = _TYPE_CODE[entity_type]
        hashes = _hash_keys(keys, code)
        present = keys.is_not_null().to_numpy()
        with self._lock:
            ids = np.where(present, self._node_hashes.find(hashes), -1)
            found = np.flatnonzero(ids >= 0)
            if len(found):
                same = (self._raw_keys.gather(ids[found]) == keys.cast(pl.String).gather(found)).to_numpy()
                same &= self._node_type[ids[found]] == code
                ids[found[~same]] = -1
            # keys whose hash collided with another key's are only in the dictionary (very rare)
            if len(self._index) > len(self._node_hashes):
                missing = np.flatnonzero(present & (ids < 0))
                names = keys.cast(pl.String).gather(missing).to_list()
                ids[missing] = [self._index.get(f"{entity_type}:{k}", -1) for k in names]
            return ids, self.epoch

    def add_edges(self, edges: pl.DataFrame) -> int:
        """Merge an aggregated edge frame (:data:`~finsecure.graph.edges.EDGE_SCHEMA`) into the graph.

        Each ``(relation, source, target)`` must appear once in ``edges`` (as :func:`aggregate_edges`
        and :func:`merge_edges` return them).
        """
        if edges.height == 0:
            return 0
        keys = pl.concat([edges["src_key"], edges["dst_key"]]).cast(pl.String)
        types = (
            pl.concat([edges["src_type"], edges["dst_type"]])
            .replace_strict(ENTITY_TYPES, range(len(ENTITY_TYPES)), return_dtype=pl.Int8)
            .to_numpy()
        )
        hashes = _hash_keys(keys, types)
        rel = edges["relation"].replace_strict(
            RELATION_NAMES, range(len(RELATION_NAMES)), return_dtype=pl.Int64
        )
        with self._lock:
            unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
            both = self._node_ids(unique, keys.gather(first), types[first])[inverse.reshape(-1)]
            src, dst = both[: edges.height], both[edges.height :]
            packed = (src << (_NODE_BITS + _REL_BITS)) | (dst << _REL_BITS) | rel.to_numpy().astype(np.int64)
            return self._merge(
                packed,
                edges["count"].to_numpy().astype(np.int64, copy=False),
                edges["amount"].cast(pl.Float64).to_numpy(),
                edges["first_seen"].to_numpy().astype(np.int64, copy=False),
                edges["last_seen"].to_numpy().astype(np.int64, copy=False),
            )

    def _merge(
        self, packed: IntArray, count: IntArray, amount: FloatArray, first: IntArray, last: IntArray
    ) -> int:
        """Add distinct packed edges (with their sums) to the edge arrays; call under the lock."""
        where = self._edge_index.find(packed)
        new = where < 0
        n_new = int(new.sum())
        if n_new:
            start = self._n_edges
            end = start + n_new
            self._grow_edges(end)
            slots = np.arange(start, end, dtype=np.int64)
            where[new] = slots
            fresh = packed[new]
            self._edge_index.add(fresh, slots)
            self._src[start:end] = fresh >> (_NODE_BITS + _REL_BITS)
            self._dst[start:end] = (fresh >> _REL_BITS) & ((1 << _NODE_BITS) - 1)
            self._rel[start:end] = fresh & ((1 << _REL_BITS) - 1)
            self._first[start:end] = np.iinfo(np.int64).max
            self._last[start:end] = np.iinfo(np.int64).min
            self._n_edges = end
        # every edge appears once in ``packed``, so plain fancy indexing adds correctly
        self._count[where] += count
        self._amount[where] += amount
        self._first[where] = np.minimum(self._first[where], first)
        self._last[where] = np.maximum(self._last[where], last)
        self._dirty[where] = True
        self.now_us = max(self.now_us, int(last.max()))
        self.version += 1
        return len(packed)

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
            self._edge_index = _SortedIndex(np.int64)
            self._edge_index.add(packed, np.arange(len(packed), dtype=np.int64))
            self._raw_keys = self._raw_keys.gather(old_ids).rechunk()
            self._node_hashes = _SortedIndex(np.uint64)
            hashes = _hash_keys(self._raw_keys, self._node_type)
            _, distinct = np.unique(hashes, return_index=True)  # collided keys are found by the dictionary
            self._node_hashes.add(hashes[distinct], distinct.astype(np.int64))
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
