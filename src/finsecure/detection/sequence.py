"""Sequence rules: ordered steps by the same entity (or linked keys across domains) within a window.

A sequence completes at an event ``e_k`` of its last step when there are events ``e_1 … e_k``, one per
step (or ``count`` of them for a step that needs a burst), whose keys are equal, whose times strictly
increase from step to step, and where ``t(e_k) - t(e_1) <= window``. Steps may live in different domains:
the key of a step is its own column (``user_id`` on a sign-in, ``user_id`` on a payment, ``src_ip`` on a
connection and on a sign-in...).

Streaming, with bounded state: each step keeps the events that matched its condition (key slot in an
:class:`~finsecure.features.entity_index.EntityIndex` and time, as NumPy arrays; the last step also its
rows, for the explanation) for ``window + late_s`` behind the latest time every domain has reached,
capped at ``max_rows`` per step. A batch only re-checks the keys it touched, in one numba pass that does
an as-of join per step (the latest possible start of the chain so far, carried forward as a running
maximum), so events may arrive out of order: a
late first step still completes a sequence whose last step was already seen. Each completing event
fires once, and by default each chain is reported once (see ``once_per_chain``).

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

import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.detection.conditions import ConditionError, compile_condition, condition_fields
from finsecure.event.schemas import Domain
from finsecure.features._numba import NONE_TS, kernel
from finsecure.features.entity_index import EntityIndex

__all__ = ["SequenceEvaluator", "SequenceSpec", "SequenceStep", "micros"]

_TS = pl.Datetime("us", "UTC")
_BASE_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "ts": _TS,
    "event_id": pl.String(),
    "fired": pl.Boolean(),
}

_NO_SLOTS = np.zeros(0, np.int64)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(ts: pl.Series) -> npt.NDArray[np.int64]:
    """Times as µs since 1970 (UTC), without a copy when they already are."""
    if ts.dtype != _TS:
        ts = ts.cast(_TS)
    return ts.to_numpy().view(np.int64) if not ts.null_count() else ts.to_physical().to_numpy()


def _micros(value: dt.datetime) -> int:
    """Microseconds since 1970 of a time (naive times are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


@kernel
def _touch(slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64], last_seen: npt.NDArray[np.int64]) -> None:
    """``last_seen`` of each key slot: its newest event time (so the index can evict idle keys)."""
    for i in range(len(slots)):
        if ts[i] > last_seen[slots[i]]:
            last_seen[slots[i]] = ts[i]


@kernel
def _chains(
    slot: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    start: npt.NDArray[np.int64],
) -> None:
    """For each event of the last step, the latest possible start of a chain ending at it (``NONE_TS``:
    none). Step ``s`` holds rows ``offsets[s]:offsets[s + 1]``, sorted by (slot, ts).

    Step 0 reaches its own time; an event of a later step reaches the best (latest) start among the
    previous step's events of its key strictly before it (a running maximum per key, found with one
    forward pointer: the as-of join); a step needing ``n`` events takes the reach of the event ``n - 1``
    places earlier for the same key.
    """
    steps = len(counts)
    prev_slot = np.empty(0, np.int64)
    prev_ts = np.empty(0, np.int64)
    prev_start = np.empty(0, np.int64)
    kept = 0
    for s in range(steps):
        a = offsets[s]
        n = offsets[s + 1] - a
        reach = np.empty(n, np.int64)
        if s == 0:
            for i in range(n):
                reach[i] = ts[a + i]
        else:
            j = 0
            for i in range(n):
                c = slot[a + i]
                t = ts[a + i]
                while j < kept and (prev_slot[j] < c or (prev_slot[j] == c and prev_ts[j] < t)):
                    j += 1
                reach[i] = prev_start[j - 1] if j > 0 and prev_slot[j - 1] == c else NONE_TS
        need = counts[s]
        if need > 1:
            shifted = np.empty(n, np.int64)
            group = 0
            for i in range(n):
                if i == 0 or slot[a + i] != slot[a + i - 1]:
                    group = i
                shifted[i] = reach[i - need + 1] if i - need + 1 >= group else NONE_TS
            reach = shifted
        if s == steps - 1:
            for i in range(n):
                start[i] = reach[i]
            return
        prev_slot = np.empty(n, np.int64)
        prev_ts = np.empty(n, np.int64)
        prev_start = np.empty(n, np.int64)
        kept = 0
        for i in range(n):
            if reach[i] == NONE_TS:
                continue
            c = slot[a + i]
            best = reach[i]
            if kept > 0 and prev_slot[kept - 1] == c and prev_start[kept - 1] > best:
                best = prev_start[kept - 1]
            prev_slot[kept] = c
            prev_ts[kept] = ts[a + i]
            prev_start[kept] = best
            kept += 1
        if kept == 0:
            for i in range(len(start)):
                start[i] = NONE_TS
            return


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
    once_per_chain
        Report a completion only when its chain started after the key's last reported completion (a
        second transfer, or the 51st read of a "50 reads" step, is the same story told once); with
        ``False`` every completing event is reported.
    """

    def __init__(
        self,
        spec: SequenceSpec,
        *,
        explain_columns: Mapping[str, pl.DataType] | None = None,
        late_s: int | None = None,
        max_rows: int = 200_000,
        once_per_chain: bool = True,
    ) -> None:
        self.spec = spec
        self.once_per_chain = once_per_chain
        self._reported: dict[str, int] = {}  # per key, the time (µs) of its last reported completion
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
        self._empty: pl.DataFrame | None = None
        self._keys = EntityIndex()
        self._slots: list[npt.NDArray[np.int64]] = []
        self._times: list[npt.NDArray[np.int64]] = []
        self._last = pl.DataFrame(schema=self._schemas[-1])
        self._fired: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)
        # per key slot: how many kept events each step has, and how many last-step events are not yet
        # reported (which keys could complete a chain, without searching the kept events)
        self._present: list[npt.NDArray[np.int64]] = []
        self._open: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._index_state([pl.DataFrame(schema=schema) for schema in self._schemas])
        self._latest: dict[Domain, Any] = {}  # latest event time seen per domain
        self._evicted: Any = None  # the watermark of the last eviction

    def steps_of(self, domain: Domain) -> list[int]:
        """Indexes of the steps whose events come from ``domain``."""
        return [i for i, step in enumerate(self.spec.steps) if step.domain == domain]

    def _candidates(
        self, index: int, frame: pl.DataFrame, mask: pl.Series | None
    ) -> tuple[pl.DataFrame | None, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The rows of ``frame`` that match step ``index``: their keys' slots and times (µs), and for
        the last step the rows themselves (state columns: only its events are ever reported)."""
        step = self.spec.steps[index]
        keep = mask if mask is not None else frame.select(step.expr.fill_null(False)).to_series()
        key = frame.get_column(step.by)
        if key.null_count():
            keep = keep & key.is_not_null()
        picked = np.flatnonzero(
            keep.to_numpy() if not keep.null_count() else keep.fill_null(False).to_numpy()
        )
        if not picked.size:
            return None, _NO_SLOTS, _NO_SLOTS
        times = micros(frame.get_column("ts"))[picked]
        if index < len(self.spec.steps) - 1:
            keys = pl.DataFrame([key])[picked].to_series()  # a frame's gather: no query plan
            return None, self._keys.lookup(keys if keys.dtype == pl.String else keys.cast(pl.String)), times
        sources = {"key": step.by, "ts": "ts", "event_id": "event_id"}
        sources |= {name: name for name in self._explain_types if name in frame.columns}
        names = list(dict.fromkeys(sources.values()))
        gathered = pl.DataFrame([frame.get_column(name) for name in names])[picked]
        columns = []
        for target, dtype in self._schemas[index].items():
            if target == "fired":
                columns.append(pl.Series("fired", np.zeros(len(picked), np.bool_)))
            elif target in sources:
                series = gathered.get_column(sources[target]).alias(target)
                columns.append(series if series.dtype == dtype else series.cast(dtype))
            else:
                columns.append(pl.Series(target, [None] * len(picked), dtype=dtype))
        rows = pl.DataFrame(columns)
        return rows, self._keys.lookup(rows.get_column("key")), times

    def update(
        self, domain: Domain, frame: pl.DataFrame, masks: Mapping[int, pl.Series] | None = None
    ) -> pl.DataFrame:
        """Take a batch of ``domain`` (with the columns the steps read) and return the sequences it
        completes: one row per completing event (``key``, ``ts``, ``event_id``, ``start``,
        ``elapsed_s`` and the explain columns). ``masks`` may give each step's condition, already
        evaluated on ``frame``."""
        self.advance(domain, frame.get_column("ts").max() if frame.height else None)
        fresh: dict[int, npt.NDArray[np.int64]] = {}
        last = len(self._slots) - 1
        for index in self.steps_of(domain):
            if masks is not None and index in masks and not masks[index].any():
                continue
            rows, slots, times = self._candidates(index, frame, (masks or {}).get(index))
            if not slots.size:
                continue
            fresh[index] = slots
            self._slots[index] = np.concatenate([self._slots[index], slots])
            self._times[index] = np.concatenate([self._times[index], times])
            _touch(slots, times, self._keys.last_seen)
            self._grow()
            np.add.at(self._present[index], slots, 1)
            if index == last and rows is not None:
                self._last = pl.concat([self._last, rows])
                self._fired = np.concatenate([self._fired, np.zeros(rows.height, np.bool_)])
                np.add.at(self._open, slots, 1)
        if not fresh:
            self._evict()
            return self._empty_result()
        # a chain can only complete for a key with events at every step and an unreported last one
        keys = np.unique(np.concatenate(list(fresh.values())))
        keys = keys[self._open[keys] > 0]
        for present in self._present[:last]:
            keys = keys[present[keys] > 0]
        result = self._complete(keys) if keys.size else self._empty_result()
        self._evict()
        return result

    def advance(self, domain: Domain, latest: Any) -> None:
        """Note that events of ``domain`` up to time ``latest`` have been seen (for eviction)."""
        if latest is not None and (domain not in self._latest or latest > self._latest[domain]):
            self._latest[domain] = latest

    def _empty_result(self) -> pl.DataFrame:
        if self._empty is not None:
            return self._empty
        schema = {
            "key": pl.String(),
            "ts": _TS,
            "event_id": pl.String(),
            "start": _TS,
            "elapsed_s": pl.Float64(),
        }
        schema.update(self._explain_types)
        empty = pl.DataFrame(schema=schema)
        self._empty = empty
        return empty

    def _complete(self, touched: npt.NDArray[np.int64]) -> pl.DataFrame:
        """Re-check the chains of the touched keys; fire (once) the last-step events that complete."""
        orders = []
        wanted = np.zeros(self._keys.capacity, np.bool_)
        wanted[touched] = True
        for slots, times in zip(self._slots, self._times, strict=True):
            chosen = np.flatnonzero(wanted[slots])
            orders.append(chosen[np.lexsort((times[chosen], slots[chosen]))])
        offsets = np.zeros(len(orders) + 1, np.int64)
        offsets[1:] = np.cumsum([len(order) for order in orders])
        last = len(orders) - 1
        start = np.empty(len(orders[last]), np.int64)
        _chains(
            np.concatenate([slots[order] for slots, order in zip(self._slots, orders, strict=True)]),
            np.concatenate([times[order] for times, order in zip(self._times, orders, strict=True)]),
            offsets,
            np.array([step.count for step in self.spec.steps], np.int64),
            start,
        )
        order = orders[last]
        ok = (start != NONE_TS) & ~self._fired[order]
        ok[ok] = self._times[last][order[ok]] - start[ok] <= self.spec.window_s * 1_000_000
        if not ok.any():
            return self._empty_result()
        rows = order[ok]
        self._fired[rows] = True
        np.subtract.at(self._open, self._slots[last][rows], 1)
        done: pl.DataFrame = (
            self._last[rows]
            .with_columns(start=pl.Series(start[ok], dtype=pl.Int64).cast(_TS))
            .sort("key", "ts", maintain_order=True)
        )
        if self.once_per_chain:
            done = self._first_of_chains(done)
            if done.height == 0:
                return self._empty_result()
        return done.select(
            "key",
            "ts",
            "event_id",
            "start",
            ((pl.col("ts") - pl.col("start")).dt.total_microseconds() / 1e6).alias("elapsed_s"),
            *self.explain_columns,
        ).unique(subset="event_id", keep="first", maintain_order=True)

    @property
    def watermark(self) -> Any:
        """The latest time every domain of the steps has reached (streams of different domains run at
        their own pace: one may be a whole batch behind another). ``None`` until each domain has been
        seen: until then only ``max_rows`` bounds the state."""
        domains = {step.domain for step in self.spec.steps}
        if not domains <= set(self._latest):
            return None
        return min(self._latest.values())

    def _first_of_chains(self, done: pl.DataFrame) -> pl.DataFrame:
        """Drop completions whose chain began before the key's last reported one ended (``done``: a few
        rows sorted by key and time)."""
        keys = done.get_column("key").to_list()
        times = micros(done.get_column("ts")).tolist()
        starts = micros(done.get_column("start")).tolist()
        first: dict[str, int] = {}
        keep: list[int] = []
        for row, (key, ts, start) in enumerate(zip(keys, times, starts, strict=True)):
            reported = self._reported.get(key)
            if reported is not None and start <= reported:
                continue
            began = first.setdefault(key, ts)
            if ts == began or start > began:
                keep.append(row)
        for row in keep:
            self._reported[keys[row]] = max(self._reported.get(keys[row], times[row]), times[row])
        return done[keep] if len(keep) < done.height else done

    def _evict(self) -> None:
        watermark = self.watermark
        over = any(len(times) > self.max_rows for times in self._times)
        step = dt.timedelta(seconds=max(60, self.spec.window_s // 20))
        if not over and (
            watermark is None or (self._evicted is not None and watermark < self._evicted + step)
        ):
            return  # evict in steps of a twentieth of the window, not on every batch
        self._evicted = watermark
        horizon: int | None = None
        if watermark is not None:
            horizon = _micros(watermark) - (self.spec.window_s + self.late_s) * 1_000_000
            self._reported = {k: t for k, t in self._reported.items() if t > horizon}
        last = len(self._times) - 1
        for index, times in enumerate(self._times):
            keep: npt.NDArray[np.intp] | None = None
            if horizon is not None and (times <= horizon).any():
                keep = np.flatnonzero(times > horizon)
            if (len(times) if keep is None else len(keep)) > self.max_rows:
                kept = np.arange(len(times)) if keep is None else keep
                keep = kept[np.argsort(times[kept], kind="stable")[-self.max_rows :]]
            if keep is None:
                continue
            self._slots[index] = self._slots[index][keep]
            self._times[index] = times[keep]
            if index == last:
                self._last = self._last[keep]
                self._fired = self._fired[keep]
        if horizon is not None:
            self._keys.evict(horizon + 1)  # keys whose every event is at or before the horizon
        self._count_present()

    def _index_state(self, states: Sequence[pl.DataFrame]) -> None:
        """Take kept events (one frame per step, state columns): key slots and times (µs) of every
        step as NumPy arrays (the chains are checked on these), and the last step's rows."""
        self._keys = EntityIndex()
        self._slots = [self._keys.lookup(state.get_column("key")) for state in states]
        self._times = [micros(state.get_column("ts")) for state in states]
        self._last = states[-1]
        self._fired = states[-1].get_column("fired").fill_null(False).to_numpy().astype(np.bool_)
        for slots, times in zip(self._slots, self._times, strict=True):
            _touch(slots, times, self._keys.last_seen)
        self._count_present()

    def _count_present(self) -> None:
        """Recount :attr:`_present` and :attr:`_open` from the kept events."""
        size = self._keys.capacity
        self._present = [np.bincount(slots, minlength=size).astype(np.int64) for slots in self._slots]
        last = len(self._slots) - 1
        self._open = np.bincount(self._slots[last][~self._fired], minlength=size).astype(np.int64)

    def _grow(self) -> None:
        """Make room in the per-slot counts for slots the key index has just added."""
        size = self._keys.capacity
        if len(self._open) >= size:
            return
        self._present = [np.concatenate([p, np.zeros(size - len(p), np.int64)]) for p in self._present]
        self._open = np.concatenate([self._open, np.zeros(size - len(self._open), np.int64)])

    def state_rows(self) -> int:
        """Events kept, all steps together."""
        return sum(len(times) for times in self._times)

    def snapshot(self) -> bytes:
        """Every step's kept events and the chains already reported (Arrow IPC, hex) as JSON bytes."""

        def ipc(frame: pl.DataFrame) -> str:
            buffer = io.BytesIO()
            frame.write_ipc(buffer)
            return buffer.getvalue().hex()

        steps = []
        for index, (slots, times) in enumerate(zip(self._slots, self._times, strict=True)):
            if index == len(self._times) - 1:
                steps.append(self._last.with_columns(fired=pl.Series(self._fired, dtype=pl.Boolean)))
                continue
            frame = pl.DataFrame(
                {
                    "key": self._keys.keys(slots) if len(slots) else [],
                    "ts": pl.Series(times, dtype=pl.Int64).cast(_TS),
                    "event_id": [None] * len(slots),  # only the last step's events are ever reported
                    "fired": np.zeros(len(slots), np.bool_),
                },
                schema=self._schemas[index],
            )
            steps.append(frame)
        reported = pl.DataFrame(
            {
                "key": list(self._reported),
                "reported": pl.Series(list(self._reported.values()), dtype=pl.Int64).cast(_TS),
            },
            schema={"key": pl.String(), "reported": _TS},
        )
        return json.dumps({"steps": [ipc(state) for state in steps], "reported": ipc(reported)}).encode()

    def restore(self, data: bytes) -> None:
        """Load what :meth:`snapshot` wrote (a rule whose number of steps changed starts afresh)."""
        saved = json.loads(data)
        parts: list[str] = saved.get("steps", []) if isinstance(saved, dict) else []
        if len(parts) != len(self.spec.steps):
            return
        states = []
        for index, part in enumerate(parts):
            state = pl.read_ipc(io.BytesIO(bytes.fromhex(part)))
            states.append(state.cast(self._schemas[index]).select(list(self._schemas[index])))  # type: ignore[arg-type]
        self._index_state(states)
        reported = pl.read_ipc(io.BytesIO(bytes.fromhex(saved["reported"])))
        self._reported = {}
        for key, when in zip(
            reported.get_column("key").to_list(),
            micros(reported.get_column("reported")).tolist(),
            strict=True,
        ):
            self._reported[key] = max(self._reported.get(key, when), when)
        self._latest = {}
        for step, times in zip(self.spec.steps, self._times, strict=True):
            if len(times):
                latest = _EPOCH + dt.timedelta(microseconds=int(times.max()))
                if step.domain not in self._latest or latest > self._latest[step.domain]:
                    self._latest[step.domain] = latest
