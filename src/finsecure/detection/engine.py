"""Run compiled rules over batches: :class:`RuleSet` gives a frame of hits, :class:`DetectionStep` runs it
in a pipeline and hands hits to a callback.

All match and model conditions of a domain run in one Polars ``select``; threshold rules keep their
per-entity window state between batches, sequence rules their steps' matched events (see
:mod:`finsecure.detection.sequence`); a sequence step's condition runs in the same ``select`` as the
match rules of its domain. Only hits (rare) are turned into explanation text in Python.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import polars as pl

from finsecure.detection.frames import domain_schema
from finsecure.detection.rule import Rule, explain_fields
from finsecure.detection.sequence import SequenceEvaluator
from finsecure.detection.threshold import ThresholdEvaluator
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch, Step

__all__ = ["HITS_SCHEMA", "DetectionStep", "RuleSet", "render_explanation"]

HITS_SCHEMA = pl.Schema(
    {
        "rule_id": pl.String(),
        "rule_title": pl.String(),
        "domain": pl.String(),
        "event_id": pl.String(),
        "entity_type": pl.String(),
        "entity_id": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "severity": pl.String(),
        "explanation": pl.String(),
    }
)
"""Columns of the hits frame, one row per (rule, event) that fired."""


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "unknown"


def render_explanation(template: str, values: Mapping[str, Any]) -> str:
    """Fill an explain template; an empty value reads "unknown" and a bad format falls back to plain text.

    >>> render_explanation("Card used {d:.0f} km away, {s:.0f} km/h", {"d": 812.4, "s": None})
    'Card used 812 km away, unknown km/h'
    """
    parts: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        value = values.get(name)
        if value is None:
            parts.append("unknown")
            continue
        if conversion:
            value = repr(value) if conversion == "r" else str(value)
        try:
            parts.append(format(value, spec or ""))
        except (TypeError, ValueError):
            parts.append(str(value))
    return "".join(parts)


class RuleSet:
    """Compiled rules, ready to evaluate batches of any domain.

    Parameters
    ----------
    rules
        Match, threshold, model and sequence rules (any domains).
    late_s
        Passed to each threshold and sequence rule (see
        :class:`~finsecure.detection.threshold.ThresholdEvaluator`).
    """

    def __init__(self, rules: Iterable[Rule], *, late_s: int | None = None) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._by_domain: dict[Domain, list[Rule]] = {}
        self._sequences: dict[str, SequenceEvaluator] = {}
        self._steps_by_domain: dict[Domain, list[tuple[Rule, int]]] = {}
        for rule in self.rules:
            if rule.sequence is None:
                self._by_domain.setdefault(rule.domain, []).append(rule)
                continue
            schema = domain_schema(rule.domain)
            wanted = [n for n in explain_fields(rule.explain) if n in schema]
            self._sequences[rule.id] = SequenceEvaluator(
                rule.sequence, explain_columns={n: schema[n] for n in wanted}, late_s=late_s
            )
            for index, step in enumerate(rule.sequence.steps):
                self._steps_by_domain.setdefault(step.domain, []).append((rule, index))
        self._thresholds: dict[str, ThresholdEvaluator] = {
            rule.id: ThresholdEvaluator(rule.threshold, rule.expr, late_s)
            for rule in self.rules
            if rule.threshold is not None
        }

    def _frame_with_columns(self, domain: Domain, frame: pl.DataFrame) -> pl.DataFrame:
        """Add every column a rule reads but the batch lacks, as nulls (a model score not produced yet)."""
        needed = {name for rule in self._by_domain.get(domain, ()) for name in rule.fields()}
        needed |= {n for rule, _ in self._steps_by_domain.get(domain, ()) for n in rule.step_fields(domain)}
        missing = [pl.lit(None).alias(name) for name in sorted(needed - set(frame.columns))]
        return frame.with_columns(missing) if missing else frame

    def evaluate(self, batch: Batch) -> pl.DataFrame:
        """Hits of every rule of the batch's domain (columns: :data:`HITS_SCHEMA`)."""
        rules = self._by_domain.get(batch.domain, [])
        steps = self._steps_by_domain.get(batch.domain, [])
        if not (rules or steps) or batch.frame.height == 0:
            return pl.DataFrame(schema=HITS_SCHEMA)
        frame = self._frame_with_columns(batch.domain, batch.frame)
        masks: list[pl.Expr] = []
        values: dict[str, pl.Series] = {}
        for index, rule in enumerate(rules):
            name = f"__rule_{index}"
            if rule.threshold is not None:
                value = self._thresholds[rule.id].evaluate(frame)
                values[name] = value
                masks.append((pl.lit(value) >= rule.threshold.gte).fill_null(False).alias(name))
            elif rule.model is not None:
                score = pl.col(rule.model.score)
                fired = score.is_not_null() & (score.cast(pl.Float64) >= rule.model.gte)
                if rule.expr is not None:
                    fired = fired & rule.expr
                masks.append(fired.fill_null(False).alias(name))
            else:
                expr = rule.expr if rule.expr is not None else pl.lit(False)
                masks.append(expr.alias(name))
        for number, (rule, index) in enumerate(steps):
            spec = rule.sequence
            if spec is not None:  # always, for rules listed as steps
                masks.append(spec.steps[index].expr.alias(f"__step_{number}"))
        fired_frame = frame.select(masks)
        hits: list[pl.DataFrame] = []
        step_masks: dict[str, dict[int, pl.Series]] = {}
        for number, (rule, index) in enumerate(steps):
            step_masks.setdefault(rule.id, {})[index] = fired_frame.get_column(f"__step_{number}")
        for rule_id, by_step in step_masks.items():
            if not any(mask.any() for mask in by_step.values()):
                continue
            rule = next(r for r, _ in steps if r.id == rule_id)
            done = self._sequences[rule_id].update(batch.domain, frame, by_step)
            if done.height:
                hits.append(_sequence_hits(rule, done))
        for index, rule in enumerate(rules):
            mask = fired_frame.get_column(f"__rule_{index}")
            if not mask.any():
                continue
            rows = frame.filter(mask)
            if f"__rule_{index}" in values:
                rows = rows.with_columns(value=values[f"__rule_{index}"].filter(mask))
            elif rule.model is not None:
                rows = rows.with_columns(value=pl.col(rule.model.score))
            hits.append(_hits(batch.domain, rule, rows))
        if not hits:
            return pl.DataFrame(schema=HITS_SCHEMA)
        return pl.concat(hits)

    def snapshot(self) -> bytes:
        """State of every threshold and sequence rule, as bytes."""
        states = {rule_id: evaluator.snapshot().hex() for rule_id, evaluator in self._thresholds.items()}
        states |= {rule_id: evaluator.snapshot().hex() for rule_id, evaluator in self._sequences.items()}
        return json.dumps(states).encode()

    def restore(self, data: bytes) -> None:
        """Load state written by :meth:`snapshot` (rules no longer present are ignored)."""
        states: dict[str, str] = json.loads(data)
        for rule_id, hex_state in states.items():
            evaluator = self._thresholds.get(rule_id)
            if evaluator is not None:
                evaluator.restore(bytes.fromhex(hex_state))
            sequence = self._sequences.get(rule_id)
            if sequence is not None:
                sequence.restore(bytes.fromhex(hex_state))


def _sequence_hits(rule: Rule, done: pl.DataFrame) -> pl.DataFrame:
    """Hits of a sequence rule: one per completing event, explained with the time the chain took."""
    texts = []
    for row in done.iter_rows(named=True):
        values = dict(row)
        values["elapsed_min"] = round(float(row["elapsed_s"]) / 60.0, 1)
        values["first_time"] = row["start"].strftime("%H:%M UTC") if row["start"] is not None else None
        texts.append(render_explanation(rule.explain, values))
    return done.select(
        pl.lit(rule.id).alias("rule_id"),
        pl.lit(rule.title).alias("rule_title"),
        pl.lit(rule.domain.value).alias("domain"),
        pl.col("event_id"),
        pl.lit(rule.entity).alias("entity_type"),
        pl.col("key").alias("entity_id"),
        pl.col("ts"),
        pl.lit(rule.severity).alias("severity"),
        pl.Series("explanation", texts, dtype=pl.String),
    )


def _hits(domain: Domain, rule: Rule, rows: pl.DataFrame) -> pl.DataFrame:
    placeholders = [name for name in explain_fields(rule.explain) if name in rows.columns]
    texts = [render_explanation(rule.explain, row) for row in rows.select(placeholders).iter_rows(named=True)]
    if not placeholders:
        texts = [rule.explain] * rows.height
    return rows.select(
        pl.lit(rule.id).alias("rule_id"),
        pl.lit(rule.title).alias("rule_title"),
        pl.lit(domain.value).alias("domain"),
        pl.col("event_id"),
        pl.lit(rule.entity).alias("entity_type"),
        pl.col(rule.entity).cast(pl.String).alias("entity_id"),
        pl.col("ts").cast(pl.Datetime("us", "UTC")),
        pl.lit(rule.severity).alias("severity"),
        pl.Series("explanation", texts, dtype=pl.String),
    )


class DetectionStep(Step):
    """Evaluate a :class:`RuleSet` on every batch; the batch passes through unchanged, hits go to
    ``on_hits`` (only called when there is at least one)."""

    def __init__(
        self, rules: RuleSet, on_hits: Callable[[pl.DataFrame], None], *, step_id: str = "detection"
    ) -> None:
        self.step_id = step_id
        self.rules = rules
        self.on_hits = on_hits

    def process(self, batch: Batch) -> Batch:
        """Run the rules and pass the batch on unchanged."""
        hits = self.rules.evaluate(batch)
        if hits.height:
            self.on_hits(hits)
        return batch

    def snapshot(self) -> bytes:
        """Threshold-rule state."""
        return self.rules.snapshot()

    def restore(self, data: bytes) -> None:
        """Load threshold-rule state."""
        self.rules.restore(data)
