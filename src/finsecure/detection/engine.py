"""Run compiled rules over batches: :class:`RuleSet` gives a frame of hits, :class:`DetectionStep` runs it
in a pipeline and hands hits to a callback.

All match and model conditions of a domain run in one Polars ``select``; threshold rules keep their
per-entity window state between batches. Only hits (rare) are turned into explanation text in Python.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import polars as pl

from finsecure.detection.rule import Rule, explain_fields
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
        Match, threshold and model rules (any domains).
    late_s
        Passed to each threshold rule (see :class:`~finsecure.detection.threshold.ThresholdEvaluator`).
    """

    def __init__(self, rules: Iterable[Rule], *, late_s: int | None = None) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._by_domain: dict[Domain, list[Rule]] = {}
        for rule in self.rules:
            self._by_domain.setdefault(rule.domain, []).append(rule)
        self._thresholds: dict[str, ThresholdEvaluator] = {
            rule.id: ThresholdEvaluator(rule.threshold, rule.expr, late_s)
            for rule in self.rules
            if rule.threshold is not None
        }

    def _frame_with_columns(self, domain: Domain, frame: pl.DataFrame) -> pl.DataFrame:
        """Add every column a rule reads but the batch lacks, as nulls (a model score not produced yet)."""
        needed = {name for rule in self._by_domain.get(domain, ()) for name in rule.fields()}
        missing = [pl.lit(None).alias(name) for name in sorted(needed - set(frame.columns))]
        return frame.with_columns(missing) if missing else frame

    def evaluate(self, batch: Batch) -> pl.DataFrame:
        """Hits of every rule of the batch's domain (columns: :data:`HITS_SCHEMA`)."""
        rules = self._by_domain.get(batch.domain, [])
        if not rules or batch.frame.height == 0:
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
        fired_frame = frame.select(masks)
        hits: list[pl.DataFrame] = []
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
        """State of every threshold rule, as bytes."""
        states = {rule_id: evaluator.snapshot().hex() for rule_id, evaluator in self._thresholds.items()}
        return json.dumps(states).encode()

    def restore(self, data: bytes) -> None:
        """Load state written by :meth:`snapshot` (rules no longer present are ignored)."""
        states: dict[str, str] = json.loads(data)
        for rule_id, hex_state in states.items():
            evaluator = self._thresholds.get(rule_id)
            if evaluator is not None:
                evaluator.restore(bytes.fromhex(hex_state))


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
