"""Sequence rules: ordered steps by the same entity (or linked keys across domains) within a window.

A sequence completes at an event ``e_k`` of its last step when there are events ``e_1 … e_k``, one per
step (or ``count`` of them for a step that needs a burst), whose keys are equal, whose times strictly
increase from step to step, and where ``t(e_k) - t(e_1) <= window``. Steps may live in different domains:
the key of a step is its own column (``user_id`` on a sign-in, ``user_id`` on a payment, ``src_ip`` on a
connection and on a sign-in...).

Streaming, with bounded state: each step keeps the few events that matched its condition (key, time, id)
for ``window + late_s`` behind the latest time seen, capped at ``max_rows`` per step. A batch only
re-checks the keys it touched, with one as-of join per step (the latest possible start of the chain so
far, carried forward as a running maximum), so events may arrive out of order: a late first step still
completes a sequence whose last step was already seen. Each completing event fires once.

>>> import datetime as dt
>>> from finsecure.event.schemas import Domain
>>> spec = SequenceSpec.from_dict({"window": "1h", "steps": [
...     {"domain": "auth", "condition": {"field": "action", "equals": "payee_add"}},
...     {"domain": "payment", "condition": {"field": "amount", "gte": 1000}},
... ]}, default_by="user_id")
>>> [step.domain.value for step in spec.steps], spec.window_s
(['auth', 'payment'], 3600)
>>> t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
>>> ev = SequenceEvaluator(spec)
>>> auth = pl.DataFrame({"event_id": ["a1"], "ts": [t0], "user_id": ["u1"], "action": ["payee_add"]})
>>> ev.update(Domain.auth, auth).height
0
>>> pay = pl.DataFrame({"event_id": ["p1"], "ts": [t0 + dt.timedelta(minutes=5)], "user_id": ["u1"],
...                     "amount": [5000.0]})
>>> ev.update(Domain.payment, pay).select("event_id", "key", "elapsed_s").row(0)
('p1', 'u1', 300.0)
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from finsecure.detection.conditions import ConditionError, compile_condition, condition_fields
from finsecure.event.schemas import Domain

__all__ = ["SequenceEvaluator", "SequenceSpec", "SequenceStep"]

_TS = pl.Datetime("us", "UTC")
_BASE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "ts": _TS,
    "event_id": pl.String(),
    "fired": pl.Boolean(),
}


def _duration(value: object, key_path: str) -> int:
    from finsecure.detection.rule import parse_duration

    return parse_duration(value, key_path)


@dataclass(frozen=True, slots=True)
class SequenceStep:
    """One step: which events of which domain count, the column that links them, how many are needed."""

    name: str
    domain: Domain
    by: str
    expr: pl.Expr
    columns: frozenset[str]
    count: int = 1


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """The ordered steps of a sequence rule and the window from the first step to the last."""

    window_s: int
    steps: tuple[SequenceStep, ...]

    @classmethod
    def from_dict(cls, data: object, *, default_by: str, path: str = "sequence") -> SequenceSpec:
        """Build from parsed YAML (``window`` and ``steps``: each ``domain``, ``condition``, optional
        ``name``, ``by`` (default: the rule's entity) and ``count``)."""
        if not isinstance(data, Mapping):
            raise ConditionError(path, "expected a mapping with window and steps")
        unknown = sorted(set(data) - {"window", "steps"})
        if unknown:
            raise ConditionError(path, f"unknown key(s) {', '.join(unknown)}")
        window = _duration(data.get("window"), f"{path}.window")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, str) or len(raw_steps) < 2:
            raise ConditionError(f"{path}.steps", "a sequence needs a list of at least two steps")
        steps: list[SequenceStep] = []
        for index, raw in enumerate(raw_steps):
            where = f"{path}.steps[{index}]"
            if not isinstance(raw, Mapping):
                raise ConditionError(where, "each step must be a mapping")
            unknown = sorted(set(raw) - {"name", "domain", "by", "condition", "count"})
            if unknown:
                raise ConditionError(where, f"unknown key(s) {', '.join(unknown)}")
            try:
                domain = Domain(str(raw.get("domain")))
            except ValueError:
                options = ", ".join(d.value for d in Domain)
                raise ConditionError(f"{where}.domain", f"must be one of {options}") from None
            by = raw.get("by", default_by)
            if not isinstance(by, str) or not by:
                raise ConditionError(f"{where}.by", "must be a column name")
            if "condition" not in raw:
                raise ConditionError(f"{where}.condition", "each step needs a condition")
            count = raw.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConditionError(f"{where}.count", "must be a whole number of at least 1")
            name = raw.get("name", f"step {index + 1}")
            steps.append(
                SequenceStep(
                    name=str(name),
                    domain=domain,
                    by=by,
                    expr=compile_condition(raw["condition"], f"{where}.condition"),
                    columns=frozenset(condition_fields(raw["condition"]) | {by}),
                    count=count,
                )
            )
        return cls(window, tuple(steps))


class SequenceEvaluator:
    """Streaming state of one sequence rule.

    Parameters
    ----------
    spec
        The rule's steps and window.
    explain_columns
        Columns (and types) of the last step's events kept for the explanation (the completing event may
        have arrived in an earlier batch).
    late_s
        How long behind the latest time seen an event may still arrive and complete a sequence
        (default: the window).
    max_rows
        Most events kept per step (the oldest go first).
    """

    def __init__(
        self,
        spec: SequenceSpec,
        *,
        explain_columns: Mapping[str, pl.DataType] | None = None,
        late_s: int | None = None,
        max_rows: int = 200_000,
    ) -> None:
        self.spec = spec
        self.late_s = spec.window_s if late_s is None else late_s
        self.max_rows = max_rows
        kept = {k: v for k, v in (explain_columns or {}).items() if k not in _BASE_SCHEMA}
        self.explain_columns = tuple(kept)
        self._explain_types = kept
        self._schemas: list[dict[str, pl.DataType]] = []
        for index in range(len(spec.steps)):
            schema = dict(_BASE_SCHEMA)
            if index == len(spec.steps) - 1:
                schema.update(self._explain_types)
            self._schemas.append(schema)
        self._state = [pl.DataFrame(schema=schema) for schema in self._schemas]
        self._watermark: Any = None

    def steps_of(self, domain: Domain) -> list[int]:
        """Indexes of the steps whose events come from ``domain``."""
        return [i for i, step in enumerate(self.spec.steps) if step.domain == domain]

    def _candidates(self, index: int, frame: pl.DataFrame, mask: pl.Series | None) -> pl.DataFrame:
        step = self.spec.steps[index]
        keep = mask if mask is not None else frame.select(step.expr).to_series()
        rows = frame.filter(keep & frame.get_column(step.by).is_not_null())
        extra = []
        if index == len(self.spec.steps) - 1:
            extra = [
                (pl.col(c) if c in rows.columns else pl.lit(None)).cast(t).alias(c)
                for c, t in self._explain_types.items()
            ]
        return rows.select(
            pl.col(step.by).cast(pl.String).alias("key"),
            pl.col("ts").cast(_TS),
            pl.col("event_id").cast(pl.String),
            pl.lit(False).alias("fired"),
            *extra,
        )

    def update(
        self, domain: Domain, frame: pl.DataFrame, masks: Mapping[int, pl.Series] | None = None
    ) -> pl.DataFrame:
        """Take a batch of ``domain`` (with the columns the steps read) and return the sequences it
        completes: one row per completing event (``key``, ``ts``, ``event_id``, ``start``,
        ``elapsed_s`` and the explain columns). ``masks`` may give each step's condition, already
        evaluated on ``frame``."""
        indexes = self.steps_of(domain)
        fresh: dict[int, pl.DataFrame] = {}
        for index in indexes:
            rows = self._candidates(index, frame, (masks or {}).get(index))
            if rows.height:
                fresh[index] = rows
        if not fresh:
            return self._empty_result()
        for index, rows in fresh.items():
            self._state[index] = pl.concat([self._state[index], rows.select(list(self._schemas[index]))])
        latest = max(rows.get_column("ts").max() for rows in fresh.values())  # type: ignore[type-var]
        if self._watermark is None or latest > self._watermark:
            self._watermark = latest
        touched = pl.concat([rows.select("key") for rows in fresh.values()]).unique()
        result = self._complete(touched)
        self._evict()
        return result

    def _empty_result(self) -> pl.DataFrame:
        schema = {
            "key": pl.String(),
            "ts": _TS,
            "event_id": pl.String(),
            "start": _TS,
            "elapsed_s": pl.Float64(),
        }
        schema.update(self._explain_types)
        return pl.DataFrame(schema=schema)

    def _complete(self, touched: pl.DataFrame) -> pl.DataFrame:
        """Re-check the chains of the touched keys; fire (once) the last-step events that complete."""
        previous = pl.DataFrame()  # (key, ts, start) of the step before, running max of start
        last = len(self.spec.steps) - 1
        chain = pl.DataFrame()
        for index, step in enumerate(self.spec.steps):
            rows = self._state[index].join(touched, on="key", how="semi").sort("key", "ts")
            if index == 0:
                chain = rows.with_columns(pl.col("ts").alias("reach"))
            else:
                chain = rows.join_asof(
                    previous,
                    on="ts",
                    by="key",
                    strategy="backward",
                    allow_exact_matches=False,
                    check_sortedness=False,
                ).rename({"start": "reach"})
            if step.count > 1:
                chain = chain.with_columns(pl.col("reach").shift(step.count - 1).over("key"))
            chain = chain.with_columns(pl.col("reach").alias("start"))
            if index < last:
                previous = (
                    chain.filter(pl.col("start").is_not_null())
                    .select(
                        "key",
                        "ts",
                        pl.col("start").cum_max().over("key").alias("start"),
                    )
                    .sort("key", "ts")
                )
                if previous.height == 0:
                    return self._empty_result()
        window = pl.duration(seconds=self.spec.window_s)
        done = chain.filter(
            pl.col("start").is_not_null() & ((pl.col("ts") - pl.col("start")) <= window) & ~pl.col("fired")
        )
        if done.height == 0:
            return self._empty_result()
        fired_ids = done.get_column("event_id")
        self._state[last] = self._state[last].with_columns(
            fired=pl.col("fired") | pl.col("event_id").is_in(fired_ids.implode())
        )
        return done.select(
            "key",
            "ts",
            "event_id",
            "start",
            ((pl.col("ts") - pl.col("start")).dt.total_microseconds() / 1e6).alias("elapsed_s"),
            *self.explain_columns,
        ).unique(subset="event_id", keep="first", maintain_order=True)

    def _evict(self) -> None:
        if self._watermark is None:
            return
        horizon = pl.lit(self._watermark, dtype=_TS) - pl.duration(seconds=self.spec.window_s + self.late_s)
        for index, state in enumerate(self._state):
            state = state.filter(pl.col("ts") > horizon)
            if state.height > self.max_rows:
                state = state.sort("ts").tail(self.max_rows)
            self._state[index] = state

    def state_rows(self) -> int:
        """Events kept, all steps together."""
        return sum(state.height for state in self._state)

    def snapshot(self) -> bytes:
        """Every step's kept events (Arrow IPC, hex) as JSON bytes."""
        parts = []
        for state in self._state:
            buffer = io.BytesIO()
            state.write_ipc(buffer)
            parts.append(buffer.getvalue().hex())
        return json.dumps(parts).encode()

    def restore(self, data: bytes) -> None:
        """Load kept events written by :meth:`snapshot`."""
        parts: list[str] = json.loads(data)
        if len(parts) != len(self._state):
            return  # the rule changed its steps: start afresh
        for index, part in enumerate(parts):
            state = pl.read_ipc(io.BytesIO(bytes.fromhex(part)))
            self._state[index] = state.cast(self._schemas[index]).select(list(self._schemas[index]))  # type: ignore[arg-type]
        stamps = [s.get_column("ts").max() for s in self._state if s.height]
        self._watermark = max(stamps) if stamps else None  # type: ignore[type-var]
