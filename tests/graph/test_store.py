from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from finsecure.entity.models import Edge, Entity
from finsecure.graph.store import GraphStore
from tests.graph.helpers import at, frame


def _factory(db_session: Session) -> Callable[[], Session]:
    """Sessions on the test's connection, whose commits are savepoints rolled back after the test."""
    return lambda: Session(bind=db_session.connection(), join_transaction_mode="create_savepoint")


def test_update__accumulates_counts_and_times_across_batches() -> None:
    store = GraphStore()
    store.update("payment", frame([{"ts": at(0), "card_id": "c1", "terminal_id": "t1", "amount": 5.0}]))
    store.update("payment", frame([{"ts": at(9), "card_id": "c1", "terminal_id": "t1", "amount": 2.0}]))
    store.update("payment", frame([{"ts": at(3), "card_id": "c2", "terminal_id": "t1", "amount": 1.0}]))
    snap = store.snapshot(max_age_s=0)
    assert (snap.node_count, snap.edge_count) == (3, 2)
    edge = next(e for e in range(snap.edge_count) if snap.keys[int(snap.src[e])] == "card_id:c1")
    record = snap.edge_record(edge)
    assert (record["count"], record["amount"], record["relation"]) == (2, 7.0, "used_at")
    assert record["first_seen"] == at(0).isoformat()
    assert record["last_seen"] == at(9).isoformat()
    assert store.events_seen == 3


def test_snapshot__is_reused_until_the_graph_changes_and_is_old_enough() -> None:
    store = GraphStore(rebuild_interval_s=3600)
    store.update("auth", frame([{"user_id": "u1", "device_id": "d1"}]))
    first = store.snapshot()
    assert store.snapshot() is first
    store.update("auth", frame([{"user_id": "u2", "device_id": "d1"}]))
    assert store.snapshot() is first  # batched: not rebuilt on every update
    fresh = store.snapshot(max_age_s=0)
    assert fresh is not first
    assert fresh.node_count == 3
    assert first.node_count == 2


def test_evict__drops_stale_edges_and_orphan_nodes_only() -> None:
    store = GraphStore(ttl_s=3600)
    store.update("auth", frame([{"ts": at(0), "user_id": "old", "device_id": "d1"}]))
    store.update("auth", frame([{"ts": at(70), "user_id": "kept", "device_id": "d1"}]))
    store.update("auth", frame([{"ts": at(120), "user_id": "new", "device_id": "d2"}]))
    assert store.evict() == 1  # 120 min: "old" (0 min) is past the hour, "kept" (70 min) is not
    snap = store.snapshot(max_age_s=0)
    assert sorted(snap.keys) == ["device_id:d1", "device_id:d2", "user_id:kept", "user_id:new"]
    assert snap.node_id("user_id:old") is None
    assert [snap.keys[n] for n in snap.neighbors(snap.node_id("device_id:d1") or 0)] == ["user_id:kept"]
    # a link seen again after eviction starts afresh
    store.update("auth", frame([{"ts": at(121), "user_id": "old", "device_id": "d1"}]))
    assert store.edge_count == 3
    assert store.evict() == 0


def test_set_flags__marks_known_nodes_and_ignores_unknown() -> None:
    store = GraphStore()
    store.update("auth", frame([{"user_id": "u1", "device_id": "d1"}]))
    assert store.set_flags(["user_id:u1", "user_id:nobody"], blocked=True, bad=True) == 1
    snap = store.snapshot(max_age_s=0)
    assert snap.blocked.tolist() == [snap.keys[i] == "user_id:u1" for i in range(snap.node_count)]


@pytest.mark.usefixtures("db_engine")
def test_flush_to_db__upserts_deltas_on_both_backends(db_session: Session) -> None:
    factory = _factory(db_session)
    store = GraphStore()
    store.update("payment", frame([{"ts": at(5), "card_id": "c1", "terminal_id": "t1", "amount": 5.0}]))
    assert store.flush_to_db(factory) == 1
    assert store.flush_to_db(factory) == 0  # nothing changed
    store.update("payment", frame([{"ts": at(1), "card_id": "c1", "terminal_id": "t1", "amount": 2.0}]))
    store.update("payment", frame([{"ts": at(9), "card_id": "c1", "terminal_id": "t1", "amount": 1.0}]))
    assert store.flush_to_db(factory) == 1
    edge = db_session.execute(select(Edge)).scalar_one()
    assert (edge.count, edge.amount_sum, edge.relation) == (3, 8.0, "used_at")
    assert edge.first_seen == at(1)
    assert edge.last_seen == at(9)
    entities = {(e.entity_type, e.key): e for e in db_session.execute(select(Entity)).scalars()}
    assert set(entities) == {("card_id", "c1"), ("terminal_id", "t1")}
    assert entities["card_id", "c1"].last_seen == at(9)

    # a second process (or a restart) adds to the same rows instead of overwriting them
    other = GraphStore()
    other.update("payment", frame([{"ts": at(20), "card_id": "c1", "terminal_id": "t1", "amount": 4.0}]))
    other.flush_to_db(factory)
    db_session.expire_all()
    edge = db_session.execute(select(Edge)).scalar_one()
    assert (edge.count, edge.amount_sum, edge.last_seen) == (4, 12.0, at(20))


@pytest.mark.usefixtures("db_engine")
def test_load_from_db__restores_edges_and_blocked_marks(db_session: Session) -> None:
    factory = _factory(db_session)
    store = GraphStore(ttl_s=24 * 3600)
    store.update("auth", frame([{"ts": at(0), "user_id": "u1", "device_id": "d1", "src_ip": "10.1.1.1"}]))
    store.update("auth", frame([{"ts": at(0) - dt.timedelta(days=3), "user_id": "u9", "device_id": "d9"}]))
    store.flush_to_db(factory)
    db_session.execute(update(Entity).where(Entity.key == "d1").values(blocked=True))

    restored = GraphStore(ttl_s=24 * 3600)
    assert restored.load_from_db(db_session) == 2  # the 3-day-old link is past the TTL
    snap = restored.snapshot(max_age_s=0)
    assert sorted(snap.keys) == ["device_id:d1", "ip:10.1.1.1", "user_id:u1"]
    d1 = snap.node_id("device_id:d1")
    assert d1 is not None
    assert snap.blocked[d1]
    assert snap.bad[d1]
    assert restored.flush_to_db(factory) == 0  # loaded edges are already stored
    restored.update("auth", frame([{"ts": at(1), "user_id": "u1", "device_id": "d1"}]))
    restored.flush_to_db(factory)
    total = db_session.scalar(select(func.sum(Edge.count)))
    assert total == 4


def _edge_table(store: GraphStore) -> dict[tuple[str, str, str], tuple[int, float, int, int]]:
    snap = store.snapshot(max_age_s=0)
    table = {}
    for e in range(snap.edge_count):
        key = (snap.keys[int(snap.src[e])], snap.relation_of(e), snap.keys[int(snap.dst[e])])
        sums = (int(snap.count[e]), round(float(snap.amount[e]), 6))
        table[key] = (*sums, int(snap.first_seen[e]), int(snap.last_seen[e]))
    return table


def test_update__matches_merging_aggregated_edges_across_domains_and_batches() -> None:
    import random

    from finsecure.graph.edges import aggregate_edges

    rnd = random.Random(11)

    def rows(n: int) -> list[dict[str, object]]:
        return [
            {
                "ts": at(rnd.randint(0, 900)),
                "card_id": rnd.choice(["c1", "c2", "c3", None]),
                "terminal_id": rnd.choice(["t1", "t2", None]),
                "merchant_id": rnd.choice(["m1", "c1"]),  # the same key as a card: another node
                "user_id": rnd.choice(["u1", "u2", None]),
                "account_id": rnd.choice(["a1", None]),
                "payee_id": rnd.choice(["p1", "p2"]),
                "device_id": rnd.choice(["d1", None]),
                "src_ip": rnd.choice(["10.0.0.1", "10.0.0.2", None]),
                "dst_ip": rnd.choice(["10.0.0.1", "10.0.0.3"]),
                "action": rnd.choice(["login", "payee_add", None]),
                "amount": rnd.choice([1.5, 20.0, None, float("nan")]),
            }
            for _ in range(n)
        ]

    fast, slow = GraphStore(), GraphStore()
    for domain in ("payment", "auth", "network", "payment", "cloud", "auth"):
        batch = frame(rows(150))
        assert fast.update(domain, batch) == slow.add_edges(aggregate_edges(domain, batch))
    assert fast.node_count == slow.node_count
    assert _edge_table(fast) == _edge_table(slow)
    assert len(_edge_table(fast)) > 20


def test_node_ids__a_hash_collision_keeps_two_nodes_apart() -> None:
    import numpy as np
    import polars as pl

    store = GraphStore()
    same = np.asarray([42], np.uint64)
    card = np.asarray([2], np.int8)
    a = store._node_ids(same, pl.Series(["a"]), card)
    b = store._node_ids(same.copy(), pl.Series(["b"]), card)
    assert a.tolist() == [0]
    assert b.tolist() == [1]
    assert store._node_ids(same.copy(), pl.Series(["b"]), card).tolist() == [1]
    assert store._node_ids(same.copy(), pl.Series(["a"]), card).tolist() == [0]
    assert store._keys == ["card_id:a", "card_id:b"]


def test_lookup_ids__finds_known_keys_of_the_type_only() -> None:
    import polars as pl

    store = GraphStore()
    store.update(
        "payment", frame([{"card_id": "x", "terminal_id": "t1"}, {"card_id": "c2", "merchant_id": "x"}])
    )
    ids, epoch = store.lookup_ids(pl.Series(["x", "c2", "t1", None, "zz"]), "card_id")
    assert [store._keys[i] if i >= 0 else None for i in ids.tolist()] == [
        "card_id:x", "card_id:c2", None, None, None,
    ]  # fmt: skip
    assert epoch == store.epoch
    merchant, _ = store.lookup_ids(pl.Series(["x"]), "merchant_id")
    assert store._keys[int(merchant[0])] == "merchant_id:x"


def test_evict__keeps_ids_consistent_for_later_updates_and_lookups() -> None:
    import polars as pl

    store = GraphStore(ttl_s=3600)
    store.update("payment", frame([{"ts": at(0), "card_id": "old", "terminal_id": "t0"}]))
    store.update("payment", frame([{"ts": at(100), "card_id": "c1", "terminal_id": "t1"}]))
    assert store.evict() == 1
    store.update("payment", frame([{"ts": at(101), "card_id": "c1", "terminal_id": "t2"}]))
    ids, _ = store.lookup_ids(pl.Series(["c1", "old"]), "card_id")
    assert store._keys[int(ids[0])] == "card_id:c1"
    assert ids[1] == -1
    assert sorted(store.snapshot(max_age_s=0).keys) == ["card_id:c1", "terminal_id:t1", "terminal_id:t2"]
