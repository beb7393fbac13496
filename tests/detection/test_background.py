from __future__ import annotations

import logging
import threading
from typing import Any

import polars as pl
import pytest

from finsecure.detection.background import BackgroundStep
from finsecure.detection.engine import DetectionStep, RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import Rule
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch, Step
from finsecure.pipeline.engine import Pipeline, canonical_polars_schema

RULE: dict[str, Any] = {
    "id": "0b9d3c9e-6b8f-4d67-9a5e-222222222222", "title": "t", "description": "d", "severity": "high",
    "domain": "auth", "kind": "threshold", "attack": ["T1110"], "triage": "t", "status": "test",
    "explain": "{value:.0f} failures", "entity": "user_id",
    "condition": {"field": "outcome", "equals": "failure"},
    "threshold": {"group_by": "user_id", "window": "10m", "agg": "count", "gte": 3},
}  # fmt: skip


def _batch(events: list[dict[str, Any]]) -> Batch:
    return Batch(Domain.auth, sample_frame(Domain.auth, events), "test")


def _failures(start: int, n: int, user: str = "u1") -> list[dict[str, Any]]:
    return [
        {"user_id": user, "outcome": "failure", "ts": start + i, "event_id": f"{user}-{start + i}"}
        for i in range(n)
    ]


class Gate(Step):
    """Records batch sizes; waits for ``opened`` before each batch (to hold the thread), can fail."""

    step_id = "gate"

    def __init__(self, fail_on: int | None = None) -> None:
        self.rows: list[int] = []
        self.opened = threading.Event()
        self.opened.set()
        self.fail_on = fail_on
        self.closed = False

    def process(self, batch: Batch) -> Batch:
        self.opened.wait()
        if batch.frame.height == self.fail_on:
            raise RuntimeError("bad batch")
        self.rows.append(batch.frame.height)
        return batch

    def snapshot(self) -> bytes:
        return ",".join(map(str, self.rows)).encode()

    def close(self) -> None:
        self.closed = True


def test_background_step__keeps_order_and_passes_batch_unchanged() -> None:
    inner = Gate()
    step = BackgroundStep(inner)
    batches = [_batch(_failures(0, n)) for n in (5, 1, 3, 2)]
    assert [step.process(b) for b in batches] == batches
    step.close()
    assert inner.rows == [5, 1, 3, 2]
    assert inner.closed


def test_background_step__blocks_when_queue_full() -> None:
    inner = Gate()
    inner.opened.clear()  # the thread takes one batch and waits on it
    step = BackgroundStep(inner, queue_batches=1)
    step.process(_batch(_failures(0, 1)))
    step.process(_batch(_failures(0, 2)))  # fills the queue once the thread holds the first
    third = threading.Thread(target=step.process, args=(_batch(_failures(0, 3)),))
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive()  # back-pressure: no room until the thread moves on
    inner.opened.set()
    third.join(timeout=10)
    assert not third.is_alive()
    step.close()
    assert inner.rows == [1, 2, 3]


def test_background_step__snapshot_waits_for_queued_batches() -> None:
    inner = Gate()
    step = BackgroundStep(inner, queue_batches=4)
    for n in (1, 2, 3):
        step.process(_batch(_failures(0, n)))
    assert step.snapshot() == b"1,2,3"
    step.close()


def test_background_step__failure_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    inner = Gate(fail_on=2)
    step = BackgroundStep(inner)
    with caplog.at_level(logging.ERROR, logger="finsecure.detection.background"):
        for n in (1, 2, 3):
            step.process(_batch(_failures(0, n)))
        step.close()
    assert step.errors == 1
    assert inner.rows == [1, 3]
    assert "step gate failed" in caplog.text


def test_background_step__pipeline_hits_same_as_inline() -> None:
    chunks = [_failures(i * 1000, 4, user) for i in range(5) for user in ("u1", "u2")]
    canonical = list(canonical_polars_schema(Domain.auth))

    def run(staged: bool) -> pl.DataFrame:
        found: list[pl.DataFrame] = []
        detection: Step = DetectionStep(RuleSet([Rule.from_dict(RULE)]), found.append)
        step = BackgroundStep(detection) if staged else detection
        pipeline = Pipeline([step], [], max_rows=3, max_age_s=0.01).start()
        for events in chunks:
            pipeline.submit(Domain.auth, sample_frame(Domain.auth, events).select(canonical), source="test")
        pipeline.stop(drain=True)
        return pl.concat(found)

    inline, staged = run(False), run(True)
    assert inline.height == 20  # 2 users x 5 bursts of 4 failures, each firing at its 3rd and 4th
    assert staged.equals(inline)
