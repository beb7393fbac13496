"""Per-entity event history for the sequence models: the last ``steps`` events of each entity, as a tensor.

The LSTM and the Transformer score an event together with its entity's previous events (a card's last
payments, a user's last sign-ins, cloud calls and payments). :class:`SequenceHistory` keeps, per entity,
a ring buffer of the feature vectors of its last ``steps - 1`` events, in NumPy arrays indexed by the
dense entity index of :class:`~finsecure.features.entity_index.EntityIndex`, and turns a batch into the
``(n, steps, features)`` float32 tensor of the model contract (:mod:`finsecure.ml.contract`): row ``i``
holds the entity's previous events oldest first, then event ``i`` itself as the last step; entities with
fewer events are zero-padded at the front. One numba kernel walks the batch; no Python loop over rows.
Memory: ``4 * (steps - 1) * features`` bytes per live entity (16 steps of 11 features: 660 bytes; a
million cards: 0.66 GB), bounded by the time-to-live eviction.

:class:`HistoryStep` is the pipeline step around it: it appends the tensor as one column
(``<key>__history``, Polars ``Array(Float32, (steps, features))``, shared with NumPy without a copy).
A consumer takes it out with :func:`pop_sequences` so it is never written to the lake.

Time rules (the feature step's, :mod:`finsecure.features.config`):

* **Processing order.** Batches in arrival order; inside a batch, rows stably sorted by ``ts``.
* **Out-of-order events.** A late event is appended after the events already recorded: the history is
  the order in which events were *processed*, never re-sorted back in time. Re-inserting a late event
  would change sequences that were already scored (a model's input would not be reproducible from the
  stream), and disorder is bounded by the pipeline's ``max_delay_s`` (seconds), small next to the hours
  or days a history of 16 events spans. The reference implementation in the tests states the same rule.
* **Time-to-live.** An entity whose newest event is more than ``ttl_s`` older than the current row
  starts a new, empty history. Times are clamped like the feature step's (never below ``watermark -
  max_delay_s``), so evicting entities idle for longer than ``ttl_s`` before that point changes nothing.
* **Null keys.** A row without an entity key gets a history of just itself.

Example
-------
>>> import datetime as dt
>>> frame = pl.DataFrame({
...     "ts": [dt.datetime(2024, 5, 1, 12, m, tzinfo=dt.UTC) for m in (0, 10, 20)],
...     "card_id": ["c1", "c1", "c2"],
...     "amount": [10.0, 30.0, 5.0],
... })
>>> history = SequenceHistory(HistorySpec(key="card_id", features=("amount",), steps=3))
>>> history.update(frame)[:, :, 0].tolist()
[[0.0, 0.0, 10.0], [0.0, 10.0, 30.0], [0.0, 0.0, 5.0]]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.features._numba import NONE_TS, kernel
from finsecure.features.entity_index import EntityIndex, load_arrays, save_arrays
from finsecure.features.step import event_times_us
from finsecure.pipeline.batch import Batch, Step

__all__ = ["HistorySpec", "HistoryStep", "SequenceHistory", "history_sequences", "pop_sequences"]

_US = 1_000_000
_SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class HistorySpec:
    """What a history holds.

    Attributes
    ----------
    key
        Entity key column (``card_id``, ``user_id``...).
    features
        Columns whose values form an event's vector (canonical or feature-step columns; booleans count
        as 0/1, null is NaN). A column a batch lacks is missing (NaN) for its rows: events of several
        domains share one history and each fills the features it has.
    steps
        Sequence length, the scored event included.
    domains
        Domains whose batches feed this history (others pass through); empty means all.
    domain_flags
        Append one 0/1 feature per domain in ``domains`` saying which domain the event came from.
    log_features
        Columns stored as ``log1p(max(x, 0))`` (amounts, byte counts): the sequence networks take their
        inputs without a log of their own, for speed.
    ttl_s
        An entity idle for longer starts a new history.
    max_delay_s
        Rows older than ``watermark - max_delay_s`` count as at that time (the feature step's rule).
    evict_every_s
        How often (in event time) entities idle for longer than ``ttl_s`` are dropped.
    """

    key: str
    features: tuple[str, ...]
    steps: int = 16
    domains: tuple[str, ...] = ()
    domain_flags: bool = False
    log_features: tuple[str, ...] = ()
    ttl_s: int = 30 * 86_400
    max_delay_s: int = 300
    evict_every_s: int = 3_600
    column: str = field(default="")

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("history: steps must be at least 1")
        if not self.features and not self.domain_flags:
            raise ValueError("history: no features")
        unknown = set(self.log_features) - set(self.features)
        if unknown:
            raise ValueError(f"history: log_features {sorted(unknown)} are not features")
        for domain in self.domains:
            Domain(domain)  # raises on a typo

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The last axis of the tensor: ``features``, then the domain flags."""
        flags = tuple(f"domain_is_{domain}" for domain in self.domains) if self.domain_flags else ()
        return self.features + flags

    @property
    def column_name(self) -> str:
        """The column :class:`HistoryStep` appends."""
        return self.column or f"{self.key}__history"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistorySpec:
        """The spec from ``json.loads(spec.fingerprint())``."""
        return cls(
            key=str(data["key"]),
            features=tuple(str(f) for f in data["features"]),
            steps=int(data.get("steps", 16)),
            domains=tuple(str(d) for d in data.get("domains", ())),
            domain_flags=bool(data.get("domain_flags", False)),
            log_features=tuple(str(f) for f in data.get("log_features", ())),
            ttl_s=int(data.get("ttl_s", 30 * 86_400)),
            max_delay_s=int(data.get("max_delay_s", 300)),
            evict_every_s=int(data.get("evict_every_s", 3_600)),
            column=str(data.get("column", "")),
        )

    def fingerprint(self) -> str:
        """The spec as canonical JSON (a snapshot only restores into the same spec)."""
        return json.dumps(asdict(self), sort_keys=True)


@kernel
def _histories(
    order: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    values: npt.NDArray[np.float32],
    ring: npt.NDArray[np.float32],
    head: npt.NDArray[np.int32],
    count: npt.NDArray[np.int32],
    last_seen: npt.NDArray[np.int64],
    ttl: int,
    out: npt.NDArray[np.float32],
) -> None:
    """Fill ``out`` (zeros on entry) row by row in ``order``, then record each row in its ring."""
    steps = out.shape[1]
    width = ring.shape[1]  # steps - 1 previous events
    features = values.shape[1]
    for k in range(len(order)):
        i = order[k]
        for f in range(features):
            out[i, steps - 1, f] = values[i, f]
        entity = idx[i]
        if entity < 0 or width == 0:
            continue
        t = times[i]
        seen = last_seen[entity]
        if seen == NONE_TS or t - seen > ttl:
            count[entity] = 0
            head[entity] = 0
        have = count[entity]
        h = head[entity]
        for j in range(have):  # the `have` newest events, oldest first
            src = h - have + j
            if src < 0:
                src += width
            for f in range(features):
                out[i, steps - 1 - have + j, f] = ring[entity, src, f]
        for f in range(features):
            ring[entity, h, f] = values[i, f]
        head[entity] = h + 1 if h + 1 < width else 0
        if have < width:
            count[entity] = have + 1
        if seen == NONE_TS or t > seen:
            last_seen[entity] = t


class SequenceHistory:
    """The state of one history (see the module docstring) and its batch update.

    Parameters
    ----------
    spec
        What to keep.
    """

    def __init__(self, spec: HistorySpec) -> None:
        self.spec = spec
        self.index = EntityIndex()
        width = spec.steps - 1
        n_features = len(spec.feature_names)
        self.ring = np.zeros((0, width, n_features), dtype=np.float32)
        self.head = np.zeros(0, dtype=np.int32)
        self.count = np.zeros(0, dtype=np.int32)
        self.watermark = NONE_TS
        self.last_evict = NONE_TS
        self._ensure(self.index.capacity)

    def __len__(self) -> int:
        """Entities with a live history."""
        return len(self.index)

    def nbytes(self) -> int:
        """Memory held by the history (bytes)."""
        return self.index.nbytes() + self.ring.nbytes + self.head.nbytes + self.count.nbytes

    def _ensure(self, capacity: int) -> None:
        if len(self.head) >= capacity:
            return
        size = max(capacity, 2 * len(self.head))
        ring = np.zeros((size, *self.ring.shape[1:]), dtype=np.float32)
        ring[: len(self.ring)] = self.ring
        self.ring = ring
        self.head = np.concatenate([self.head, np.zeros(size - len(self.head), np.int32)])
        self.count = np.concatenate([self.count, np.zeros(size - len(self.count), np.int32)])

    def values(
        self, frame: pl.DataFrame, domain: str | None = None, *, raw: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """The ``(n, features)`` float32 vectors of a frame's rows (NaN where missing; see :meth:`update`)."""
        spec = self.spec
        out = np.full((frame.height, len(spec.feature_names)), np.nan, dtype=np.float32)
        if raw is not None and raw.shape != (frame.height, len(spec.features)):
            raise ValueError(f"history: raw values of shape {raw.shape} for {frame.height} rows")
        for n, name in enumerate(spec.features):
            if raw is not None:
                column = raw[:, n].astype(np.float64)
            elif name in frame.columns:
                column = frame[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
            else:
                continue
            if name in spec.log_features:
                column = np.log1p(np.maximum(column, 0.0))
            out[:, n] = column  # rounded to float32 once, after the log
        if spec.domain_flags:
            for n, flag in enumerate(spec.domains):
                out[:, len(spec.features) + n] = 1.0 if domain == flag else 0.0
        return out

    def update(
        self, frame: pl.DataFrame, domain: str | None = None, *, raw: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """Record the frame's events and return their ``(n, steps, features)`` sequences (row order).

        Parameters
        ----------
        frame
            Needs ``ts`` and the key column (a frame without the key gives every row a history of just
            itself).
        domain
            The batch's domain, for the domain flags.
        raw
            The ``spec.features`` values, ``(n, len(spec.features))``, when the caller has them (for
            example from a model's design matrix); read from the frame's columns otherwise. The log of
            ``log_features`` and the domain flags are applied here either way.
        """
        spec = self.spec
        rows = frame.height
        values = self.values(frame, domain, raw=raw)
        out = np.zeros((rows, spec.steps, values.shape[1]), dtype=np.float32)
        if rows == 0:
            return out
        ts = event_times_us(frame)
        floor = self.watermark - spec.max_delay_s * _US if self.watermark != NONE_TS else NONE_TS
        times = np.maximum(ts, floor) if floor != NONE_TS else ts
        if floor != NONE_TS and (
            self.last_evict == NONE_TS or floor - self.last_evict >= spec.evict_every_s * _US
        ):
            # Every later row counts at `floor` or after, so an entity idle since before `floor - ttl`
            # would start afresh anyway: dropping it changes no result.
            self.index.evict(floor - spec.ttl_s * _US)
            self.last_evict = floor
        order = np.argsort(ts, kind="stable").astype(np.int64, copy=False)
        if spec.key in frame.columns:
            idx = self.index.lookup(frame[spec.key])
        else:
            idx = np.full(rows, -1, dtype=np.int64)
        self._ensure(self.index.capacity)
        _histories(
            order,
            idx,
            np.ascontiguousarray(times, dtype=np.int64),
            values,
            self.ring,
            self.head,
            self.count,
            self.index.last_seen,
            spec.ttl_s * _US,
            out,
        )
        self.watermark = max(self.watermark, int(ts.max()))
        return out

    def snapshot(self) -> bytes:
        """All state as ``.npz`` bytes (no pickle), for :meth:`restore`."""
        used = self.index.high_water
        arrays = {f"index/{k}": v for k, v in self.index.snapshot().items()}
        arrays["ring"] = self.ring[:used].copy()
        arrays["head"] = self.head[:used].copy()
        arrays["count"] = self.count[:used].copy()
        meta = {
            "version": _SNAPSHOT_VERSION,
            "spec": self.spec.fingerprint(),
            "watermark": self.watermark,
            "last_evict": self.last_evict,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return save_arrays(arrays)

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot` of a history with the same spec."""
        try:
            arrays = load_arrays(data)
            meta = json.loads(arrays.pop("meta").tobytes())
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"history: not a history snapshot ({exc})") from None
        if meta.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"history: snapshot version {meta.get('version')} is not supported")
        if meta.get("spec") != self.spec.fingerprint():
            raise ValueError("history: the snapshot was taken with a different history spec")
        self.index = EntityIndex.restore({k[6:]: v for k, v in arrays.items() if k.startswith("index/")})
        used = len(arrays["head"])
        self.ring = np.zeros((0, *self.ring.shape[1:]), dtype=np.float32)
        self.head = np.zeros(0, dtype=np.int32)
        self.count = np.zeros(0, dtype=np.int32)
        self._ensure(max(self.index.capacity, used))
        self.ring[:used] = arrays["ring"]
        self.head[:used] = arrays["head"]
        self.count[:used] = arrays["count"]
        self.watermark = int(meta["watermark"])
        self.last_evict = int(meta["last_evict"])


class HistoryStep(Step):
    """Appends each row's ``(steps, features)`` history as the column ``spec.column_name``.

    Parameters
    ----------
    spec
        What to keep; batches of other domains than ``spec.domains`` pass through unchanged.
    step_id
        Name of the step in its pipeline.

    Examples
    --------
    >>> import datetime as dt
    >>> frame = pl.DataFrame({
    ...     "ts": [dt.datetime(2024, 5, 1, 12, m, tzinfo=dt.UTC) for m in (0, 10)],
    ...     "card_id": ["c1", "c1"],
    ...     "amount": [10.0, 30.0],
    ... })
    >>> step = HistoryStep(HistorySpec(key="card_id", features=("amount",), steps=2, domains=("payment",)))
    >>> batch, sequences = pop_sequences(step.process(Batch(Domain.payment, frame, "doc")), step.spec)
    >>> sequences.shape, batch.frame.columns
    ((2, 2, 1), ['ts', 'card_id', 'amount'])
    """

    def __init__(self, spec: HistorySpec, *, step_id: str = "history") -> None:
        self.spec = spec
        self.step_id = step_id
        self.history = SequenceHistory(spec)

    def process(self, batch: Batch) -> Batch:
        """Record the batch's events and append their sequences."""
        if self.spec.domains and str(batch.domain) not in self.spec.domains:
            return batch
        sequences = self.history.update(batch.frame, str(batch.domain))
        column = pl.Series(self.spec.column_name, sequences)
        frame = batch.frame
        if column.name in frame.columns:
            frame = frame.drop(column.name)
        return batch.with_frame(frame.hstack([column]))

    def snapshot(self) -> bytes:
        """The history's state (see :meth:`SequenceHistory.snapshot`)."""
        return self.history.snapshot()

    def restore(self, data: bytes) -> None:
        """Load a :meth:`snapshot` (same spec only)."""
        self.history.restore(data)


def pop_sequences(batch: Batch, spec: HistorySpec) -> tuple[Batch, npt.NDArray[np.float32]]:
    """The batch without its history column, and that column as ``(n, steps, features)`` float32.

    Raises
    ------
    KeyError
        When the batch has no history column (it did not pass a :class:`HistoryStep` with ``spec``).
    """
    name = spec.column_name
    if name not in batch.frame.columns:
        raise KeyError(f"batch has no history column {name!r}")
    sequences = batch.frame[name].to_numpy()
    width = len(spec.feature_names)
    if batch.frame.height == 0:
        sequences = np.zeros((0, spec.steps, width), dtype=np.float32)
    return batch.with_frame(batch.frame.drop(name)), np.asarray(sequences, dtype=np.float32)


def history_sequences(
    frames: Sequence[tuple[str, pl.DataFrame]], spec: HistorySpec
) -> list[npt.NDArray[np.float32]]:
    """Sequences for a list of ``(domain, frame)`` batches fed in order to one fresh history (training).

    The same code path as serving (:class:`HistoryStep`), so a model trains on exactly what it will see.
    """
    history = SequenceHistory(spec)
    return [history.update(frame, domain) for domain, frame in frames]
