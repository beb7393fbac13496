from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from finsecure.correlation.summary import AlertFacts, describe_incident
from finsecure.event.schemas import Domain
from finsecure.graph.risk import GRAPH_RISK_COLUMNS, GraphRisk, GraphRiskStep, describe, risk_history
from finsecure.graph.store import GraphStore
from finsecure.ml.features import describe_feature
from finsecure.pipeline.batch import Batch
from finsecure.platform import default_steps
from tests.graph.helpers import T0, at, frame


def _ring_store() -> GraphStore:
    """bad and c2 share terminal t1; c3 shops elsewhere (t9); u1 and u2 share device d1."""
    store = GraphStore()
    store.update(
        "payment",
        frame(
            [
                {"card_id": "bad", "terminal_id": "t1", "amount": 5.0},
                {"card_id": "c2", "terminal_id": "t1", "amount": 7.0},
                {"card_id": "c3", "terminal_id": "t9", "amount": 1.0},
            ]
        ),
    )
    store.update("auth", frame([{"user_id": "u1", "device_id": "d1"}, {"user_id": "u2", "device_id": "d1"}]))
    store.set_flags(["card_id:bad", "user_id:u1"], bad=True)
    return store


def test_columns__neighbours_of_known_bad_entities_get_risk_others_zero() -> None:
    risk = GraphRisk(_ring_store())
    assert risk.refresh() is True
    batch = frame(
        [
            {"card_id": "c2", "terminal_id": "t9"},
            {"card_id": "c3", "terminal_id": "t9"},
            {"card_id": "bad", "merchant_id": "m1"},
            {"card_id": "unseen"},
        ]
    )
    out = risk.columns("payment", batch)
    assert out.columns == list(GRAPH_RISK_COLUMNS[Domain.payment])
    card = out["graph__card_risk"].to_list()
    assert card[0] > 0.1
    assert card[1:] == [0.0, 1.0, 0.0]
    assert out["graph__place_risk"].to_list()[:2] == [0.0, 0.0]  # t9 is far from bad cards
    assert out["graph__risk"].to_list()[0] == pytest.approx(card[0])
    auth = risk.columns("auth", frame([{"user_id": "u2"}, {"user_id": "u3"}]))
    assert auth["graph__risk"].to_list()[0] > 0.1
    assert auth["graph__risk"].to_list()[1] == 0.0


def test_refresh__only_when_the_graph_or_its_marks_changed() -> None:
    store = _ring_store()
    risk = GraphRisk(store)
    assert risk.refresh() is True
    assert risk.refresh() is False
    store.set_flags(["card_id:c3"], bad=True)
    assert risk.refresh() is True
    assert risk.columns("payment", frame([{"card_id": "c3"}]))["graph__card_risk"].to_list() == [1.0]


def test_node_risk__is_zero_after_eviction_until_the_next_refresh() -> None:
    store = GraphStore(ttl_s=3600)
    store.update("payment", frame([{"ts": at(0), "card_id": "gone", "terminal_id": "t0"}]))
    store.update("payment", frame([{"ts": at(120), "card_id": "bad", "terminal_id": "t1"}]))
    store.update("payment", frame([{"ts": at(121), "card_id": "c2", "terminal_id": "t1"}]))
    store.set_flags(["card_id:bad"], bad=True)
    risk = GraphRisk(store)
    risk.refresh()
    assert store.evict() == 1  # node ids change: the old risk array no longer matches them
    keys = pl.Series(["c2"])
    assert risk.node_risk(keys, "card_id").tolist() == [0.0]
    risk.refresh()
    assert risk.node_risk(keys, "card_id")[0] > 0.1


def test_refresh_in_background__runs_off_the_calling_thread_and_respects_the_interval() -> None:
    store = _ring_store()
    risk = GraphRisk(store, refresh_interval_s=3600)
    risk.refresh_in_background()
    risk.wait(30)
    assert risk.refreshes == 1
    store.set_flags(["card_id:c3"], bad=True)
    risk.refresh_in_background()  # younger than the interval: not recomputed yet
    risk.wait(30)
    assert risk.refreshes == 1
    risk.refresh_interval_s = 0.0
    risk.refresh_in_background()
    risk.wait(30)
    assert risk.refreshes == 2


def test_entity_risk__highest_of_the_named_entities_and_addresses_by_either_column() -> None:
    store = _ring_store()
    store.update("auth", frame([{"user_id": "u1", "src_ip": "10.0.0.9"}]))
    store.set_flags(["user_id:u1"], bad=True)
    risk = GraphRisk(store)
    risk.refresh()
    assert risk.entity_risk(["card_id:bad", "card_id:c3"]) == 1.0
    assert 0.1 < risk.entity_risk(["src_ip:10.0.0.9"]) < 1.0
    assert risk.entity_risk(["card_id:nobody", "country:FR"]) == 0.0
    assert GraphRisk(store).entity_risk(["card_id:bad"]) == 0.0  # not computed yet


def test_graph_risk_step__adds_the_columns_before_scoring() -> None:
    risk = GraphRisk(_ring_store())
    risk.refresh()
    step = GraphRiskStep(risk)
    batch = Batch(Domain.payment, frame([{"card_id": "c2", "amount": 3.0}]), source="test", seq=4)
    out = step.process(batch)
    assert out.seq == 4
    assert out.frame["amount"].to_list() == [3.0]
    assert out.frame["graph__card_risk"][0] > 0.1
    steps = default_steps(graph_risk=step, rules=[])
    assert [s.step_id for s in steps].index("graph_risk") == 1  # right after the features


def test_risk_history__uses_only_earlier_days_and_earlier_confirmed_frauds() -> None:
    def day(d: int, hour: int = 12) -> dt.datetime:
        return T0.replace(day=d, hour=hour)

    rows = frame(
        [
            {"ts": day(2), "card_id": "c2", "terminal_id": "t1", "label": 0},
            {"ts": day(1), "card_id": "bad", "terminal_id": "t1", "label": 1},
            {"ts": day(1, 13), "card_id": "c2", "terminal_id": "t1", "label": 0},
            {"ts": day(2, 9), "card_id": "late", "terminal_id": "t1", "label": 1},
            {"ts": day(3), "card_id": "c3", "terminal_id": "t1", "label": 0},
        ]
    )
    out = risk_history(rows)
    card = out["graph__card_risk"].to_list()
    assert out["card_id"].to_list() == rows["card_id"].to_list()  # rows keep their order
    assert card[2] == 0.0  # day 1: the fraud of the same day is not known yet
    assert card[0] > 0.1  # day 2: "bad" (day 1) is known, c2 shares its terminal
    assert card[3] == 0.0  # "late" is unknown on day 2: its own label is never used
    assert card[4] == 0.0  # c3 has no link before day 3
    assert out["graph__place_risk"][4] > 0.1  # but its terminal does
    delayed = risk_history(rows, delay_s=2 * 86_400.0)
    assert delayed["graph__card_risk"].to_list() == [0.0] * 5  # nothing confirmed in time
    assert risk_history(rows.head(0)).columns[-3:] == list(GRAPH_RISK_COLUMNS[Domain.payment])


def test_describe__graph_columns_read_as_plain_words_for_the_models() -> None:
    assert describe("graph__risk") is not None
    assert describe("graph__other") is None
    assert describe_feature("payment", "graph__card_risk") == describe("graph__card_risk")


def test_describe_incident__graph_risk_raises_risk_and_says_why() -> None:
    alert = AlertFacts("Card used far from home", "high", "payment", "card_id", "c2", T0, T0)
    plain = describe_incident([alert])
    linked = describe_incident([alert], graph_risk=0.8)
    assert linked.risk == pytest.approx(plain.risk + 8.0)
    assert "confirmed as fraud" in linked.summary
    assert "confirmed as fraud" not in plain.summary
    assert np.isclose(describe_incident([alert], graph_risk=5.0).risk, plain.risk + 10.0)
