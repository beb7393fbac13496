from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import polars as pl

from finsecure.event.schemas import Domain
from finsecure.graph.edges import RELATIONS, aggregate_edges, entity_type_of, merge_edges
from tests.graph.helpers import T0, at, frame


def _reference(
    domain: Domain, rows: list[dict[str, Any]]
) -> dict[tuple[str, ...], tuple[int, float, int, int]]:
    """The slow, obvious version: one event at a time."""
    out: dict[tuple[str, ...], list[Any]] = defaultdict(lambda: [0, 0.0, None, None])
    for row in rows:
        ts = int(row.get("ts", T0).timestamp() * 1_000_000)
        for rel in RELATIONS[domain]:
            src, dst = row.get(rel.src_column), row.get(rel.dst_column)
            if src is None or dst is None:
                continue
            st, dtp = entity_type_of(rel.src_column), entity_type_of(rel.dst_column)
            if st == dtp and src == dst:
                continue
            if rel.only_when and row.get(rel.only_when[0]) != rel.only_when[1]:
                continue
            amount = row.get(rel.amount_column) if rel.amount_column else None
            acc = out[(rel.relation, st, src, dtp, dst)]
            acc[0] += 1
            acc[1] += amount if amount is not None and math.isfinite(amount) else 0.0
            acc[2] = ts if acc[2] is None else min(acc[2], ts)
            acc[3] = ts if acc[3] is None else max(acc[3], ts)
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def _as_dict(edges: pl.DataFrame) -> dict[tuple[str, ...], tuple[int, float, int, int]]:
    return {
        (r["relation"], r["src_type"], r["src_key"], r["dst_type"], r["dst_key"]): (
            r["count"], r["amount"], r["first_seen"], r["last_seen"],
        )
        for r in edges.iter_rows(named=True)
    }  # fmt: skip


def _approx_equal(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and math.isclose(a[k][1], b[k][1]) and a[k][2:] == b[k][2:] for k in a
    )


def test_aggregate_edges__payment_matches_slow_reference() -> None:
    rnd = random.Random(7)
    rows = [
        {
            "ts": at(rnd.randint(0, 600)),
            "card_id": rnd.choice(["c1", "c2", "c3", None]),
            "terminal_id": rnd.choice(["t1", "t2", None]),
            "merchant_id": rnd.choice(["m1", "m2"]),
            "account_id": rnd.choice(["a1", "a2", None]),
            "user_id": rnd.choice(["u1", "u2"]),
            "payee_id": rnd.choice(["p1", None, None]),
            "device_id": rnd.choice(["d1", None]),
            "src_ip": rnd.choice(["10.0.0.1", None]),
            "amount": rnd.choice([1.5, 20.0, None, float("nan")]),
        }
        for _ in range(400)
    ]
    got = _as_dict(aggregate_edges(Domain.payment, frame(rows)))
    assert got
    assert _approx_equal(got, _reference(Domain.payment, rows))


def test_aggregate_edges__auth_payee_only_on_payee_add_and_ips_are_one_type() -> None:
    rows = [
        {"user_id": "u1", "account_id": "a1", "src_ip": "1.2.3.4", "action": "login", "payee_id": "p9"},
        {"user_id": "u1", "account_id": "a1", "src_ip": "1.2.3.4", "action": "payee_add", "payee_id": "p1"},
    ]
    got = _as_dict(aggregate_edges(Domain.auth, frame(rows)))
    assert _approx_equal(got, _reference(Domain.auth, rows))
    assert ("added_payee", "account_id", "a1", "payee_id", "p1") in got
    assert not any(k[4] == "p9" for k in got)
    assert got["used_ip", "user_id", "u1", "ip", "1.2.3.4"][0] == 2


def test_aggregate_edges__network_skips_self_links_and_missing_columns() -> None:
    rows = [{"src_ip": "10.0.0.1", "dst_ip": "10.0.0.1"}, {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2"}]
    got = _as_dict(aggregate_edges("network", frame(rows)))
    assert list(got) == [("connected_to", "ip", "10.0.0.1", "ip", "10.0.0.2")]
    assert aggregate_edges("cloud", frame([{"user_id": "u"}])).height == 0


def test_merge_edges__is_the_same_as_aggregating_everything_at_once() -> None:
    rnd = random.Random(3)
    rows = [
        {"ts": at(rnd.randint(0, 99)), "card_id": f"c{rnd.randint(0, 5)}", "terminal_id": "t1", "amount": 1.0}
        for _ in range(60)
    ]
    whole = _as_dict(aggregate_edges("payment", frame(rows)))
    halves = merge_edges(
        aggregate_edges("payment", frame(rows[:30])), aggregate_edges("payment", frame(rows[30:]))
    )
    assert _approx_equal(_as_dict(halves), whole)
