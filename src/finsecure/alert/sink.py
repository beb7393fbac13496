"""From rule hits to alerts: :class:`AlertSink` turns the hits frame of a
:class:`~finsecure.detection.DetectionStep` into upserted ``alerts`` rows (and live incidents).

Hits of one rule about one entity within one time bucket become ONE alert whose ``alert_key`` is a stable
hash of (rule, entity type, entity id, bucket). The sink runs on the pipeline's worker thread, so it is
built to cost a few milliseconds per batch: grouping is done in Polars, the database sees three bulk
statements (select, insert, update) plus the correlation's, and a storm of hits from one rule is capped
per minute instead of slowing the pipeline down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import polars as pl
from sqlalchemy.orm import Session

from finsecure.alert import service as alert_service
from finsecure.detection.engine import DetectionStep
from finsecure.pipeline.batch import Batch

if TYPE_CHECKING:
    from finsecure.alert.suppression import Suppressor
    from finsecure.correlation.engine import Correlator

__all__ = [
    "ENTITY_COLUMNS",
    "AlertSink",
    "AlertWriteResult",
    "EntityDetectionStep",
    "alert_key",
    "group_hits",
]

logger = logging.getLogger(__name__)

#: Event columns copied next to each hit, so that alerts can be correlated on more than the rule's entity.
ENTITY_COLUMNS: tuple[str, ...] = (
    "user_id",
    "account_id",
    "card_id",
    "device_id",
    "src_ip",
    "merchant_id",
    "terminal_id",
    "payee_id",
    "country",
)
#: Prefix of those copied columns in the hits frame.
ENTITY_PREFIX = "ctx__"


def alert_key(rule_id: str, entity_type: str, entity_id: str | None, bucket_s: int) -> str:
    """The stable key of the alert for one rule, one entity and one time bucket (epoch seconds).

    >>> alert_key("r1", "card_id", "c1", 1_700_000_000)
    '6d32aca1042756fb1c4f6ec20903655b201cc245776db56c'
    """
    text = f"{rule_id}|{entity_type}|{entity_id or ''}|{bucket_s}"
    return hashlib.blake2b(text.encode(), digest_size=24).hexdigest()


def group_hits(hits: pl.DataFrame, *, bucket_s: int) -> pl.DataFrame:
    """One row per (rule, entity, bucket): counts, first/last time, the first event ids and the context.

    Hits repeated within the frame (same rule and event) count once.
    """
    context = [c for c in hits.columns if c.startswith(ENTITY_PREFIX)]
    bucket = pl.col("ts").dt.truncate(f"{bucket_s}s")
    grouped = (
        hits.unique(subset=["rule_id", "event_id"], keep="first", maintain_order=True)
        .sort("ts")
        .with_columns(bucket=bucket)
        .group_by(["rule_id", "entity_type", "entity_id", "bucket"], maintain_order=True)
        .agg(
            pl.col("rule_title").first(),
            pl.col("domain").first(),
            pl.col("severity").first(),
            pl.col("explanation").first(),
            pl.col("explanation").last().alias("last_explanation"),
            pl.len().alias("count"),
            pl.col("ts").min().alias("first_seen"),
            pl.col("ts").max().alias("last_seen"),
            pl.col("event_id").alias("event_ids"),  # all of them: replays are recognised by event id
            pl.col("ts").alias("event_ts"),
            *[pl.col(c).drop_nulls().unique(maintain_order=True).head(8).alias(c) for c in context],
        )
    )
    keys = [
        alert_key(r, t, e, int(b.timestamp()))
        for r, t, e, b in grouped.select("rule_id", "entity_type", "entity_id", "bucket").iter_rows()
    ]
    return grouped.with_columns(pl.Series("alert_key", keys, dtype=pl.String))


@dataclass
class AlertWriteResult:
    """What one call of :meth:`AlertSink.write` did."""

    hits: int = 0
    dropped: int = 0
    suppressed: int = 0
    inserted: int = 0
    updated: int = 0
    alert_ids: list[int] = field(default_factory=list)
    incident_ids: list[int] = field(default_factory=list)


class AlertSink:
    """Callback for :class:`~finsecure.detection.DetectionStep`: upsert alerts, then correlate them.

    Parameters
    ----------
    session_factory
        Makes a database session; each call commits one transaction (alerts and incidents together).
    correlator
        Joins alerts into incidents in the same transaction; ``None`` for alerts only.
    bucket_s
        Hits of one rule about one entity within this many seconds (aligned buckets) make one alert.
    max_event_ids
        How many event ids an alert keeps as evidence (the count goes on beyond).
    storm_cap_per_minute
        Hits kept per rule per minute; the rest are counted in :attr:`dropped` and logged, never queued.
    clock
        Monotonic seconds (tests pass a fake).
    storm_clock
        Which minute the storm cap counts in: ``"wall"`` (the clock's) or ``"event"`` (the minute of each
        hit's event time). Live they agree; a replay or backfill runs days in minutes, and a wall-clock cap
        would drop hits that would never have been dropped live (and lose them from the alerts' evidence),
        so the platform counts in event time. Grouping into alerts bounds the database work either way.
    suppressor
        Drops hits covered by analysts' suppressions before they are stored (counted in ``suppressed``).
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        correlator: Correlator | None = None,
        bucket_s: int = 3600,
        max_event_ids: int = 50,
        storm_cap_per_minute: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        suppressor: Suppressor | None = None,
        storm_clock: Literal["wall", "event"] = "wall",
    ) -> None:
        self.session_factory = session_factory
        self.suppressor = suppressor
        self.correlator = correlator
        self.bucket_s = bucket_s
        self.max_event_ids = max_event_ids
        self.storm_cap_per_minute = storm_cap_per_minute
        self.clock = clock
        self.storm_clock = storm_clock
        self.dropped: dict[str, int] = {}
        self.errors = 0
        self.calls = 0
        self.total_cost_s = 0.0
        self.max_cost_s = 0.0
        self._minute = -1
        self._used: dict[str, int] = {}
        self._used_at: dict[tuple[str, int], int] = {}  # (rule, event minute) -> hits kept
        self._lock = threading.Lock()
        #: Told what each successful write did (e.g. the dashboard's live feed); must not block.
        self.listeners: list[Callable[[AlertWriteResult], None]] = []

    def __call__(self, hits: pl.DataFrame) -> None:
        """Write ``hits``; a failure is logged and counted, never raised into the pipeline."""
        try:
            self.deliver(hits)
        except Exception:
            self.errors += 1
            logger.exception("could not store %d rule hits as alerts", hits.height)

    def deliver(self, hits: pl.DataFrame) -> AlertWriteResult:
        """:meth:`write`, then tell the listeners; raises what :meth:`write` raises (the platform's
        database outbox retries it when the database is away)."""
        try:
            result = self.write(hits)
        except Exception:
            if self.correlator is not None:
                self.correlator.reset()  # a failed commit may leave it naming rows that are rolled back
            raise
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception:
                logger.exception("an alert listener failed")
        return result

    def _cap_event_time(self, hits: pl.DataFrame) -> pl.DataFrame:
        """Keep at most ``storm_cap_per_minute`` hits per rule and minute of event time."""
        minute = (pl.col("ts").dt.epoch("s") // 60).alias("minute")
        per = hits.group_by("rule_id", minute).len()
        budgets = {
            (r, m): self.storm_cap_per_minute - self._used_at.get((r, m), 0) for r, m, _ in per.iter_rows()
        }
        for rule_id, m, n in per.iter_rows():
            self._used_at[(rule_id, m)] = self._used_at.get((rule_id, m), 0) + n
        newest = max(m for _, m in budgets)
        if len(self._used_at) > 10_000:  # forget minutes an hour behind the newest
            self._used_at = {k: v for k, v in self._used_at.items() if k[1] >= newest - 60}
        if all(budgets[(r, m)] >= n for r, m, n in per.iter_rows()):
            return hits
        budget = pl.Series("budget", [budgets[(r, m)] for r, m, _ in per.iter_rows()], dtype=pl.Int64)
        kept = (
            hits.with_columns(minute)
            .join(per.select("rule_id", "minute").with_columns(budget), on=["rule_id", "minute"], how="left")
            .filter(pl.int_range(pl.len()).over("rule_id", "minute") < pl.col("budget"))
            .drop("minute", "budget")
        )
        for rule_id, m, n in per.iter_rows():
            over = n - max(budgets[(rule_id, m)], 0)
            if over > 0:
                first = rule_id not in self.dropped
                self.dropped[rule_id] = self.dropped.get(rule_id, 0) + over
                if first or budgets[(rule_id, m)] > 0:
                    logger.warning(
                        "rule %s fired more than %d times in one minute of events: %d hits dropped so far",
                        rule_id,
                        self.storm_cap_per_minute,
                        self.dropped[rule_id],
                    )
        return kept

    def _cap(self, hits: pl.DataFrame) -> pl.DataFrame:
        """Keep at most ``storm_cap_per_minute`` hits per rule in the current minute."""
        if self.storm_clock == "event":
            return self._cap_event_time(hits)
        minute = int(self.clock() // 60)
        if minute != self._minute:
            self._minute, self._used = minute, {}
        per_rule = hits.group_by("rule_id").len()
        budgets = {r: self.storm_cap_per_minute - self._used.get(r, 0) for r in per_rule["rule_id"]}
        for rule_id, n in per_rule.iter_rows():
            self._used[rule_id] = self._used.get(rule_id, 0) + n
        if all(budgets[r] >= n for r, n in per_rule.iter_rows()):
            return hits
        budget = pl.col("rule_id").replace_strict(budgets, return_dtype=pl.Int64)
        kept = hits.filter(pl.int_range(pl.len()).over("rule_id") < budget)
        for rule_id, n in per_rule.iter_rows():
            over = n - max(budgets[rule_id], 0)
            if over > 0:
                first = rule_id not in self.dropped
                self.dropped[rule_id] = self.dropped.get(rule_id, 0) + over
                if first or budgets[rule_id] > 0:  # log once per rule and minute, not once per batch
                    logger.warning(
                        "rule %s fired more than %d times this minute: %d hits dropped so far",
                        rule_id,
                        self.storm_cap_per_minute,
                        self.dropped[rule_id],
                    )
        return kept

    def write(self, hits: pl.DataFrame) -> AlertWriteResult:
        """Upsert the alerts of ``hits`` (:data:`~finsecure.detection.HITS_SCHEMA`, plus optional
        ``ctx__*`` context columns) and correlate them, in one transaction."""
        started = time.perf_counter()
        result = AlertWriteResult(hits=hits.height)
        if hits.height == 0:
            return result
        with self._lock:  # one writer at a time: the correlator's state is not shared across threads
            kept = hits
            if self.suppressor is not None:  # before the storm cap: suppressed hits use no budget
                kept = self.suppressor.apply(hits)
                result.suppressed = hits.height - kept.height
            capped = self._cap(kept) if kept.height else kept
            result.dropped = kept.height - capped.height
            kept = capped
            if kept.height == 0:
                return result
            groups = group_hits(kept, bucket_s=self.bucket_s)
            with self.session_factory() as session, session.begin():
                upsert = alert_service.upsert_groups(
                    db_session=session, groups=groups, max_event_ids=self.max_event_ids
                )
                result.inserted, result.updated = upsert.inserted, upsert.updated
                result.alert_ids = [a.id for a in upsert.alerts]
                if self.correlator is not None and upsert.alerts:
                    try:
                        result.incident_ids = self.correlator.process(
                            db_session=session, alerts=upsert.alerts
                        )
                    except Exception:
                        self.correlator.reset()  # its memory may name rows that are rolled back
                        raise
        cost = time.perf_counter() - started
        self.calls += 1
        self.total_cost_s += cost
        self.max_cost_s = max(self.max_cost_s, cost)
        return result


class EntityDetectionStep(DetectionStep):
    """A :class:`~finsecure.detection.DetectionStep` whose hits also carry the event's entity columns
    (``ctx__user_id``, ``ctx__device_id``...), so that alerts can be correlated across domains."""

    def process(self, batch: Batch) -> Batch:
        """Run the rules, add the context of the events that fired, pass the batch on unchanged."""
        hits = self.rules.evaluate(batch)
        if hits.height:
            self.on_hits(with_context(hits, batch.frame))
        return batch


def with_context(hits: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    """``hits`` joined with the entity columns of their events (only hits: a few rows)."""
    present = [c for c in ENTITY_COLUMNS if c in frame.columns]
    if not present or "event_id" not in frame.columns:
        return hits
    fired = frame.filter(pl.col("event_id").is_in(hits.get_column("event_id").unique().implode()))
    context = fired.select(
        "event_id", *[pl.col(c).cast(pl.String).alias(ENTITY_PREFIX + c) for c in present]
    ).unique(subset="event_id", keep="first")  # the events that fired first, the casts on them only
    return hits.join(context, on="event_id", how="left")


def context_of(row: Mapping[str, object]) -> dict[str, list[str]]:
    """The ``ctx__*`` values of a grouped row, as ``{column: [values]}`` without empties."""
    out: dict[str, list[str]] = {}
    for name, value in row.items():
        if name.startswith(ENTITY_PREFIX) and isinstance(value, list) and value:
            out[name.removeprefix(ENTITY_PREFIX)] = [str(v) for v in value]
    return out
