"""Analyst suppressions: "stop alerting on rule R for entity E until T".

A suppression names a rule, an entity, or both, and always expires. :class:`Suppressor` applies the active
ones to the rule hits of each batch inside :class:`~finsecure.alert.sink.AlertSink`, before anything is
stored: suppressed hits are counted (per suppression, flushed to the database now and then) and never
become alerts. It keeps the active list in memory and reloads it every few seconds, or at once when this
process created or removed one, so the pipeline never queries the database per batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
from sqlalchemy import ForeignKey, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from finsecure.alert.models import Alert
from finsecure.alert.schemas import SuppressionCreate, SuppressionSuggestion
from finsecure.audit import service as audit_service
from finsecure.audit.service import Actor
from finsecure.core.database import Base, BigIntPK, fetch_page, utcnow

__all__ = [
    "ActiveSuppression",
    "Suppression",
    "Suppressor",
    "bump_generation",
    "create",
    "delete",
    "get",
    "get_all",
    "suggestions",
]

logger = logging.getLogger(__name__)


class Suppression(Base):
    """One analyst suppression. ``rule_id`` and/or ``entity_id`` (with an optional ``entity_type``)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    rule_id: Mapped[str | None] = mapped_column(String(128))
    entity_type: Mapped[str | None] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    hits: Mapped[int] = mapped_column(Integer, default=0)
    last_hit_at: Mapped[dt.datetime | None]


_generation = 0
_generation_lock = threading.Lock()


def bump_generation() -> None:
    """Tell every :class:`Suppressor` of this process to reload (after a create or delete)."""
    global _generation
    with _generation_lock:
        _generation += 1


@dataclass(frozen=True, slots=True)
class ActiveSuppression:
    id: int
    rule_id: str | None
    entity_type: str | None
    entity_id: str | None
    expires_at: dt.datetime

    def covers(self, rule_id: str | None, entity_type: str | None, entity_id: str | None) -> bool:
        """Whether this suppression covers one (rule, entity) pair."""
        return (
            (self.rule_id is None or self.rule_id == rule_id)
            and (self.entity_type is None or self.entity_type == entity_type)
            and (self.entity_id is None or self.entity_id == entity_id)
        )

    def mask(self) -> pl.Expr:
        """True for the hits this suppression covers.

        >>> t = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
        >>> hits = pl.DataFrame({"rule_id": ["r1", "r1", "r2"], "entity_type": ["card_id"] * 3,
        ...                      "entity_id": ["c1", "c2", "c1"]})
        >>> hits.filter(ActiveSuppression(1, "r1", None, "c1", t).mask()).height
        1
        >>> hits.filter(ActiveSuppression(2, None, "card_id", "c1", t).mask()).height
        2
        """
        expr = pl.lit(True)
        if self.rule_id is not None:
            expr = expr & (pl.col("rule_id") == self.rule_id)
        if self.entity_type is not None:
            expr = expr & (pl.col("entity_type") == self.entity_type)
        if self.entity_id is not None:
            expr = expr & (pl.col("entity_id").cast(pl.String) == self.entity_id)
        return expr


class Suppressor:
    """Drops suppressed hits from a hits frame (see the module docstring).

    Parameters
    ----------
    session_factory
        For reloading the active suppressions and flushing hit counts.
    refresh_s
        Reload at least this often (also picks up suppressions made by other processes).
    clock
        Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_factory = session_factory
        self.refresh_s = refresh_s
        self.clock = clock
        self.active: list[ActiveSuppression] = []
        self.suppressed = 0
        """Hits suppressed since start."""
        self._pending: dict[int, int] = {}
        self._loaded_at: float | None = None
        self._generation = -1
        self._lock = threading.Lock()

    def _due(self) -> bool:
        return (
            self._loaded_at is None
            or self._generation != _generation
            or self.clock() - self._loaded_at >= self.refresh_s
        )

    def reload(self) -> None:
        """Flush pending hit counts and load the suppressions active now."""
        now = utcnow()
        generation = _generation
        with self.session_factory() as session, session.begin():
            for suppression_id, n in self._pending.items():
                session.execute(
                    update(Suppression)
                    .where(Suppression.id == suppression_id)
                    .values(hits=Suppression.hits + n, last_hit_at=now)
                )
            rows = session.execute(
                select(
                    Suppression.id, Suppression.rule_id, Suppression.entity_type, Suppression.entity_id,
                    Suppression.expires_at,
                ).where(Suppression.expires_at > now)
            ).all()  # fmt: skip
        self._pending = {}
        self.active = [ActiveSuppression(*row) for row in rows]
        self._loaded_at = self.clock()
        self._generation = generation

    def apply(self, hits: pl.DataFrame) -> pl.DataFrame:
        """``hits`` without the suppressed ones; a failed reload keeps the last list (logged)."""
        with self._lock:
            if self._due():
                try:
                    self.reload()
                except Exception:
                    self._loaded_at = self.clock()  # retry after refresh_s, not on every batch
                    logger.exception("could not reload alert suppressions; keeping the previous list")
            now = utcnow()
            active = [s for s in self.active if s.expires_at > now]
            if not active or hits.height == 0:
                return hits
            flags = hits.select([s.mask().alias(f"s{i}") for i, s in enumerate(active)])
            counts = flags.sum().row(0)
            covered = flags.select(pl.any_horizontal(pl.all())).to_series()
            for suppression, n in zip(active, counts, strict=True):
                if n:
                    self._pending[suppression.id] = self._pending.get(suppression.id, 0) + int(n)
            kept = hits.filter(~covered)
            self.suppressed += hits.height - kept.height
            return kept


def get(*, db_session: Session, suppression_id: int) -> Suppression | None:
    return db_session.get(Suppression, suppression_id)


def get_all(
    *, db_session: Session, offset: int, limit: int, include_expired: bool = False
) -> tuple[list[Suppression], int]:
    """Suppressions, soonest to expire first; only active ones unless ``include_expired``."""
    query = select(Suppression)
    if not include_expired:
        query = query.where(Suppression.expires_at > utcnow())
    return fetch_page(
        db_session, query, order_by=[Suppression.expires_at, Suppression.id], offset=offset, limit=limit
    )


def create(*, db_session: Session, suppression_in: SuppressionCreate, actor: Actor) -> Suppression:
    """Add a suppression (audited; committed); suppressors of this process pick it up at once."""
    now = utcnow()
    suppression = Suppression(
        rule_id=suppression_in.rule_id,
        entity_type=suppression_in.entity_type,
        entity_id=suppression_in.entity_id,
        reason=suppression_in.reason,
        created_by_id=actor.user_id,
        created_by=actor.label,
        created_at=now,
        expires_at=now + dt.timedelta(hours=suppression_in.expires_in_hours),
        hits=0,
    )
    db_session.add(suppression)
    db_session.flush()
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="suppression.create",
        target_type="suppression",
        target_id=suppression.id,
        after={
            "rule_id": suppression.rule_id,
            "entity_type": suppression.entity_type,
            "entity_id": suppression.entity_id,
            "expires_at": suppression.expires_at.isoformat(),
            "reason": suppression.reason,
        },
    )
    db_session.commit()
    bump_generation()
    return suppression


def delete(*, db_session: Session, suppression: Suppression, actor: Actor) -> None:
    """Remove a suppression (audited; committed): alerting resumes."""
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="suppression.delete",
        target_type="suppression",
        target_id=suppression.id,
        before={"rule_id": suppression.rule_id, "entity_id": suppression.entity_id, "hits": suppression.hits},
    )
    db_session.delete(suppression)
    db_session.commit()
    bump_generation()


def suggestions(
    *, db_session: Session, days: int = 30, min_incidents: int = 1, limit: int = 50
) -> list[SuppressionSuggestion]:
    """(rule, entity) pairs whose alerts sat in incidents resolved as false positive in the last ``days``,
    most often first, leaving out pairs an active suppression already covers."""
    from finsecure.incident.models import Disposition, Incident, IncidentAlert, IncidentStatus

    since = utcnow() - dt.timedelta(days=days)
    rows = db_session.execute(
        select(
            Alert.rule_id,
            Alert.entity_type,
            Alert.entity_id,
            func.count(func.distinct(Incident.id)),
            func.count(func.distinct(Alert.id)),
            func.max(Alert.last_seen),
        )
        .join(IncidentAlert, IncidentAlert.alert_id == Alert.id)
        .join(Incident, Incident.id == IncidentAlert.incident_id)
        .where(
            Incident.status == IncidentStatus.resolved,
            Incident.disposition == Disposition.false_positive,
            Incident.closed_at >= since,
            Alert.rule_id.is_not(None),
        )
        .group_by(Alert.rule_id, Alert.entity_type, Alert.entity_id)
        .having(func.count(func.distinct(Incident.id)) >= min_incidents)
        .order_by(func.count(func.distinct(Incident.id)).desc(), func.max(Alert.last_seen).desc())
        .limit(limit * 4)
    ).all()
    now = utcnow()
    active = [
        ActiveSuppression(s.id, s.rule_id, s.entity_type, s.entity_id, s.expires_at)
        for s in db_session.scalars(select(Suppression).where(Suppression.expires_at > now))
    ]
    out: list[SuppressionSuggestion] = []
    for rule_id, entity_type, entity_id, incidents, alerts, last_seen in rows:
        if any(s.covers(rule_id, entity_type, entity_id) for s in active):
            continue
        who = f"{entity_type.removesuffix('_id') if entity_type else 'entity'} {entity_id}"
        out.append(
            SuppressionSuggestion(
                rule_id=rule_id,
                entity_type=entity_type,
                entity_id=entity_id,
                false_positive_incidents=incidents,
                alerts=alerts,
                last_seen=last_seen,
                text=(
                    f"Rule {rule_id} on {who} was part of {incidents} incident"
                    f"{'s' if incidents != 1 else ''} closed as false positive; consider suppressing it."
                ),
            )
        )
        if len(out) >= limit:
            break
    return out
