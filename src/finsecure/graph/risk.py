"""Propagated graph risk as a model input and as a term of incident risk.

Risk propagates from the entities already known to be bad (blocked, or confirmed as fraud by an analyst)
to their neighbours by personalised PageRank (:func:`~finsecure.graph.analytics.propagate_risk`): a card
used at the same terminals as confirmed-fraud cards, or a customer sharing a device with a blocked one,
gets a risk between 0 and 1 (known-bad entities themselves have 1).

* :class:`GraphRisk` keeps the latest propagated risk of the live graph, recomputed in the background
  (never on the event path), and looks it up for a whole batch at once: each entity column is mapped to
  dense node ids (a vectorised hash lookup) and read from the risk array.
* :class:`GraphRiskStep` adds the columns :data:`GRAPH_RISK_COLUMNS` to every batch, before the models
  score it; models trained with these columns use them.
* :func:`risk_history` computes the same columns for a labelled history without looking ahead: each
  day's (or hour's) events see only the graph of earlier ones, seeded with the frauds confirmed by then.
  Training data and evaluations use it.

Example
-------
>>> import datetime as dt
>>> from finsecure.graph.store import GraphStore
>>> store = GraphStore()
>>> _ = store.update("payment", pl.DataFrame({
...     "ts": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 3,
...     "card_id": ["bad", "c2", "c3"], "terminal_id": ["t1", "t1", "t9"], "amount": [5.0, 7.0, 1.0]}))
>>> _ = store.set_flags(["card_id:bad"], bad=True)
>>> risk = GraphRisk(store)
>>> _ = risk.refresh()
>>> batch = pl.DataFrame({"card_id": ["c2", "c3", "new"], "terminal_id": ["t1", "t9", None]})
>>> [round(v, 2) for v in risk.columns("payment", batch)["graph__card_risk"].to_list()]
[0.57, 0.0, 0.0]
>>> round(risk.entity_risk(["card_id:c2", "terminal_id:t9"]), 2)
0.57
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.graph.analytics import propagate_risk
from finsecure.graph.edges import ENTITY_TYPES, RELATIONS, entity_type_of
from finsecure.graph.store import GraphStore, split_node_key
from finsecure.pipeline.batch import Batch, Step

__all__ = [
    "GRAPH_RISK_COLUMNS",
    "SEED_COLUMNS",
    "GraphRisk",
    "GraphRiskStep",
    "describe",
    "graph_risk_sources",
    "risk_history",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: The columns each domain's events get (all between 0 and 1; 0 for entities the graph has not seen).
GRAPH_RISK_COLUMNS: Mapping[Domain, tuple[str, ...]] = types.MappingProxyType(
    {
        Domain.payment: ("graph__risk", "graph__card_risk", "graph__place_risk"),
        Domain.auth: ("graph__risk",),
        Domain.cloud: ("graph__risk",),
        Domain.network: ("graph__risk",),
    }
)

_DESCRIPTIONS: Mapping[str, str] = types.MappingProxyType(
    {
        "graph__risk": (
            "How close the event's riskiest entity sits, in the entity graph, to entities already confirmed "
            "as fraud or blocked (0 far or unknown, 1 confirmed itself)."
        ),
        "graph__card_risk": (
            "How close this card sits, in the entity graph, to cards and places already confirmed as fraud "
            "(0 far or unknown, 1 confirmed itself)."
        ),
        "graph__place_risk": (
            "How close this terminal or shop sits, in the entity graph, to cards already confirmed as fraud "
            "(0 far or unknown)."
        ),
    }
)


def describe(name: str) -> str | None:
    """Plain words for a graph risk column (``None`` for other names).

    >>> describe("graph__place_risk").split(",")[0]
    'How close this terminal or shop sits'
    """
    return _DESCRIPTIONS.get(name)


def graph_risk_sources(domain: Domain | str) -> dict[str, tuple[str, ...]]:
    """The entity columns each graph risk column of ``domain`` takes its maximum over.

    >>> graph_risk_sources("payment")["graph__place_risk"]
    ('terminal_id', 'merchant_id')
    """
    d = Domain(domain)
    every = tuple(dict.fromkeys(c for rel in RELATIONS[d] for c in (rel.src_column, rel.dst_column)))
    sources = {"graph__risk": every}
    if d == Domain.payment:
        sources["graph__card_risk"] = ("card_id",)
        sources["graph__place_risk"] = ("terminal_id", "merchant_id")
    return sources


@dataclass(frozen=True)
class _Propagated:
    risk: FloatArray
    epoch: int
    version: int
    built_at: float


class GraphRisk:
    """The live graph's propagated risk, kept fresh in the background and looked up per batch.

    Parameters
    ----------
    store
        The live graph (its known-bad marks seed the propagation).
    refresh_interval_s
        The risk is recomputed at most this often while the graph keeps changing (a personalised
        PageRank over the whole graph: about 3 s for a million links).
    """

    def __init__(self, store: GraphStore, *, refresh_interval_s: float = 30.0) -> None:
        self.store = store
        self.refresh_interval_s = refresh_interval_s
        self._state: _Propagated | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.refreshes = 0

    def refresh(self, *, max_age_s: float = 0.0) -> bool:
        """Recompute the risk now (on the calling thread) on a snapshot at most ``max_age_s`` old;
        ``False`` when nothing changed since the last computation."""
        snap = self.store.snapshot(max_age_s=max_age_s)
        state = self._state
        if state is not None and state.version == snap.version and state.epoch == snap.epoch:
            with self._lock:  # checked now: the next check waits another interval
                self._state = dataclasses.replace(state, built_at=time.monotonic())
            return False
        risk = propagate_risk(snap)
        with self._lock:
            self._state = _Propagated(risk, snap.epoch, snap.version, time.monotonic())
            self.refreshes += 1
        return True

    def refresh_in_background(self) -> None:
        """Start a recomputation on a daemon thread when the risk is stale and none is running."""
        state = self._state
        if state is not None and (
            time.monotonic() - state.built_at < self.refresh_interval_s
            or (state.version == self.store.version and state.epoch == self.store.epoch)
        ):
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._refresh_logged, name="finsecure-graph-risk", daemon=True
            )
            self._thread.start()

    def _refresh_logged(self) -> None:
        try:  # the API's snapshot is reused when recent enough: rebuilding one costs seconds on 1 M links
            self.refresh(max_age_s=self.refresh_interval_s)
        except Exception:  # the previous risk stays in use; the next batch tries again
            logger.exception("could not propagate graph risk")

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for a background recomputation to finish (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def node_risk(self, keys: pl.Series, entity_type: str) -> FloatArray:
        """The propagated risk of each key of one entity type (0 for unknown keys, nulls and new nodes)."""
        out = np.zeros(len(keys), np.float64)
        state = self._state
        if state is None or len(keys) == 0:
            return out
        ids, epoch = self.store.lookup_ids(keys, entity_type)
        if epoch != state.epoch:  # node ids changed (stale links evicted): wait for the next refresh
            return out
        known = np.flatnonzero((ids >= 0) & (ids < len(state.risk)))
        out[known] = state.risk[ids[known]]
        return out

    def columns(self, domain: Domain | str, frame: pl.DataFrame) -> pl.DataFrame:
        """The :data:`GRAPH_RISK_COLUMNS` of ``domain`` for every row of ``frame`` (``Float32``)."""
        d = Domain(domain)
        per_column: dict[str, FloatArray] = {}
        for column in {c for cols in graph_risk_sources(d).values() for c in cols}:
            if column in frame.columns:
                per_column[column] = self.node_risk(frame[column], entity_type_of(column))
        out: dict[str, FloatArray] = {}
        for name, sources in graph_risk_sources(d).items():
            values = np.zeros(frame.height, np.float64)
            for column in sources:
                if column in per_column:
                    values = np.maximum(values, per_column[column])
            out[name] = values
        return pl.DataFrame({name: out[name] for name in GRAPH_RISK_COLUMNS[d]}).cast(pl.Float32)

    def entity_risk(self, entities: Iterable[str]) -> float:
        """The highest propagated risk among entities named ``"<type>:<id>"`` (``src_ip`` and ``dst_ip``
        name addresses); 0 when none is known."""
        by_type: dict[str, list[str]] = {}
        for entity in entities:
            entity_type, key = split_node_key(entity)
            by_type.setdefault(entity_type_of(entity_type), []).append(key)
        best = 0.0
        for entity_type, keys in by_type.items():
            if entity_type in ENTITY_TYPES:
                risk = self.node_risk(pl.Series(keys, dtype=pl.String), entity_type)
                best = max(best, float(risk.max()) if len(risk) else 0.0)
        return best


class GraphRiskStep(Step):
    """Adds :data:`GRAPH_RISK_COLUMNS` to every batch (place it after the features, before scoring).

    The lookup is vectorised and never waits for a recomputation: a batch is scored with the latest
    propagated risk, which a background thread refreshes at most every ``refresh_interval_s``.
    """

    step_id = "graph_risk"

    def __init__(self, risk: GraphRisk) -> None:
        self.risk = risk

    def process(self, batch: Batch) -> Batch:
        self.risk.refresh_in_background()
        if batch.frame.height == 0:
            return batch
        columns = self.risk.columns(batch.domain, batch.frame)
        return Batch(
            domain=batch.domain,
            frame=batch.frame.with_columns(columns),
            source=batch.source,
            seq=batch.seq,
            arrived_ns=batch.arrived_ns,
        )


#: The entity column whose confirmed-bad events seed the propagation, per domain.
SEED_COLUMNS: Mapping[Domain, str] = types.MappingProxyType(
    {
        Domain.payment: "card_id",
        Domain.auth: "user_id",
        Domain.cloud: "principal_id",
        Domain.network: "src_ip",
    }
)


def risk_history(
    frame: pl.DataFrame,
    domain: Domain | str = Domain.payment,
    *,
    label: str = "label",
    seed_column: str | None = None,
    period_s: float = 86_400.0,
    delay_s: float = 0.0,
    window_s: float = 30 * 86_400.0,
) -> pl.DataFrame:
    """``frame`` with the :data:`GRAPH_RISK_COLUMNS` of ``domain``, computed without looking ahead.

    Events are taken one period at a time (whole UTC days by default). The events of a period starting at
    ``t`` are looked up in the graph of the events of the ``window_s`` before ``t`` (older links expire),
    after propagating from the ``seed_column`` entities (default :data:`SEED_COLUMNS`: cards for
    payments) of the bad events (``label`` = 1) that happened in the ``window_s`` before ``t - delay_s``:
    what had been confirmed by then. No event's own label, nor any later event, feeds its features.

    Rows keep their order. ``frame`` needs ``ts``, ``label`` and the entity columns.

    >>> import datetime as dt
    >>> day = lambda d: dt.datetime(2026, 1, d, tzinfo=dt.UTC)
    >>> f = pl.DataFrame({"ts": [day(1), day(1), day(2), day(2)], "card_id": ["bad", "c2", "c2", "c3"],
    ...     "terminal_id": ["t1", "t1", "t1", "t2"], "label": [1, 0, 0, 0]})
    >>> [round(v, 2) for v in risk_history(f)["graph__card_risk"].to_list()]  # c2 on day 2 only
    [0.0, 0.0, 0.57, 0.0]
    """
    d = Domain(domain)
    seed_column = SEED_COLUMNS[d] if seed_column is None else seed_column
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, pl.Float32).alias(c) for c in GRAPH_RISK_COLUMNS[d])
    period_us = max(1, int(period_s * 1e6))
    work = frame.with_row_index("__row").with_columns(pl.col("ts").dt.epoch("us").alias("__us"))
    work = work.with_columns((pl.col("__us") // period_us).alias("__period"))
    if seed_column in frame.columns:
        frauds = work.filter(pl.col(label) == 1).select(
            "__us", pl.col(seed_column).cast(pl.String).alias("__k")
        )
    else:
        frauds = pl.DataFrame(schema={"__us": pl.Int64, "__k": pl.String})
    store = GraphStore(ttl_s=window_s, rebuild_interval_s=0.0)
    risk = GraphRisk(store)
    parts: list[pl.DataFrame] = []
    window_us, delay_us = int(window_s * 1e6), int(delay_s * 1e6)
    seed_type = entity_type_of(seed_column)
    for (period,), rows in work.sort("__us").group_by(["__period"], maintain_order=True):
        start_us = int(period) * period_us
        known_until = start_us - delay_us
        seeds = frauds.filter((pl.col("__us") < known_until) & (pl.col("__us") >= known_until - window_us))
        store.evict(start_us)
        store.clear_flags()
        store.set_flags((f"{seed_type}:{k}" for k in seeds["__k"].unique().drop_nulls().to_list()), bad=True)
        risk.refresh()
        parts.append(pl.concat([rows.select("__row"), risk.columns(d, rows)], how="horizontal"))
        store.update(d, rows.drop("__row", "__us", "__period"))
    columns = pl.concat(parts).sort("__row").drop("__row")
    return pl.concat([frame, columns], how="horizontal")
