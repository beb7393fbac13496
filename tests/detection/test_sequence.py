"""Sequence rules: exact semantics against a brute force, across batches, out of order, bounded state."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsecure.detection.engine import HITS_SCHEMA, DetectionStep, RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import Rule, RuleError
from finsecure.detection.samples import run_samples
from finsecure.detection.sequence import SequenceEvaluator, SequenceSpec
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SPEC = SequenceSpec.from_dict(
    {
        "window": "10m",
        "steps": [
            {"domain": "auth", "condition": {"field": "action", "equals": "login"}},
            {"domain": "auth", "condition": {"field": "action", "equals": "payee_add"}},
            {"domain": "payment", "by": "account_id", "condition": {"field": "amount", "gte": 100}},
        ],
    },
    default_by="user_id",
)
RULE: dict[str, Any] = {
    "id": "5f3c2b1a-0d9e-4f8a-b7c6-222222222222", "title": "Login, payee, transfer", "description": "d",
    "severity": "high", "domain": "payment", "kind": "sequence", "typology": "account_takeover",
    "triage": "t", "status": "test", "entity": "user_id",
    "explain": "{amount:.0f} paid {elapsed_min:.0f} min after a sign-in at {first_time}",
    "sequence": {"window": "10m", "steps": [
        {"domain": "auth", "condition": {"field": "action", "equals": "login"}},
        {"domain": "payment", "condition": {"field": "amount", "gte": 100}},
    ]},
}  # fmt: skip


def _auth(rows: list[tuple[str, str, float, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "user_id": [r[1] for r in rows],
            "ts": [T0 + dt.timedelta(seconds=r[2]) for r in rows],
            "action": [r[3] for r in rows],
        },
        schema={"event_id": pl.String, "user_id": pl.String, "ts": pl.Datetime("us", "UTC"),
                "action": pl.String},
    )  # fmt: skip


def _pay(rows: list[tuple[str, str, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "account_id": [r[1] for r in rows],
            "ts": [T0 + dt.timedelta(seconds=r[2]) for r in rows],
            "amount": [r[3] for r in rows],
        },
        schema={"event_id": pl.String, "account_id": pl.String, "ts": pl.Datetime("us", "UTC"),
                "amount": pl.Float64},
    )  # fmt: skip


def _brute_force(events: list[tuple[str, str, str, float, Any]], window: float) -> set[str]:
    """Last-step events that end a chain login < payee_add < amount >= 100, same key, within window."""
    login = [e for e in events if e[0] == "auth" and e[4] == "login"]
    payee = [e for e in events if e[0] == "auth" and e[4] == "payee_add"]
    pay = [e for e in events if e[0] == "payment" and e[4] >= 100]
    out = set()
    for a, b, c in itertools.product(login, payee, pay):
        if a[2] == b[2] == c[2] and a[3] < b[3] < c[3] and c[3] - a[3] <= window:
            out.add(c[1])
    return out


def _feed(evaluator: SequenceEvaluator, events: list[tuple[str, str, str, float, Any]]) -> set[str]:
    auth = [(e[1], e[2], e[3], e[4]) for e in events if e[0] == "auth"]
    pay = [(e[1], e[2], e[3], e[4]) for e in events if e[0] == "payment"]
    fired: list[str] = []
    if auth:
        fired += evaluator.update(Domain.auth, _auth(auth)).get_column("event_id").to_list()
    if pay:
        fired += evaluator.update(Domain.payment, _pay(pay)).get_column("event_id").to_list()
    assert len(fired) == len(set(fired)), "an event fired twice"
    return set(fired)


EVENT = st.one_of(
    st.tuples(st.just("auth"), st.sampled_from(["k1", "k2"]), st.integers(0, 1_500),
              st.sampled_from(["login", "payee_add", "logout"])),
    st.tuples(st.just("payment"), st.sampled_from(["k1", "k2"]), st.integers(0, 1_500),
              st.sampled_from([50.0, 150.0])),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(EVENT, max_size=24), st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_sequence_evaluator__matches_brute_force_in_any_batching_and_order(
    raw: list[tuple[str, str, int, Any]], cuts: list[int]
) -> None:
    events = [(d, f"e{i}", k, float(t), v) for i, (d, k, t, v) in enumerate(raw)]
    expected = _brute_force(events, 600.0)
    evaluator = SequenceEvaluator(SPEC, late_s=10_000, once_per_chain=False)
    fired: set[str] = set()
    start = 0
    for size in itertools.cycle(cuts):  # arrival order as generated: times are not sorted
        if start >= len(events):
            break
        fired |= _feed(evaluator, events[start : start + size])
        start += size
    assert fired == expected


def test_sequence_evaluator__late_first_step_completes_an_earlier_last_step() -> None:
    evaluator = SequenceEvaluator(SPEC)
    assert evaluator.update(Domain.payment, _pay([("p1", "k", 300, 500.0)])).height == 0
    assert evaluator.update(Domain.auth, _auth([("a2", "k", 100, "payee_add")])).height == 0
    done = evaluator.update(Domain.auth, _auth([("a1", "k", 10, "login")]))
    assert done.select("event_id", "elapsed_s").rows() == [("p1", 290.0)]
    assert evaluator.update(Domain.auth, _auth([("a3", "k", 20, "login")])).height == 0  # fires once


def test_sequence_evaluator__window_and_strict_order() -> None:
    evaluator = SequenceEvaluator(SPEC, once_per_chain=False)
    evaluator.update(Domain.auth, _auth([("a1", "k", 0, "login"), ("a2", "k", 0, "payee_add")]))
    assert evaluator.update(Domain.payment, _pay([("p1", "k", 10, 500.0)])).height == 0  # same time
    late = evaluator.update(Domain.auth, _auth([("a3", "k", 5, "payee_add")]))
    assert late.get_column("event_id").to_list() == ["p1"]
    assert evaluator.update(Domain.payment, _pay([("p2", "k", 601, 500.0)])).height == 0  # too late
    assert evaluator.update(Domain.payment, _pay([("p3", "k", 600, 500.0)])).height == 1


def test_sequence_evaluator__count_step_needs_a_burst_after_the_previous_step() -> None:
    spec = SequenceSpec.from_dict(
        {
            "window": "1h",
            "steps": [
                {"domain": "auth", "condition": {"field": "action", "equals": "login"}, "count": 3},
                {"domain": "auth", "condition": {"field": "action", "equals": "payee_add"}},
            ],
        },
        default_by="user_id",
    )
    evaluator = SequenceEvaluator(spec)
    logins = [(f"l{i}", "k", float(i), "login") for i in range(2)]
    assert evaluator.update(Domain.auth, _auth([*logins, ("p1", "k", 10, "payee_add")])).height == 0
    fired = evaluator.update(Domain.auth, _auth([("l3", "k", 11, "login"), ("p2", "k", 12, "payee_add")]))
    assert fired.get_column("event_id").to_list() == ["p2"]
    assert fired.get_column("elapsed_s").to_list() == [12.0]


def test_sequence_evaluator__state_is_bounded_by_time_and_rows() -> None:
    evaluator = SequenceEvaluator(SPEC, late_s=0, max_rows=50)
    for hour in range(5):
        rows = [(f"l{hour}-{i}", f"k{i}", hour * 3600.0 + i, "login") for i in range(200)]
        evaluator.update(Domain.auth, _auth(rows))
        assert evaluator.state_rows() <= 50
    evaluator = SequenceEvaluator(SPEC, late_s=0)
    evaluator.update(Domain.auth, _auth([("a", "k", 0, "login")]))
    evaluator.update(Domain.auth, _auth([("b", "k", 7200, "login")]))
    assert evaluator.state_rows() == 2  # no payment seen yet: the payments may be a batch behind
    evaluator.update(Domain.payment, _pay([("p", "k", 7300, 5.0), ("q", "k", 7301, 500.0)]))
    assert evaluator.state_rows() == 2  # the sign-in at 0 is gone, the one at 7200 and payment q stay


def test_rule_set__sequence_hits_snapshot_and_explanation() -> None:
    rule = Rule.from_dict(RULE)
    hits: list[pl.DataFrame] = []
    step = DetectionStep(RuleSet([rule]), hits.append)
    step.process(Batch(Domain.auth, sample_frame(Domain.auth, [{"user_id": "u1", "action": "login"}]), "t"))
    restored = DetectionStep(RuleSet([rule]), hits.append)
    restored.restore(step.snapshot())
    payment = sample_frame(Domain.payment, [{"user_id": "u1", "amount": 250.0, "ts": 120, "event_id": "p"}])
    restored.process(Batch(Domain.payment, payment, "t"))
    assert len(hits) == 1
    assert hits[0].schema == HITS_SCHEMA
    row = hits[0].row(0, named=True)
    assert (row["event_id"], row["entity_id"], row["domain"]) == ("p", "u1", "payment")
    assert row["explanation"] == "250 paid 2 min after a sign-in at 12:00 UTC"


def test_run_samples__sequence_rule_checks_positive_and_negative() -> None:
    samples = {
        "positive": [{"domain": "auth", "user_id": "u", "action": "login", "ts": 0},
                     {"user_id": "u", "amount": 500.0, "ts": 60}],
        "negative": [{"domain": "auth", "user_id": "u", "action": "login", "ts": 0},
                     {"user_id": "u", "amount": 500.0, "ts": 900}],
    }  # fmt: skip
    assert run_samples(Rule.from_dict({**RULE, "samples": samples})) == []
    wrong = {"positive": samples["negative"], "negative": samples["positive"]}
    problems = run_samples(Rule.from_dict({**RULE, "samples": wrong}))
    assert problems[0] == "samples.positive: the sequence never completed"
    assert problems[1].startswith("samples.negative: fired on")


@pytest.mark.parametrize(
    ("change", "key_path"),
    [
        ({"sequence": {"window": "1h", "steps": [{"domain": "payment", "condition": {"field": "amount",
                                                                                    "gt": 1}}]}},
         "sequence.steps"),
        ({"sequence": {"window": "1h", "steps": [
            {"domain": "auth", "condition": {"field": "amount", "gt": 1}},
            {"domain": "payment", "condition": {"field": "amount", "gt": 1}}]}}, "sequence.steps[0]"),
        ({"sequence": {"window": "1h", "steps": [
            {"domain": "payment", "condition": {"field": "amount", "gt": 1}},
            {"domain": "auth", "condition": {"field": "action", "equals": "login"}}]}}, "sequence.steps"),
        ({"sequence": {"window": "1h", "steps": [
            {"domain": "bank", "condition": {"field": "amount", "gt": 1}},
            {"domain": "payment", "condition": {"field": "amount", "gt": 1}}]}}, "sequence.steps[0].domain"),
        ({"sequence": {"window": "1h", "steps": [
            {"domain": "auth", "condition": {"field": "action", "equals": "login"}, "count": 0},
            {"domain": "payment", "condition": {"field": "amount", "gt": 1}}]}}, "sequence.steps[0].count"),
        ({"condition": {"field": "amount", "gt": 1}}, "condition"),
        ({"kind": "match", "condition": {"field": "amount", "gt": 1}}, "sequence"),
    ],
)  # fmt: skip
def test_rule_from_dict__bad_sequence_names_the_key(change: dict[str, Any], key_path: str) -> None:
    with pytest.raises(RuleError) as caught:
        Rule.from_dict({**RULE, **change})
    assert caught.value.key_path == key_path


def test_sequence_evaluator__reports_each_chain_once() -> None:
    evaluator = SequenceEvaluator(SPEC)
    evaluator.update(Domain.auth, _auth([("a1", "k", 0, "login"), ("a2", "k", 10, "payee_add")]))
    first = evaluator.update(Domain.payment, _pay([("p1", "k", 20, 500.0), ("p2", "k", 30, 500.0)]))
    assert first.get_column("event_id").to_list() == ["p1"]
    assert evaluator.update(Domain.payment, _pay([("p3", "k", 40, 500.0)])).height == 0  # same chain
    evaluator.update(Domain.auth, _auth([("a3", "k", 50, "login"), ("a4", "k", 60, "payee_add")]))
    assert evaluator.update(Domain.payment, _pay([("p4", "k", 70, 500.0)])).get_column(
        "event_id"
    ).to_list() == ["p4"]


def test_sequence_evaluator__a_slower_domain_keeps_the_steps_it_needs() -> None:
    evaluator = SequenceEvaluator(SPEC, late_s=0)
    day = [("a1", "k", 0.0, "login"), ("a2", "k", 10.0, "payee_add"), ("a3", "x", 86_000.0, "login")]
    evaluator.update(Domain.auth, _auth(day))  # the whole day of sign-ins arrives first
    assert evaluator.update(Domain.payment, _pay([("p1", "k", 20, 500.0)])).height == 1


def test_sequence_evaluator__snapshot_keeps_steps_and_reported_chains() -> None:
    evaluator = SequenceEvaluator(SPEC)
    evaluator.update(Domain.auth, _auth([("a1", "k", 0, "login"), ("a2", "k", 10, "payee_add")]))
    assert evaluator.update(Domain.payment, _pay([("p1", "k", 20, 500.0)])).height == 1
    restored = SequenceEvaluator(SPEC)
    restored.restore(evaluator.snapshot())
    assert restored.state_rows() == evaluator.state_rows()
    assert restored.update(Domain.payment, _pay([("p2", "k", 30, 500.0)])).height == 0  # same chain
    restored.update(Domain.auth, _auth([("a3", "k", 40, "login"), ("a4", "k", 50, "payee_add")]))
    assert restored.update(Domain.payment, _pay([("p3", "k", 60, 500.0)])).height == 1


BURST_SPEC = SequenceSpec.from_dict(
    {
        "window": "10m",
        "steps": [
            {"domain": "auth", "condition": {"field": "action", "equals": "login"}, "count": 2},
            {"domain": "auth", "condition": {"field": "action", "equals": "payee_add"}, "count": 2},
            {"domain": "payment", "by": "account_id", "condition": {"field": "amount", "gte": 100}},
        ],
    },
    default_by="user_id",
)


def _brute_force_bursts(events: list[tuple[str, str, str, float, Any]], window: float) -> set[str]:
    """Last-step events that end a chain: two logins, then two payee additions (each strictly after both
    logins), then a payment of 100 or more strictly after both, all one key, the first login within
    ``window`` of the payment."""
    login = [e for e in events if e[0] == "auth" and e[4] == "login"]
    payee = [e for e in events if e[0] == "auth" and e[4] == "payee_add"]
    pay = [e for e in events if e[0] == "payment" and e[4] >= 100]
    out = set()
    for (a1, a2), (b1, b2), c in itertools.product(
        itertools.combinations(login, 2), itertools.combinations(payee, 2), pay
    ):
        keys = {a1[2], a2[2], b1[2], b2[2], c[2]}
        ordered = max(a1[3], a2[3]) < min(b1[3], b2[3]) and max(b1[3], b2[3]) < c[3]
        if len(keys) == 1 and ordered and c[3] - min(a1[3], a2[3]) <= window:
            out.add(c[1])
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(EVENT, max_size=20), st.lists(st.integers(1, 6), min_size=1, max_size=8))
def test_sequence_evaluator__burst_steps_match_brute_force(
    raw: list[tuple[str, str, int, Any]], cuts: list[int]
) -> None:
    events = [(d, f"e{i}", k, float(t // 10), v) for i, (d, k, t, v) in enumerate(raw)]  # many equal times
    expected = _brute_force_bursts(events, 60.0)
    spec = SequenceSpec(60, BURST_SPEC.steps)
    evaluator = SequenceEvaluator(spec, late_s=10_000, once_per_chain=False)
    fired: set[str] = set()
    start = 0
    for size in itertools.cycle(cuts):
        if start >= len(events):
            break
        fired |= _feed(evaluator, events[start : start + size])
        start += size
    assert fired == expected
