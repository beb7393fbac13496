"""Run compiled rules over batches: :class:`RuleSet` gives a frame of hits, :class:`DetectionStep` runs it
in a pipeline and hands hits to a callback.

Per batch, one Polars ``select`` evaluates every condition of the batch's domain: whether each match or
model rule fires, which rows each threshold rule counts, which rows match each sequence step. Rules
and steps with no row set cost nothing more; threshold rules then update their per-entity windows
(NumPy/numba, :mod:`finsecure.detection.threshold`) and sequence rules their steps' matched events
(:mod:`finsecure.detection.sequence`). Only hits are turned into explanation text in Python.
"""

from __future__ import annotations

import functools
import json
import string
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.detection.frames import domain_schema
from finsecure.detection.rule import Rule, explain_fields
from finsecure.detection.sequence import SequenceEvaluator, micros
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


#: Columns outside the canonical schema that rules may read, and their types (Sigma's source record).
_OPTIONAL_COLUMNS: dict[str, pl.DataType] = {"raw": pl.String()}


_TS = pl.Datetime("us", "UTC")
_NO_ROWS = pl.Series("none", [], dtype=pl.Boolean)
"""Stands for a mask with no row set (the column is not even read)."""


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "unknown"


@functools.lru_cache(maxsize=1024)
def _parsed(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    """A template's parts, parsed once (explanations are rendered per hit)."""
    return tuple(string.Formatter().parse(template))


def render_explanation(template: str, values: Mapping[str, Any]) -> str:
    """Fill an explain template; an empty value reads "unknown" and a bad format falls back to plain text.

    >>> render_explanation("Card used {d:.0f} km away, {s:.0f} km/h", {"d": 812.4, "s": None})
    'Card used 812 km away, unknown km/h'
    """
    parts: list[str] = []
    for literal, name, spec, conversion in _parsed(template):
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

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        late_s: int | None = None,
        disabled_source: Callable[[], frozenset[str] | None] | None = None,
        disabled_interval_s: float = 5.0,
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.disabled: frozenset[str] = frozenset()
        """Ids of rules switched off: they give no hits (see :mod:`finsecure.detection.states`)."""
        self.disabled_source = disabled_source
        self.disabled_interval_s = disabled_interval_s
        self._disabled_due = 0.0
        self._by_domain: dict[Domain, list[Rule]] = {}
        self._sequences: dict[str, SequenceEvaluator] = {}
        self._steps_by_domain: dict[Domain, list[tuple[Rule, int]]] = {}
        self._hit_columns: dict[str, tuple[str, ...]] = {}
        for rule in self.rules:
            if rule.sequence is None:
                self._by_domain.setdefault(rule.domain, []).append(rule)
                self._hit_columns[rule.id] = _hit_columns(rule)
                continue
            schema = domain_schema(rule.domain)
            wanted = [n for n in explain_fields(rule.explain) if n in schema]
            self._sequences[rule.id] = SequenceEvaluator(
                rule.sequence, explain_columns={n: schema[n] for n in wanted}, late_s=late_s
            )
            for index, step in enumerate(rule.sequence.steps):
                self._steps_by_domain.setdefault(step.domain, []).append((rule, index))
        self._mask_cache: dict[Domain, list[pl.Expr]] = {}
        self._needed: dict[Domain, set[str]] = {}
        self._thresholds: dict[str, ThresholdEvaluator] = {
            rule.id: ThresholdEvaluator(rule.threshold, rule.expr, late_s)
            for rule in self.rules
            if rule.threshold is not None
        }

    def _frame_with_columns(self, domain: Domain, frame: pl.DataFrame) -> pl.DataFrame:
        """Add every column a rule reads but the batch lacks, as nulls (a model score not produced yet)."""
        needed = self._needed.get(domain)
        if needed is None:
            needed = {name for rule in self._by_domain.get(domain, ()) for name in rule.fields()}
            needed |= {
                n for rule, _ in self._steps_by_domain.get(domain, ()) for n in rule.step_fields(domain)
            }
            self._needed[domain] = needed
        absent = needed.difference(frame.columns)
        if not absent:
            return frame
        schema = domain_schema(domain)
        missing = [
            pl.lit(None, dtype=schema.get(name, _OPTIONAL_COLUMNS.get(name))).alias(name)
            for name in sorted(absent)
        ]
        return frame.with_columns(missing) if missing else frame

    def _masks(self, domain: Domain) -> list[pl.Expr]:
        """Every boolean column one batch of ``domain`` needs, built once: per match or model rule
        whether it fires, per threshold rule which rows count, per sequence step which rows match."""
        masks = self._mask_cache.get(domain)
        if masks is not None:
            return masks
        masks = []
        for index, rule in enumerate(self._by_domain.get(domain, [])):
            name = f"__rule_{index}"
            if rule.threshold is not None:
                masks.append(self._thresholds[rule.id].counted().alias(name))
            elif rule.model is not None:
                score = pl.col(rule.model.score)
                fired = score.is_not_null() & (score.cast(pl.Float64) >= rule.model.gte)
                if rule.expr is not None:
                    fired = fired & rule.expr
                masks.append(fired.fill_null(False).alias(name))
            else:
                expr = rule.expr if rule.expr is not None else pl.lit(False)
                masks.append(expr.fill_null(False).alias(name))
        for number, (rule, index) in enumerate(self._steps_by_domain.get(domain, [])):
            spec = rule.sequence
            if spec is not None:  # always, for rules listed as steps
                step = spec.steps[index]
                matched = step.expr & pl.col(step.by).is_not_null()
                masks.append(matched.fill_null(False).alias(f"__step_{number}"))
        self._mask_cache[domain] = masks
        return masks

    def set_disabled(self, rule_ids: Iterable[str]) -> None:
        """Switch these rules off (and every other on), from the next batch on."""
        self.disabled = frozenset(rule_ids)

    def _refresh_disabled(self) -> None:
        """Re-read the switched-off rules from ``disabled_source``, at most every ``disabled_interval_s``."""
        now = time.monotonic()
        if self.disabled_source is None or now < self._disabled_due:
            return
        self._disabled_due = now + self.disabled_interval_s
        found = self.disabled_source()
        if found is not None:
            self.disabled = found

    def evaluate(self, batch: Batch) -> pl.DataFrame:
        """Hits of every rule of the batch's domain (columns: :data:`HITS_SCHEMA`) but switched-off ones."""
        self._refresh_disabled()
        disabled = self.disabled
        rules = self._by_domain.get(batch.domain, [])
        steps = self._steps_by_domain.get(batch.domain, [])
        if not (rules or steps) or batch.frame.height == 0:
            return pl.DataFrame(schema=HITS_SCHEMA)
        frame = self._frame_with_columns(batch.domain, batch.frame)
        fired_frame = frame.select(self._masks(batch.domain))
        anything = [column.any() for column in fired_frame.iter_columns()]  # which have a row at all
        hits: list[pl.DataFrame] = []
        step_masks: dict[str, dict[int, pl.Series]] = {}
        for number, (rule, index) in enumerate(steps):
            column = len(rules) + number
            by_step = step_masks.setdefault(rule.id, {})
            by_step[index] = fired_frame.to_series(column) if anything[column] else _NO_ROWS
        latest = frame.get_column("ts").max() if step_masks else None
        for rule_id, by_step in step_masks.items():
            evaluator = self._sequences[rule_id]
            if all(mask is _NO_ROWS for mask in by_step.values()):
                evaluator.advance(batch.domain, latest)  # no step matched: time still moves on
                continue
            rule = next(r for r, _ in steps if r.id == rule_id)
            if rule_id in disabled:
                continue
            masks = {
                i: m if m is not _NO_ROWS else pl.repeat(False, frame.height, eager=True)
                for i, m in by_step.items()
            }
            done = evaluator.update(batch.domain, frame, masks)
            if done.height:
                hits.append(_sequence_hits(rule, done))
        ts_us: npt.NDArray[np.int64] | None = None
        columns: pl.Schema | None = None
        for index, rule in enumerate(rules):
            if not anything[index] or rule.id in disabled:
                continue
            mask = fired_frame.to_series(index)
            value: pl.Series | None = None
            if rule.threshold is not None:
                if ts_us is None:
                    ts_us = micros(frame.get_column("ts"))
                rows, values = self._thresholds[rule.id].evaluate_rows(frame, mask, ts_us)
                keep = values >= rule.threshold.gte
                if not keep.any():
                    continue
                picked = rows[keep]
                value = pl.Series("value", values[keep], dtype=pl.Float64)
            else:
                picked = np.flatnonzero(mask.to_numpy())
            if columns is None:
                columns = frame.schema
            wanted = [c for c in self._hit_columns[rule.id] if c in columns]
            rows_frame = pl.DataFrame([frame.get_column(c) for c in wanted])[picked]
            if value is not None:
                rows_frame = rows_frame.with_columns(value)
            elif rule.model is not None:
                rows_frame = rows_frame.with_columns(value=pl.col(rule.model.score))
            hits.append(_hits(batch.domain, rule, rows_frame))
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


def _hit_columns(rule: Rule) -> tuple[str, ...]:
    """The event columns a match, threshold or model rule's hits read (id, time, entity, explanation)."""
    wanted = {"event_id", "ts", rule.entity, *explain_fields(rule.explain)}
    if rule.model is not None:
        wanted.add(rule.model.score)
    return tuple(sorted(wanted))


def _sequence_hits(rule: Rule, done: pl.DataFrame) -> pl.DataFrame:
    """Hits of a sequence rule: one per completing event, explained with the time the chain took."""
    texts = []
    for row in done.iter_rows(named=True):
        values = dict(row)
        values["elapsed_min"] = round(float(row["elapsed_s"]) / 60.0, 1)
        values["first_time"] = row["start"].strftime("%H:%M UTC") if row["start"] is not None else None
        texts.append(render_explanation(rule.explain, values))
    return _hit_frame(rule, rule.domain, done, "key", texts)


def _hits(domain: Domain, rule: Rule, rows: pl.DataFrame) -> pl.DataFrame:
    placeholders = [name for name in explain_fields(rule.explain) if name in rows.columns]
    texts = [render_explanation(rule.explain, row) for row in rows.select(placeholders).iter_rows(named=True)]
    if not placeholders:
        texts = [rule.explain] * rows.height
    return _hit_frame(rule, domain, rows, rule.entity, texts)


@functools.lru_cache(maxsize=4096)
def _one(name: str, value: str) -> pl.Series:
    """A one-row String series, built once per (column, value) (a hit frame repeats it per row)."""
    return pl.Series(name, [value], dtype=pl.String)


def _hit_frame(rule: Rule, domain: Domain, rows: pl.DataFrame, entity: str, texts: list[str]) -> pl.DataFrame:
    """The hits frame (:data:`HITS_SCHEMA`) of one rule's rows, built column by column (no query plan)."""
    height = rows.height

    def constant(name: str, value: str) -> pl.Series:
        return _one(name, value).new_from_index(0, height)

    entity_id = rows.get_column(entity).alias("entity_id")
    ts = rows.get_column("ts")
    return pl.DataFrame(
        [
            constant("rule_id", rule.id),
            constant("rule_title", rule.title),
            constant("domain", domain.value),
            rows.get_column("event_id"),
            constant("entity_type", rule.entity),
            entity_id if entity_id.dtype == pl.String else entity_id.cast(pl.String),
            ts if ts.dtype == _TS else ts.cast(_TS),
            constant("severity", rule.severity),
            pl.Series("explanation", texts, dtype=pl.String),
        ]
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
