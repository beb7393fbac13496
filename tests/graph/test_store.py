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
