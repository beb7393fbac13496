from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from finsecure.detection.engine import HITS_SCHEMA, DetectionStep, RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import Rule, RuleError, ThresholdSpec, collect_errors
from finsecure.detection.threshold import ThresholdEvaluator
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch

BASE: dict[str, Any] = {
    "id": "0b9d3c9e-6b8f-4d67-9a5e-111111111111", "title": "t", "description": "d", "severity": "high",
    "domain": "auth", "kind": "threshold", "attack": ["T1110"], "triage": "t", "status": "test",
    "explain": "{value:.0f} failures", "entity": "user_id",
    "condition": {"field": "outcome", "equals": "failure"},
    "threshold": {"group_by": "user_id", "window": "10m", "agg": "count", "gte": 3},
}  # fmt: skip
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _batch(events: list[dict[str, Any]]) -> Batch:
    return Batch(Domain.auth, sample_frame(Domain.auth, events), "test")


def test_rule_set__threshold_state_spans_batches_and_snapshots() -> None:
    rules = RuleSet([Rule.from_dict(BASE)])
    step_hits: list[pl.DataFrame] = []
    step = DetectionStep(rules, step_hits.append)
    failure = {"user_id": "u1", "outcome": "failure"}
    assert step.process(_batch([{**failure, "ts": 0}, {**failure, "ts": 1}])).frame.height == 2
    saved = step.snapshot()
    restored = DetectionStep(RuleSet([Rule.from_dict(BASE)]), step_hits.append)
    restored.restore(saved)
    restored.process(_batch([{**failure, "ts": 2, "event_id": "e3"}]))
    assert len(step_hits) == 1
    hits = step_hits[0]
    assert hits.schema == HITS_SCHEMA
    assert hits.row(0, named=True)["explanation"] == "3 failures"
    assert hits.row(0, named=True)["entity_id"] == "u1"


def test_rule_set__model_rule_never_fires_without_score_column() -> None:
    rule = Rule.from_dict(
        {
            **BASE,
            "kind": "model",
            "model": {"score": "score__x", "gte": 0.5},
            "threshold": None,
            "explain": "score {value}",
        }
    )
    assert RuleSet([rule]).evaluate(_batch([{"user_id": "u1", "outcome": "failure"}])).height == 0


def test_collect_errors__bad_rule_reported_others_load(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "good.yml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({**BASE, "id": "x"}))
    (tmp_path / "broken.yml").write_text("a: [")
    (tmp_path / "unknown.yml").write_text(
        yaml.safe_dump(
            {
                **BASE,
                "id": "0b9d3c9e-6b8f-4d67-9a5e-222222222222",
                "condition": {"field": "nope", "exists": True},
            }
        )
    )
    result = collect_errors(sorted(tmp_path.glob("*.yml")))
    assert [rule.path for rule in result.rules] == [str(tmp_path / "good.yml")]
    keys = {Path(error.location.split(":")[0]).name: error.key_path for error in result.errors}
    assert keys == {"bad.yml": "id", "broken.yml": "", "unknown.yml": "condition"}
    assert all(isinstance(error, RuleError) for error in result.errors)


def _reference(
    batches: list[list[tuple[str | None, int, str]]], spec: ThresholdSpec
) -> list[list[float | None]]:
    seen: list[tuple[str | None, int, str]] = []
    out: list[list[float | None]] = []
    for batch in batches:
        seen += batch
        values: list[float | None] = []
        for key, ts, _value in batch:
            if key is None:
                values.append(None)
                continue
            window = [v for k, t, v in seen if k == key and ts - spec.window_s < t <= ts]
            values.append(float(len(set(window))) if spec.agg == "distinct" else float(len(window)))
        out.append(values)
    return out


EVENT = st.tuples(st.sampled_from(["a", "b", None]), st.integers(0, 100), st.sampled_from(["x", "y", "z"]))


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.lists(EVENT, max_size=12), min_size=1, max_size=4),
    agg=st.sampled_from(["count", "distinct"]),
)
def test_threshold_evaluator__matches_brute_force(
    batches: list[list[tuple[str | None, int, str]]], agg: str
) -> None:
    spec = ThresholdSpec("k", 10, agg, 1.0, "v" if agg == "distinct" else None)  # type: ignore[arg-type]
    evaluator = ThresholdEvaluator(spec, late_s=10_000)
    expected = _reference(batches, spec)
    for batch, want in zip(batches, expected, strict=True):
        frame = pl.DataFrame(
            {
                "k": [e[0] for e in batch],
                "ts": [T0 + dt.timedelta(seconds=e[1]) for e in batch],
                "v": [e[2] for e in batch],
            },
            schema={"k": pl.String, "ts": pl.Datetime("us", "UTC"), "v": pl.String},
        )
        assert evaluator.evaluate(frame).to_list() == want
