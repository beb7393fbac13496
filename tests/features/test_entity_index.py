"""Dense entity indices: stable slots, nulls, hash collisions, growth, eviction and snapshots."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from finsecure.features._numba import NONE_TS
from finsecure.features.entity_index import EntityIndex, key_buffers, load_arrays, save_arrays


def test_lookup__same_key_same_slot_and_nulls_get_minus_one() -> None:
    index = EntityIndex()
    first = index.lookup(pl.Series(["a", "b", None, "a", "c"]))
    again = index.lookup(pl.Series(["c", "a", "b", None]))
    assert first.tolist() == [0, 1, -1, 0, 2]
    assert again.tolist() == [2, 0, 1, -1]
    assert len(index) == 3
    assert index.last_seen[:3].tolist() == [NONE_TS] * 3


def test_lookup__forced_hash_collisions_keep_keys_apart() -> None:
    """With one hash bit every key collides with half the others; slots must still be exact."""
    index = EntityIndex(capacity=4, hash_bits=1)
    keys = [f"key-{n}" for n in range(300)] + ["", "\u00e9", "key-1 "]
    slots = index.lookup(pl.Series(keys))
    assert len(set(slots.tolist())) == len(keys)
    assert index.lookup(pl.Series(list(reversed(keys)))).tolist() == list(reversed(slots.tolist()))
    assert index.keys(slots) == keys


def test_lookup__grows_only_when_needed() -> None:
    index = EntityIndex(capacity=2)
    index.lookup(pl.Series([f"k{n}" for n in range(5)] * 100))
    assert len(index) == 5
    assert index.capacity == 8  # doubled 2 -> 4 -> 8, not sized for the 500 rows


def test_lookup__accepts_arrow_and_non_text_keys() -> None:
    index = EntityIndex()
    assert index.lookup(pa.chunked_array([["x"], ["y", "x"]])).tolist() == [0, 1, 0]
    assert index.lookup(pl.Series([443, 80, 443])).tolist() == [2, 3, 2]
    assert index.keys([2, 3]) == ["443", "80"]


def test_key_buffers__sliced_series_offsets() -> None:
    offsets, data, valid = key_buffers(pl.Series(["aa", "b", None, "cc"])[1:])
    assert offsets[-1] - offsets[0] == 3
    assert bytes(data[offsets[0] : offsets[-1]]) == b"bcc"
    assert valid.tolist() == [True, False, True]


def test_evict__frees_idle_slots_and_reuses_them() -> None:
    index = EntityIndex(capacity=4)
    slots = index.lookup(pl.Series(["old1", "old2", "fresh"]))
    index.last_seen[slots] = [10, 20, 100]
    assert index.evict(50) == 2
    assert len(index) == 1
    assert index.keys(slots) == [None, None, "fresh"]
    reused = index.lookup(pl.Series(["new1", "new2", "fresh"]))
    assert sorted(reused[:2].tolist()) == sorted(slots[:2].tolist())
    assert reused[2] == slots[2]
    assert index.last_seen[reused[:2]].tolist() == [NONE_TS, NONE_TS]  # a reused slot starts afresh


def test_evict__bounded_memory_under_churn() -> None:
    index = EntityIndex(capacity=16)
    for day in range(50):
        slots = index.lookup(pl.Series([f"d{day}-{n}" for n in range(10)]))
        index.last_seen[slots] = day
        index.evict(day - 2)  # keep about three days of entities
    assert len(index) == 30
    assert index.capacity == 64  # at most 40 alive at once (30 kept + 10 new), not 500 ever seen


def test_snapshot__restore_gives_same_slots() -> None:
    index = EntityIndex(capacity=2, hash_bits=3)
    keys = pl.Series([f"user-{n}" for n in range(40)])
    slots = index.lookup(keys)
    index.last_seen[slots] = np.arange(40)
    index.evict(5)
    data = save_arrays(index.snapshot())
    restored = EntityIndex.restore(load_arrays(data))
    assert len(restored) == len(index) == 35
    assert restored.lookup(keys[5:]).tolist() == slots[5:].tolist()
    assert restored.last_seen[slots[5:]].tolist() == list(range(5, 40))
    assert restored.lookup(pl.Series(["user-0"]))[0] in slots[:5].tolist()  # a freed slot


def test_load_arrays__refuses_pickles() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_arrays(buffer.getvalue())


def test_lookup__word_at_a_time_compare_tells_near_keys_apart() -> None:
    """Keys around the 8-byte word size that differ only in their last byte, all in one hash bucket."""
    index = EntityIndex(hash_bits=1)
    keys = [
        f"{prefix}{last}"
        for prefix in ("", "abcdef", "abcdefg", "abcdefgh", "abcdefghijklmno")
        for last in "xy"
    ]
    slots = index.lookup(pl.Series(keys))
    assert len(set(slots.tolist())) == len(keys)
    assert index.lookup(pl.Series(keys[::-1])).tolist() == slots[::-1].tolist()
    # A key at the very end of a short buffer (no spare bytes after it) is read byte by byte.
    assert index.lookup(pa.array(["ab"], pa.large_string())).tolist() == [index.lookup(pl.Series(["ab"]))[0]]


def test_evict__deletes_in_place_and_colliding_keys_stay_reachable() -> None:
    """Against a dictionary: evict random keys round after round; every live key keeps its slot."""
    rng = np.random.default_rng(7)
    index = EntityIndex(capacity=8, hash_bits=3)  # 8 hash values: long probe runs to shift back
    model: dict[str, int] = {}
    for day in range(30):
        keys = [f"k{n}" for n in rng.integers(0, 120, size=40)]
        slots = index.lookup(pl.Series(keys))
        for key, slot in zip(keys, slots.tolist(), strict=True):
            assert model.setdefault(key, slot) == slot, (day, key)
        index.last_seen[slots] = day
        cutoff = day - int(rng.integers(0, 3))
        freed = index.evict(cutoff)
        gone = [key for key, slot in model.items() if index.last_seen[slot] < cutoff]
        assert freed == len(gone)
        for key in gone:
            del model[key]
        assert len(index) == len(model)
        assert index.keys(list(model.values())) == list(model)
        assert index.lookup(pl.Series(list(model))).tolist() == list(model.values())


def test_evict__compacts_the_arena_of_dead_keys() -> None:
    index = EntityIndex(capacity=4)
    for day in range(200):
        slots = index.lookup(pl.Series([f"a-long-key-for-day-{day}-number-{n}" for n in range(5)]))
        index.last_seen[slots] = day
        index.evict(day)
    assert len(index) == 5
    assert index.nbytes() < 8_192  # keys of 5 live entities, not of the 1,000 seen
