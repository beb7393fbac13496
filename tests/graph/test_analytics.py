from __future__ import annotations

from typing import Any

import numpy as np

from finsecure.graph.analytics import (
    analyse,
    communities,
    current_analysis,
    describe_node,
    explaining_path,
    local_communities,
    neighbourhood,
    node_signals,
    path_sentence,
    propagate_risk,
    ring_members,
)
from finsecure.graph.store import GraphSnapshot, GraphStore
from tests.graph.helpers import frame


def _store(auth: list[dict[str, Any]] = (), payment: list[dict[str, Any]] = ()) -> GraphStore:  # type: ignore[assignment]
    store = GraphStore()
    if auth:
        store.update("auth", frame(list(auth)))
    if payment:
        store.update("payment", frame(list(payment)))
    return store


def _id(snap: GraphSnapshot, key: str) -> int:
    node = snap.node_id(key)
    assert node is not None, key
    return node


def _two_groups_and_a_ring() -> GraphStore:
    """Thirty ordinary households (one device each) and a ring of six customers on three shared devices."""
    auth = [{"user_id": f"h{h}u{i}", "device_id": f"home{h}"} for h in range(30) for i in range(2)]
    auth += [{"user_id": f"h{h}u0", "device_id": f"phone{h}"} for h in range(30)]
    auth += [{"user_id": f"r{i}", "device_id": f"ring{(i + k) % 3}"} for i in range(6) for k in range(2)]
    auth += [{"user_id": f"r{i}", "src_ip": "203.0.113.9"} for i in range(6)]
    return _store(auth=auth)


def test_communities__leiden_finds_a_planted_ring() -> None:
    snap = _two_groups_and_a_ring().snapshot()
    membership = communities(snap)
    ring = {int(membership[_id(snap, f"user_id:r{i}")]) for i in range(6)}
    assert len(ring) == 1
    others = {int(membership[_id(snap, f"user_id:h{h}u1")]) for h in range(30)}
    assert not ring & others
    # warm start from the same partition keeps it
    again = communities(snap, previous=membership)
    assert len({int(again[_id(snap, f"user_id:r{i}")]) for i in range(6)}) == 1


def test_local_communities__splits_a_neighbourhood() -> None:
    snap = _two_groups_and_a_ring().snapshot()
    nodes = [
        _id(snap, k)
        for k in ("user_id:r0", "device_id:ring0", "user_id:r2", "user_id:h0u0", "device_id:home0")
    ]
    local = local_communities(snap, nodes)
    assert set(local) == set(nodes)
    assert local[nodes[0]] == local[nodes[1]] == local[nodes[2]]
    assert local[nodes[3]] == local[nodes[4]] != local[nodes[0]]


def test_score_rings__shared_devices_make_the_ring_the_riskiest_community() -> None:
    analysis = analyse(_two_groups_and_a_ring().snapshot())
    snap = analysis.snapshot
    ring_id = analysis.community_of(_id(snap, "user_id:r0"))
    assert ring_id is not None
    ring = analysis.rings[ring_id]
    assert ring.risk == max(r.risk for r in analysis.rings.values())
    assert ring.risk > 0.5
    assert "device ring0 is used by 4 different customers" in ring.reasons
    assert "address 203.0.113.9 is used by 6 different customers" in ring.reasons
    home = analysis.community_of(_id(snap, "user_id:h0u1"))
    assert home not in analysis.rings or analysis.rings[home].risk < ring.risk / 2


def test_score_rings__money_funnel_many_to_one_to_many() -> None:
    auth = [{"user_id": "mule", "account_id": "acc-mule", "device_id": "dm"}]
    payment = [{"account_id": f"victim{i}", "payee_id": "payee-mule", "amount": 500.0} for i in range(5)]
    payment += [{"account_id": "acc-mule", "payee_id": f"out{i}", "amount": 450.0} for i in range(4)]
    # the collecting payee and the paying account are linked: the mule's own transfer to its payee
    payment += [{"account_id": "acc-mule", "payee_id": "payee-mule", "amount": 1.0}]
    analysis = analyse(_store(auth=auth, payment=payment).snapshot())
    snap = analysis.snapshot
    # Leiden may cut the two stars apart; the funnel is reported on both sides
    for key in ("account_id:acc-mule", "payee_id:payee-mule"):
        ring = analysis.rings[analysis.community_of(_id(snap, key))]  # type: ignore[index]
        assert ring.reasons[0] == (
            "money funnel: 6 accounts pay payee payee-mule, and account acc-mule close to it pays 5 payees"
        )
        assert ring.risk > 0.6
    # without the link between them there is no funnel, only two fans
    payment.pop()
    apart = analyse(_store(auth=auth, payment=payment).snapshot())
    assert not any(r.startswith("money funnel") for ring in apart.rings.values() for r in ring.reasons)


def test_node_signals__compromised_terminal_needs_known_bad_cards() -> None:
    payment = [{"card_id": f"c{i}", "terminal_id": "skimmer", "amount": 40.0} for i in range(10)]
    payment += [{"card_id": f"c{i}", "terminal_id": "busy", "amount": 40.0} for i in range(100)]
    store = _store(payment=payment)
    before = node_signals(store.snapshot())
    assert before.strength.max() == 0.0
    store.set_flags([f"card_id:c{i}" for i in range(6)], bad=True)
    snap = store.snapshot(max_age_s=0)
    signals = node_signals(snap)
    skimmer, busy = _id(snap, "terminal_id:skimmer"), _id(snap, "terminal_id:busy")
    assert (signals.cards[skimmer], signals.bad_cards[skimmer]) == (10, 6)
    assert signals.strength[skimmer] > 0.55 > 0.1 > signals.strength[busy]
    assert signals.reasons(snap, skimmer)[0][1] == (
        "6 of the 10 cards used at terminal skimmer are known to be compromised or used for fraud"
    )


def test_propagate_risk__neighbours_of_a_bad_node_rank_above_far_nodes() -> None:
    # a chain bad - a - b - c - d, plus an unconnected pair
    auth = [{"user_id": "bad", "device_id": "a"}, {"user_id": "b", "device_id": "a"}]
    auth += [{"user_id": "b", "device_id": "c"}, {"user_id": "d", "device_id": "c"}]
    auth += [{"user_id": "x", "device_id": "y"}]
    store = _store(auth=auth)
    assert propagate_risk(store.snapshot()).max() == 0.0  # nothing known bad: no risk
    store.set_flags(["user_id:bad"], bad=True)
    snap = store.snapshot(max_age_s=0)
    risk = propagate_risk(snap)
    order = [
        float(risk[_id(snap, k)])
        for k in ("user_id:bad", "device_id:a", "user_id:b", "device_id:c", "user_id:d")
    ]
    assert order[0] == 1.0
    assert order == sorted(order, reverse=True)
    assert order[1] > order[4] > 0.0
    assert risk[_id(snap, "user_id:x")] == 0.0


def test_explaining_path__avoids_busy_hubs_and_reads_as_sentences() -> None:
    # two cards share a device (short, telling) and a huge shop (equally short, says nothing)
    payment = [{"user_id": "u1", "card_id": "c1", "account_id": "a1", "merchant_id": "bigshop"}]
    payment += [{"user_id": "u2", "card_id": "c2", "account_id": "a2", "merchant_id": "bigshop"}]
    payment += [{"card_id": f"other{i}", "merchant_id": "bigshop"} for i in range(50)]
    auth = [{"user_id": "u1", "device_id": "shared"}, {"user_id": "u2", "device_id": "shared"}]
    snap = _store(auth=auth, payment=payment).snapshot()
    nodes, edges = explaining_path(snap, _id(snap, "user_id:u1"), _id(snap, "user_id:u2"))
    assert [snap.keys[n] for n in nodes] == ["user_id:u1", "device_id:shared", "user_id:u2"]
    assert [path_sentence(snap, e) for e in edges] == [
        "customer u1 used device shared (1 time)",
        "customer u2 used device shared (1 time)",
    ]
    lonely = _store(auth=[{"user_id": "z", "device_id": "zz"}, *auth]).snapshot()
    assert explaining_path(lonely, _id(lonely, "user_id:z"), _id(lonely, "user_id:u1")) == ([], [])


def test_neighbourhood__caps_the_nodes_and_counts_the_rest() -> None:
    payment = [{"card_id": f"c{i}", "terminal_id": "t1"} for i in range(40)]
    payment += [{"card_id": f"c{i}", "merchant_id": f"m{i}"} for i in range(40)]
    snap = _store(payment=payment).snapshot()
    t1 = _id(snap, "terminal_id:t1")
    nodes, omitted = neighbourhood(snap, t1, hops=2, cap=300)
    assert (len(nodes), omitted) == (81, 0)
    risk = np.zeros(snap.node_count)
    risk[_id(snap, "card_id:c7")] = 0.9
    nodes, omitted = neighbourhood(snap, t1, hops=2, cap=10, risk=risk)
    assert len(nodes) == 10
    assert omitted == 80 - 9
    assert nodes[0] == t1
    assert nodes[1] == _id(snap, "card_id:c7")  # the riskiest neighbour is kept first


def test_current_analysis__is_cached_until_stale() -> None:
    store = _two_groups_and_a_ring()
    first = current_analysis(store, max_age_s=3600)
    assert current_analysis(store, max_age_s=3600) is first
    store.update("auth", frame([{"user_id": "new", "device_id": "home0"}]))
    assert current_analysis(store, max_age_s=3600) is first
    assert current_analysis(store, max_age_s=0) is not first
    assert describe_node("payee_id:p1") == "payee p1"


def test_ring_members__shared_devices_their_customers_and_accounts_not_households() -> None:
    store = _two_groups_and_a_ring()
    store.update(
        "auth",
        frame([{"user_id": "r0", "account_id": "acc-r0"}, {"user_id": "h0u0", "account_id": "acc-h0"}]),
    )
    snap = store.snapshot(max_age_s=0)
    members = {snap.keys[n] for n in ring_members(snap, node_signals(snap)).tolist()}
    assert members == {f"user_id:r{i}" for i in range(6)} | {f"device_id:ring{i}" for i in range(3)} | {
        "ip:203.0.113.9",
        "account_id:acc-r0",
    }


def test_ring_members__collecting_payees_and_spreading_accounts() -> None:
    payment = [{"account_id": f"v{i}", "payee_id": "collector", "amount": 900.0} for i in range(5)]
    payment += [{"account_id": "boss", "payee_id": f"mule{i}", "amount": 800.0} for i in range(3)]
    payment += [{"account_id": f"w{i}", "payee_id": "landlord", "amount": 700.0} for i in range(4)]
    snap = _store(payment=payment).snapshot()
    members = {snap.keys[n] for n in ring_members(snap, node_signals(snap)).tolist()}
    assert members == {
        "payee_id:collector",
        "account_id:boss",
        "payee_id:mule0",
        "payee_id:mule1",
        "payee_id:mule2",
    }
