"""Run a rule's inline sample events: positives must fire, negatives must not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from finsecure.detection.engine import RuleSet
from finsecure.detection.frames import sample_frame
from finsecure.detection.rule import Rule
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch

__all__ = ["run_samples", "sample_hits"]


def sample_hits(rule: Rule, events: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Hits of ``rule`` on sample events taken as one batch (fresh threshold state).

    A sequence rule's samples may name their ``domain`` (default: the rule's); each run of consecutive
    events of one domain is one batch, in the order written, so samples can also show late arrivals.
    """
    if rule.sequence is not None:
        return _sequence_sample_hits(rule, events)
    extra = {rule.model.score: pl.Float64()} if rule.model is not None else None
    expanded = _expand(events)
    frame = sample_frame(rule.domain, expanded, extra)
    return RuleSet([rule]).evaluate(Batch(rule.domain, frame, "samples"))


def _expand(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``repeat: n`` writes a burst of n copies of one event (with ids <id>-0, <id>-1, ...)."""
    expanded: list[Mapping[str, Any]] = []
    for index, event in enumerate(events):
        count = int(event.get("repeat", 1))
        base = {key: value for key, value in event.items() if key != "repeat"}
        if count == 1:
            expanded.append(base)
            continue
        name = str(base.get("event_id", f"sample-{index}"))
        expanded += [{**base, "event_id": f"{name}-{copy}"} for copy in range(count)]
    return expanded


def _sequence_sample_hits(rule: Rule, events: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    runs: list[tuple[Domain, list[Mapping[str, Any]]]] = []
    named = [{"event_id": f"sample-{index}", **event} for index, event in enumerate(events)]
    for index, event in enumerate(_expand(named)):
        try:
            domain = Domain(str(event.get("domain", rule.domain.value)))
        except ValueError:
            raise ValueError(f"[{index}]: domain {event.get('domain')!r} is not a domain") from None
        body = {key: value for key, value in event.items() if key != "domain"}
        if runs and runs[-1][0] == domain:
            runs[-1][1].append(body)
        else:
            runs.append((domain, [body]))
    rule_set = RuleSet([rule])
    hits = [rule_set.evaluate(Batch(domain, sample_frame(domain, rows), "samples")) for domain, rows in runs]
    return pl.concat(hits)


def run_samples(rule: Rule) -> list[str]:
    """Problems with a rule's samples, in plain words (empty: all good).

    A match or model rule must fire on every positive event; a threshold or sequence rule must fire at
    least once on its positive events (a burst, a whole sequence); no rule may fire on its negative
    events.
    """
    problems: list[str] = []
    if not rule.samples_positive:
        problems.append("samples.positive: needs at least one positive sample")
    if not rule.samples_negative:
        problems.append("samples.negative: needs at least one negative sample")
    for key, events in (("positive", rule.samples_positive), ("negative", rule.samples_negative)):
        if not events:
            continue
        try:
            hits = sample_hits(rule, events)
        except ValueError as exc:
            problems.append(f"samples.{key}{exc}" if str(exc).startswith("[") else f"samples.{key}: {exc}")
            continue
        if key == "negative" and hits.height:
            problems.append(f"samples.negative: fired on {hits.get_column('event_id').to_list()}")
        if key == "positive":
            ids = set(hits.get_column("event_id").to_list())
            if rule.threshold is not None and not ids:
                problems.append("samples.positive: the burst never reached the threshold")
            if rule.sequence is not None and not ids:
                problems.append("samples.positive: the sequence never completed")
            if rule.threshold is None and rule.sequence is None:
                missed = [
                    f"sample-{i}"
                    for i in range(len(events))
                    if f"sample-{i}" not in ids and "event_id" not in events[i]
                ]
                missed += [str(e["event_id"]) for e in events if "event_id" in e and e["event_id"] not in ids]
                if missed:
                    problems.append(f"samples.positive: did not fire on {missed}")
    return problems
