"""Dense entity indices: map text keys (card ids, IP addresses, pair keys) to small integers.

Feature state lives in NumPy arrays indexed by these integers, so a kernel can update "the state of
card ``tok_9f2c``" with one array access instead of a dictionary lookup per event.

How it works
------------
* **Hashing.** Each key's UTF-8 bytes are hashed inside a numba kernel (eight bytes at a time with a
  multiply and a rotation, then the MurmurHash3 finaliser to spread the bits), seeded per index. Our
  own hash, rather than a library's, keeps snapshots valid across Polars versions.
* **Table.** An open-addressing table (linear probing, at most half full, size a power of two) maps
  the hash to a slot. Each 32-byte entry holds the full 64-bit hash, the slot, and where the key's
  bytes sit in the arena, and a hit is confirmed by comparing the key's bytes with that copy (a word
  at a time), so two keys whose hashes collide still get different slots: collisions cost a little
  time, never a wrong answer. A batch is hashed in a first pass so that the entry of a row a few rows
  ahead, and then the key bytes it points to, can be prefetched.
* **Slots.** Per-slot arrays hold the hash, where the key's bytes sit in a byte arena, and
  ``last_seen`` (the entity's newest effective time in µs, :data:`NONE_TS` for a fresh slot). Arrays
  grow by doubling and never shrink, so memory is bounded by the most entities alive at once.
* **Nulls.** A null key maps to index ``-1``: no state is read or written for it.
* **Eviction.** :meth:`EntityIndex.evict` frees every slot whose ``last_seen`` is before a cut-off and
  deletes its table entry in place (backward-shift deletion, so no tombstones and no rebuild). Freed
  slots go on a free list and are handed out again (lowest first) before the arrays grow. Evicted
  keys' bytes stay in the arena until a new key does not fit: then, if at least half of the arena is
  dead, it is compacted (and the table rebuilt) in one pass instead of grown, so that cost is
  amortised over the keys added in between. State arrays owned by feature modules are
  not cleared on eviction: a reused slot starts with ``last_seen == NONE_TS``, which every feature
  treats as "new entity, start from nothing".

Example
-------
>>> import polars as pl
>>> index = EntityIndex()
>>> index.lookup(pl.Series(["a", "b", None, "a"])).tolist()
[0, 1, -1, 0]
>>> len(index), index.keys([1])
(2, ['b'])
"""

from __future__ import annotations

import io
import os
import threading
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from finsecure.features._numba import NONE_TS, inline_kernel, kernel, load_u64, prefetch, prefetch_flat

__all__ = ["BatchKeys", "EntityIndex", "KeyBuffers", "key_buffers", "load_arrays", "save_arrays"]

_T = TypeVar("_T", bound=np.generic)
_AHEAD = 16
"""How many rows ahead the lookup prefetches a table entry (and, half as far ahead, its key bytes)."""
_MIN_TABLE = 16


_K1 = 0x9E3779B97F4A7C15
_K2 = 0xC2B2AE3D27D4EB4F


@inline_kernel
def _tail(data: npt.NDArray[np.uint8], start: int, end: int) -> np.uint64:
    """The ``end - start`` (< 8) bytes from ``start`` as a little-endian word, zero-padded."""
    count = end - start
    if start + 8 <= len(data):  # the usual case: read a whole word and mask off what follows
        return load_u64(data, start) & ((np.uint64(1) << np.uint64(8 * count)) - np.uint64(1))
    word = np.uint64(0)
    for j in range(count):
        word |= np.uint64(data[start + j]) << np.uint64(8 * j)
    return word


@inline_kernel
def _hash(data: npt.NDArray[np.uint8], start: int, end: int, seed: np.uint64) -> np.uint64:
    """64-bit hash of ``data[start:end]``: eight bytes at a time (multiply, rotate), then the
    MurmurHash3 finaliser with the length, so every input bit reaches every output bit."""
    k1 = np.uint64(_K1)
    k2 = np.uint64(_K2)
    h = seed ^ k1
    i = start
    while i + 8 <= end:
        h ^= load_u64(data, i) * k2
        h = ((h << np.uint64(29)) | (h >> np.uint64(35))) * k1
        i += 8
    if i < end:
        h ^= _tail(data, i, end) * k2
        h = ((h << np.uint64(29)) | (h >> np.uint64(35))) * k1
    h ^= np.uint64(end - start)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


@inline_kernel
def _same(a: npt.NDArray[np.uint8], at: int, b: npt.NDArray[np.uint8], bt: int, length: int) -> bool:
    """Whether ``a[at:at+length]`` equals ``b[bt:bt+length]``, compared a word at a time."""
    j = 0
    while j + 8 <= length:
        if load_u64(a, at + j) != load_u64(b, bt + j):
            return False
        j += 8
    if j < length:
        return bool(_tail(a, at + j, at + length) == _tail(b, bt + j, bt + length))
    return True


@kernel
def _lookup(
    offsets: npt.NDArray[np.int64],
    data: npt.NDArray[np.uint8],
    valid: npt.NDArray[np.bool_],
    seed: np.uint64,
    hash_mask: np.uint64,
    table: npt.NDArray[np.uint64],
    slot_hash: npt.NDArray[np.uint64],
    key_meta: npt.NDArray[np.int64],
    live: npt.NDArray[np.bool_],
    last_seen: npt.NDArray[np.int64],
    arena: npt.NDArray[np.uint8],
    free: npt.NDArray[np.int32],
    counters: npt.NDArray[np.int64],
    out: npt.NDArray[np.int64],
    first: int,
) -> int:
    """Look up rows ``first..`` and return the first row not done: when a new key would not fit
    (slots, arena or table more than half full) it stops so the caller can grow the arrays."""
    # counters: [slots ever used, free-list length, arena bytes used, live entities]
    # table rows: [hash, slot + 1 (0 = empty), arena offset, key length]: one probe reads one 32-byte
    # entry that says where the key's bytes are, so a hit costs the entry and the bytes, nothing else.
    table_mask = np.uint64(len(table) - 1)
    check_nulls = len(valid) > 0
    one = np.uint64(1)
    rows = len(out)
    # Hash every row first (a sequential pass), so the table entry of a row a few rows ahead can be
    # prefetched, and, a few rows later, the key bytes that entry points to: with many entities
    # nearly every probe and every key comparison is a cache miss.
    hashes = np.empty(rows, dtype=np.uint64)
    for i in range(first, rows):
        hashes[i] = _hash(data, offsets[i], offsets[i + 1], seed) & hash_mask
    half = _AHEAD // 2
    for i in range(first, rows):
        if i + _AHEAD < rows:
            prefetch(table, int(hashes[i + _AHEAD] & table_mask), 0)
        if i + half < rows:
            near = int(hashes[i + half] & table_mask)
            if table[near, 1] != 0:
                prefetch_flat(arena, int(table[near, 2]))
        if check_nulls and not valid[i]:
            out[i] = -1
            continue
        start = offsets[i]
        length = offsets[i + 1] - start
        h = hashes[i]
        pos = h & table_mask
        while True:
            entry = table[pos, 1]
            if entry == 0:
                if (
                    (counters[1] == 0 and counters[0] >= len(slot_hash))
                    or counters[2] + length > len(arena)
                    or 2 * (counters[3] + 1) > len(table)
                ):
                    return i
                if counters[1] > 0:
                    counters[1] -= 1
                    slot = np.int64(free[counters[1]])
                else:
                    slot = counters[0]
                    counters[0] += 1
                at = counters[2]
                for j in range(length):
                    arena[at + j] = data[start + j]
                counters[2] += length
                key_meta[slot, 0] = at
                key_meta[slot, 1] = length
                slot_hash[slot] = h
                live[slot] = True
                last_seen[slot] = NONE_TS
                table[pos, 0] = h
                table[pos, 1] = np.uint64(slot) + one
                table[pos, 2] = np.uint64(at)
                table[pos, 3] = np.uint64(length)
                counters[3] += 1
                out[i] = slot
                break
            if (
                table[pos, 0] == h
                and table[pos, 3] == length
                and _same(arena, int(table[pos, 2]), data, start, length)
            ):
                out[i] = np.int64(entry - one)
                break
            pos = (pos + one) & table_mask
    return len(out)


@kernel
def _evict(
    cutoff: int,
    table: npt.NDArray[np.uint64],
    slot_hash: npt.NDArray[np.uint64],
    key_meta: npt.NDArray[np.int64],
    live: npt.NDArray[np.bool_],
    last_seen: npt.NDArray[np.int64],
    free: npt.NDArray[np.int32],
    counters: npt.NDArray[np.int64],
    freed_out: npt.NDArray[np.int64],
) -> None:
    """Free slots last seen before ``cutoff``, deleting them from the table in place.

    ``freed_out`` receives ``[slots freed, arena bytes they held]``. Deletion shifts later entries of
    the same probe run back (linear probing needs no tombstones), so the cost is proportional to the
    slots scanned and freed, not to the table: no rebuild per eviction.
    """
    table_mask = np.uint64(len(table) - 1)
    one = np.uint64(1)
    freed = 0
    dead_bytes = 0
    # Walk slots from the top so the free list hands out low slots first (keeps arrays dense).
    for slot in range(counters[0] - 1, -1, -1):
        if not live[slot] or last_seen[slot] >= cutoff:
            continue
        live[slot] = False
        free[counters[1]] = slot
        counters[1] += 1
        counters[3] -= 1
        freed += 1
        dead_bytes += key_meta[slot, 1]
        entry = np.uint64(slot) + one
        hole = slot_hash[slot] & table_mask
        while table[hole, 1] != entry:
            hole = (hole + one) & table_mask
        probe = hole
        while True:
            probe = (probe + one) & table_mask
            if table[probe, 1] == 0:
                break
            home = table[probe, 0] & table_mask
            # The entry at ``probe`` may move into the hole only if its home is not cyclically in
            # (hole, probe]: otherwise a lookup starting at its home would no longer reach it.
            stays = hole < home <= probe if hole <= probe else home > hole or home <= probe
            if stays:
                continue
            for word in range(4):
                table[hole, word] = table[probe, word]
            hole = probe
        for word in range(4):
            table[hole, word] = 0
    freed_out[0] = freed
    freed_out[1] = dead_bytes


@kernel
def _evict_and_rebuild(
    cutoff: int,
    table: npt.NDArray[np.uint64],
    slot_hash: npt.NDArray[np.uint64],
    key_meta: npt.NDArray[np.int64],
    live: npt.NDArray[np.bool_],
    last_seen: npt.NDArray[np.int64],
    arena: npt.NDArray[np.uint8],
    new_arena: npt.NDArray[np.uint8],
    free: npt.NDArray[np.int32],
    counters: npt.NDArray[np.int64],
) -> int:
    """Free slots last seen before ``cutoff``; rebuild the table and compact keys into ``new_arena``."""
    table[:] = 0
    table_mask = np.uint64(len(table) - 1)
    one = np.uint64(1)
    freed = 0
    at = 0
    # Walk slots from the top so the free list hands out low slots first (keeps arrays dense).
    for slot in range(counters[0] - 1, -1, -1):
        if not live[slot]:
            continue
        if last_seen[slot] < cutoff:
            live[slot] = False
            free[counters[1]] = slot
            counters[1] += 1
            counters[3] -= 1
            freed += 1
            continue
        length = key_meta[slot, 1]
        off = key_meta[slot, 0]
        for j in range(length):
            new_arena[at + j] = arena[off + j]
        key_meta[slot, 0] = at
        at += length
        h = slot_hash[slot]
        pos = h & table_mask
        while table[pos, 1] != 0:
            pos = (pos + one) & table_mask
        table[pos, 0] = h
        table[pos, 1] = np.uint64(slot) + one
        table[pos, 2] = np.uint64(key_meta[slot, 0])
        table[pos, 3] = np.uint64(length)
    counters[2] = at
    return freed


KeyBuffers = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.bool_]]
"""A text column as ``(offsets, bytes, validity)``: key ``i`` is ``bytes[offsets[i]:offsets[i + 1]]``;
validity is empty when there are no nulls. Offsets and bytes are read-only arrays (as Arrow hands
them out), so every kernel sees one array type and numba compiles it once."""


def key_buffers(keys: pl.Series | pa.Array | pa.ChunkedArray) -> KeyBuffers:
    """The offsets, bytes and validity (empty when there are no nulls) of a text column, without copies
    where Arrow allows.

    Non-text columns (e.g. integer ports) are cast to text first.
    """
    array = keys.to_arrow() if isinstance(keys, pl.Series) else keys
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    count = len(array)
    _, offsets_buf, data_buf = array.buffers()
    if offsets_buf is None:
        offsets = np.zeros(count + 1, dtype=np.int64)
        offsets.flags.writeable = False
    else:
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + count + 1]
    if data_buf is not None:
        data = np.frombuffer(data_buf, dtype=np.uint8)
    else:
        data = np.zeros(1, np.uint8)
        data.flags.writeable = False
    if array.null_count:
        valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    else:
        valid = np.zeros(0, dtype=np.bool_)
    return offsets, data, valid


class BatchKeys:
    """The key columns of one batch as :data:`KeyBuffers`, each converted once, however many features
    (windows, novelty pairs, distinct counts) use it.

    Examples
    --------
    >>> keys = BatchKeys(pl.DataFrame({"a": ["x", None], "b": [None, None]}))
    >>> keys.get("a")[2].tolist(), keys.get("b"), keys.get("missing")
    ([True, False], None, None)
    """

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.rows = frame.height
        self._buffers: dict[str, KeyBuffers | None] = {}
        self._lock = threading.Lock()  # tasks on several threads share one batch's keys

    def present(self, name: str) -> bool:
        """Whether the batch has the column with at least one value (cheap: no conversion)."""
        return name in self.frame.columns and self.frame[name].null_count() < self.rows

    def get(self, name: str) -> KeyBuffers | None:
        """The column's buffers, or ``None`` when the batch lacks it or it holds only nulls."""
        with self._lock:
            if name not in self._buffers:
                self._buffers[name] = key_buffers(self.frame[name]) if self.present(name) else None
            return self._buffers[name]


class EntityIndex:
    """Maps text keys to dense integer slots, with eviction of idle keys and snapshots.

    Parameters
    ----------
    capacity
        Slots to allocate up front (grows by doubling).
    seed
        Hash seed; random by default so that crafted keys cannot aim at one table position.
    hash_bits
        Keep only this many low bits of each hash. Only for tests: with few bits, different keys
        collide on purpose and must still get different slots.
    """

    def __init__(self, *, capacity: int = 64, seed: int | None = None, hash_bits: int = 64) -> None:
        capacity = max(int(capacity), 1)
        self._seed = np.uint64(int.from_bytes(os.urandom(8), "little") if seed is None else seed)
        self._hash_mask = np.uint64((1 << hash_bits) - 1 if hash_bits < 64 else 0xFFFFFFFFFFFFFFFF)
        self._slot_hash = np.zeros(capacity, dtype=np.uint64)
        self._key_meta = np.zeros((capacity, 2), dtype=np.int64)  # (arena offset, length) per slot
        self._live = np.zeros(capacity, dtype=np.bool_)
        self.last_seen: npt.NDArray[np.int64] = np.full(capacity, NONE_TS, dtype=np.int64)
        """Newest effective time (µs) of each slot's entity; written by the feature kernels."""
        self._free = np.zeros(capacity, dtype=np.int32)
        self._arena = np.zeros(max(16 * capacity, 64), dtype=np.uint8)
        self._counters = np.zeros(4, dtype=np.int64)
        self._dead_bytes = 0
        """Arena bytes of evicted keys, reclaimed when the arena is next compacted."""
        table = _MIN_TABLE
        while table < 2 * capacity:
            table *= 2
        self._table = np.zeros((table, 4), dtype=np.uint64)

    def __len__(self) -> int:
        """Number of live entities."""
        return int(self._counters[3])

    @property
    def capacity(self) -> int:
        """Length of the per-slot arrays; state arrays keyed by this index must be at least this long."""
        return len(self._slot_hash)

    @property
    def high_water(self) -> int:
        """Slots handed out so far (live or free): state arrays beyond this are untouched."""
        return int(self._counters[0])

    def nbytes(self) -> int:
        """Memory held by this index, in bytes."""
        arrays = (
            self._slot_hash,
            self._key_meta,
            self._live,
            self.last_seen,
            self._free,
            self._arena,
            self._table,
        )
        return sum(array.nbytes for array in arrays)

    def lookup(self, keys: pl.Series | pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int64]:
        """Slot of each key, adding keys not seen before; ``-1`` for nulls.

        New slots start with ``last_seen == NONE_TS``. After the call, :attr:`capacity` may have grown
        (by doubling, only when a new key does not fit).
        """
        return self.lookup_buffers(key_buffers(keys))

    def lookup_buffers(self, keys: KeyBuffers) -> npt.NDArray[np.int64]:
        """:meth:`lookup` for keys already in buffers (see :func:`key_buffers`)."""
        offsets, data, valid = keys
        count = len(offsets) - 1
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            done = _lookup(
                offsets,
                data,
                valid,
                self._seed,
                self._hash_mask,
                self._table,
                self._slot_hash,
                self._key_meta,
                self._live,
                self.last_seen,
                self._arena,
                self._free,
                self._counters,
                out,
                done,
            )
            if done < count:
                self._grow(int(offsets[done + 1] - offsets[done]))
        return out

    def evict(self, cutoff_us: int) -> int:
        """Free every entity whose ``last_seen`` is before ``cutoff_us``; return how many were freed."""
        freed = np.zeros(2, dtype=np.int64)
        _evict(
            int(cutoff_us),
            self._table,
            self._slot_hash,
            self._key_meta,
            self._live,
            self.last_seen,
            self._free,
            self._counters,
            freed,
        )
        self._dead_bytes += int(freed[1])
        return int(freed[0])

    def cap_cutoff(self, keep: int) -> int | None:
        """The ``last_seen`` cut-off that leaves the ``keep`` most recently seen entities or fewer (all
        those last seen at the cut-off time or later), or ``None`` when at most ``keep`` are live.

        >>> index = EntityIndex()
        >>> index.lookup(pl.Series(["a", "b", "c"])).tolist()
        [0, 1, 2]
        >>> index.last_seen[:3] = [30, 10, 20]
        >>> index.cap_cutoff(2), index.cap_cutoff(3)
        (11, None)
        """
        used = self.high_water
        seen = self.last_seen[:used][self._live[:used]]
        if len(seen) <= keep:
            return None
        if keep <= 0:
            return int(seen.max()) + 1
        position = len(seen) - keep - 1  # the newest time that must go
        return int(np.partition(seen, position)[position]) + 1

    def slots_before(self, cutoff_us: int) -> npt.NDArray[np.int64]:
        """Live slots last seen before ``cutoff_us`` (those :meth:`evict` would free)."""
        used = self.high_water
        return np.flatnonzero(self._live[:used] & (self.last_seen[:used] < cutoff_us)).astype(np.int64)

    def forget(self, slots: npt.NDArray[np.int64]) -> int:
        """Free the given live slots at once (as :meth:`evict` does); return how many were freed."""
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) == 0:
            return 0
        self.last_seen[slots] = NONE_TS
        # Every other live slot has a real time (lookups write it in the same batch), so a cut-off just
        # above NONE_TS frees exactly these.
        return self.evict(NONE_TS + 1)

    def _free_and_rebuild(self, cutoff_us: int) -> int:
        new_arena = np.empty_like(self._arena)  # only the compacted prefix is ever read
        freed = _evict_and_rebuild(
            int(cutoff_us),
            self._table,
            self._slot_hash,
            self._key_meta,
            self._live,
            self.last_seen,
            self._arena,
            new_arena,
            self._free,
            self._counters,
        )
        self._arena = new_arena
        self._dead_bytes = 0
        return int(freed)

    def keys(self, slots: npt.ArrayLike) -> list[str | None]:
        """The text keys of some slots (``None`` for a free slot); for debugging and tests."""
        result: list[str | None] = []
        for slot in np.asarray(slots, dtype=np.int64).tolist():
            if slot < 0 or slot >= self.high_water or not self._live[slot]:
                result.append(None)
                continue
            start, length = (int(value) for value in self._key_meta[slot])
            result.append(bytes(self._arena[start : start + length]).decode())
        return result

    def _grow(self, key_bytes: int) -> None:
        """Double whatever is full so that one more key of ``key_bytes`` bytes fits."""
        if int(self._counters[1]) == 0 and self.high_water >= self.capacity:
            self._grow_slots(2 * self.capacity)
        need_arena = int(self._counters[2]) + key_bytes
        if need_arena > len(self._arena) and 2 * self._dead_bytes >= int(self._counters[2]):
            # At least half the arena holds evicted keys: compacting it (which rebuilds the table)
            # makes room; amortised over the keys added since the last time, like doubling.
            self._rebuild()
            need_arena = int(self._counters[2]) + key_bytes
        if need_arena > len(self._arena):
            self._arena = _grown(self._arena, max(2 * len(self._arena), need_arena), 0)
        if 2 * (len(self) + 1) > len(self._table):
            self._table = np.zeros((2 * len(self._table), 4), dtype=np.uint64)
            self._rebuild()

    def _grow_slots(self, size: int) -> None:
        self._slot_hash = _grown(self._slot_hash, size, 0)
        self._key_meta = _grown(self._key_meta, size, 0)
        self._live = _grown(self._live, size, False)
        self.last_seen = _grown(self.last_seen, size, NONE_TS)
        self._free = _grown(self._free, size, 0)

    def _rebuild(self) -> None:
        """Re-insert every live slot into the (emptied or resized) table, compacting the arena."""
        # A cut-off below every time frees nothing, so this only rebuilds.
        self._free_and_rebuild(NONE_TS)

    def snapshot(self) -> dict[str, npt.NDArray[np.generic]]:
        """The index as named arrays (only the slots in use), for :meth:`restore`."""
        used = self.high_water
        self._rebuild()  # compacts the arena so only live keys are saved
        arena_used = int(self._counters[2])
        return {
            "meta": np.array([int(self._seed), int(self._hash_mask)], dtype=np.uint64),
            "counters": self._counters.copy(),
            "slot_hash": self._slot_hash[:used].copy(),
            "key_meta": self._key_meta[:used].copy(),
            "live": self._live[:used].copy(),
            "last_seen": self.last_seen[:used].copy(),
            "free": self._free[: int(self._counters[1])].copy(),
            "arena": self._arena[:arena_used].copy(),
        }

    @classmethod
    def restore(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> EntityIndex:
        """Rebuild an index from :meth:`snapshot` output."""
        meta = np.asarray(arrays["meta"], dtype=np.uint64)
        counters = np.asarray(arrays["counters"], dtype=np.int64).copy()
        used = int(counters[0])
        index = cls(capacity=max(used, 1), seed=int(meta[0]))
        index._hash_mask = np.uint64(meta[1])
        index._counters = counters
        index._slot_hash[:used] = arrays["slot_hash"]
        index._key_meta[:used] = arrays["key_meta"]
        index._live[:used] = arrays["live"]
        index.last_seen[:used] = arrays["last_seen"]
        index._free[: int(counters[1])] = arrays["free"]
        arena = np.asarray(arrays["arena"], dtype=np.uint8)
        index._arena = np.zeros(max(2 * len(arena), 64), dtype=np.uint8)
        index._arena[: len(arena)] = arena
        table = _MIN_TABLE
        while table < 2 * max(len(index), 1):
            table *= 2
        index._table = np.zeros((table, 4), dtype=np.uint64)
        index._rebuild()
        return index


def _grown(array: npt.NDArray[_T], size: int, fill: object) -> npt.NDArray[_T]:
    """A copy of ``array`` extended to ``size`` rows filled with ``fill``."""
    grown: npt.NDArray[_T] = np.full((size, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def save_arrays(arrays: dict[str, npt.NDArray[np.generic]]) -> bytes:
    """Named arrays as ``.npz`` bytes (no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def load_arrays(data: bytes) -> dict[str, npt.NDArray[np.generic]]:
    """The arrays saved by :func:`save_arrays`, refusing pickled objects."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
