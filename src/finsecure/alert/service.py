"""Storing and reading alerts. Writes from the pipeline are bulk upserts keyed by ``alert_key``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl
from sqlalchemy import ColumnElement, case, select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert, AlertStatus
from finsecure.alert.schemas import AlertExplanation, AlertSort, AlertUpdate, MatchedEvent
from finsecure.audit import service as audit_service
from finsecure.audit.service import Actor
from finsecure.core.database import fetch_page, utcnow
from finsecure.core.enums import Severity
from finsecure.core.errors import Conflict

#: Score of an alert from its rule's severity (the rules carry no score of their own).
SEVERITY_SCORE: dict[str, float] = {"low": 0.25, "medium": 0.5, "high": 0.75, "critical": 1.0}
#: Severity as a number, for ordering (the column holds text, whose order would be alphabetical).
SEVERITY_RANK: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}
_MAX_CONTEXT_VALUES = 8


@dataclass
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    alerts: list[Alert] = field(default_factory=list)
    """The alerts that were created or changed (unchanged ones, e.g. a replay, are left out)."""


def _insert_stmt(db_session: Session) -> Any:
    dialect = db_session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Alert).on_conflict_do_nothing(index_elements=["alert_key"])
    if dialect == "sqlite":
        return sqlite.insert(Alert).on_conflict_do_nothing(index_elements=["alert_key"])
    raise RuntimeError(f"alerts need SQLite or PostgreSQL, not {dialect}")  # pragma: no cover


def _context(row: dict[str, Any]) -> dict[str, list[str]]:
    from finsecure.alert.sink import context_of

    return context_of(row)


def _merge_context(old: dict[str, Any], new: dict[str, list[str]]) -> dict[str, list[str]]:
    merged = {k: [str(v) for v in vs] for k, vs in old.items() if isinstance(vs, list)}
    for name, values in new.items():
        current = merged.setdefault(name, [])
        for value in values:
            if value not in current and len(current) < _MAX_CONTEXT_VALUES:
                current.append(value)
    return merged


def upsert_groups(*, db_session: Session, groups: pl.DataFrame, max_event_ids: int) -> UpsertResult:
    """Insert new alerts and extend existing ones from grouped hits (see
    :func:`finsecure.alert.sink.group_hits`), in bulk statements; the caller commits.

    Replay-safe: an event already listed on its alert is not counted again; once the list is full
    (``max_event_ids``), only events newer than the alert's ``last_seen`` count.
    """
    result = UpsertResult()
    if groups.height == 0:
        return result
    keys = groups["alert_key"].to_list()
    existing = {
        row.alert_key: row
        for row in db_session.execute(
            select(
                Alert.id, Alert.alert_key, Alert.count, Alert.event_ids, Alert.first_seen, Alert.last_seen,
                Alert.explanation,
            ).where(Alert.alert_key.in_(keys))
        )
    }  # fmt: skip
    new_rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in groups.iter_rows(named=True):  # one row per alert, not per event
        context = _context(row)
        stored = existing.get(row["alert_key"])
        if stored is None:
            new_rows.append(
                {
                    "alert_key": row["alert_key"],
                    "rule_id": row["rule_id"],
                    "model_name": None,
                    "title": row["rule_title"][:256],
                    "description": row["explanation"] or "",
                    "severity": Severity(row["severity"]),
                    "status": AlertStatus.new,
                    "score": SEVERITY_SCORE.get(row["severity"], 0.0),
                    "domain": row["domain"],
                    "entity_type": row["entity_type"],
                    "entity_id": None if row["entity_id"] is None else str(row["entity_id"])[:128],
                    "event_ids": list(row["event_ids"][:max_event_ids]),
                    "explanation": {
                        "text": row["explanation"],
                        "latest": row["last_explanation"],
                        "entities": context,
                    },
                    "count": row["count"],
                    "first_seen": row["first_seen"],
                    "last_seen": row["last_seen"],
                }
            )
            continue
        listed = set(stored.event_ids or ())
        full = len(listed) >= max_event_ids
        fresh = [
            (event_id, ts)
            for event_id, ts in zip(row["event_ids"], row["event_ts"], strict=True)
            if event_id not in listed and (not full or ts > stored.last_seen)
        ]
        if not fresh:
            continue
        room = max_event_ids - len(stored.event_ids or ())
        explanation = dict(stored.explanation or {})
        explanation["latest"] = row["last_explanation"]
        explanation["entities"] = _merge_context(explanation.get("entities") or {}, context)
        updates.append(
            {
                "id": stored.id,
                "count": int(stored._mapping["count"]) + len(fresh),  # Row.count is a tuple method
                "event_ids": [*(stored.event_ids or ()), *[e for e, _ in fresh[: max(room, 0)]]],
                "first_seen": min(stored.first_seen, min(ts for _, ts in fresh)),
                "last_seen": max(stored.last_seen, max(ts for _, ts in fresh)),
                "explanation": explanation,
                "updated_at": utcnow(),
            }
        )
    if new_rows:
        # render_nulls: every row shares one statement (executemany) whatever its null pattern
        db_session.execute(_insert_stmt(db_session).execution_options(render_nulls=True), new_rows)
    if updates:
        db_session.execute(sql_update(Alert), updates)  # ORM bulk UPDATE by primary key: one executemany
    result.inserted, result.updated = len(new_rows), len(updates)
    touched = [r["alert_key"] for r in new_rows] + [k for k in keys if k in existing]
    updated_ids = {u["id"] for u in updates}
    if new_rows or updates:
        alerts = db_session.scalars(
            select(Alert).where(Alert.alert_key.in_(touched)).execution_options(populate_existing=True)
        ).all()
        result.alerts = [a for a in alerts if a.alert_key not in existing or a.id in updated_ids]
    return result


def get(*, db_session: Session, alert_id: int) -> Alert | None:
    return db_session.get(Alert, alert_id)


def severity_rank(column: Any) -> ColumnElement[int]:
    """An SQL expression ranking a severity column low=1 ... critical=4."""
    ranked: ColumnElement[int] = case(SEVERITY_RANK, value=column, else_=0)
    return ranked


def get_all(
    *,
    db_session: Session,
    offset: int,
    limit: int,
    status: AlertStatus | None = None,
    severity: Severity | None = None,
    rule_id: str | None = None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    domain: str | None = None,
    sort: AlertSort = "-last_seen",
) -> tuple[list[Alert], int]:
    """Alerts matching every filter given, ordered by ``sort``; returns the page and the total."""
    query = select(Alert)
    if status is not None:
        query = query.where(Alert.status == status)
    if severity is not None:
        query = query.where(Alert.severity == severity)
    if rule_id is not None:
        query = query.where(Alert.rule_id == rule_id)
    if entity_type is not None:
        query = query.where(Alert.entity_type == entity_type)
    if entity_id is not None:
        query = query.where(Alert.entity_id == entity_id)
    if domain is not None:
        query = query.where(Alert.domain == domain)
    column: Any = {
        "last_seen": Alert.last_seen,
        "first_seen": Alert.first_seen,
        "severity": severity_rank(Alert.severity),
        "count": Alert.count,
    }[sort.lstrip("-")]
    order = column.desc() if sort.startswith("-") else column.asc()
    return fetch_page(db_session, query, order_by=[order, Alert.id.desc()], offset=offset, limit=limit)


#: Which status an alert may move to from each status.
ALERT_TRANSITIONS: dict[AlertStatus, frozenset[AlertStatus]] = {
    AlertStatus.new: frozenset({AlertStatus.acknowledged, AlertStatus.closed}),
    AlertStatus.acknowledged: frozenset({AlertStatus.acknowledged, AlertStatus.closed}),
    AlertStatus.closed: frozenset({AlertStatus.closed}),
}


def update(*, db_session: Session, alert: Alert, alert_in: AlertUpdate, actor: Actor) -> Alert:
    """Acknowledge or close an alert, audited with before/after; the change is committed.

    Raises
    ------
    Conflict
        If the alert cannot move to that status (a closed alert stays closed).
    """
    target = AlertStatus(alert_in.status)
    if target not in ALERT_TRANSITIONS[alert.status]:
        raise Conflict(
            f"This alert is {alert.status.value} and cannot become {target.value}", code="invalid_transition"
        )
    before = {"status": alert.status.value}
    alert.status = target
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="alert.update",
        target_type="alert",
        target_id=alert.id,
        before=before,
        after={"status": target.value},
    )
    db_session.commit()
    return alert


def explain(*, db_session: Session, alert: Alert) -> AlertExplanation:
    """The alert's explanation with the stored events it names (features and model contributions)."""
    from finsecure.event.models import StoredEvent

    ids = [str(e) for e in (alert.event_ids or [])]
    events = (
        db_session.scalars(
            select(StoredEvent).where(StoredEvent.event_id.in_(ids)).order_by(StoredEvent.ts)
        ).all()
        if ids
        else []
    )
    matched = [
        MatchedEvent(
            event_id=e.event_id, ts=e.ts, domain=e.domain, source=e.source, score=e.score,
            model_explanation=e.explanation,
            features={k: v for k, v in (e.payload or {}).items() if "__" in k},
            fields={k: v for k, v in (e.payload or {}).items() if "__" not in k},
        )
        for e in events
    ]  # fmt: skip
    explanation = alert.explanation or {}
    kind = (alert.entity_type or "entity").removesuffix("_id")
    about = f" about {kind} {alert.entity_id}" if alert.entity_id else ""
    times = "once" if alert.count == 1 else f"{alert.count} times"
    span = (
        ""
        if alert.count == 1
        else f" between {alert.first_seen:%Y-%m-%d %H:%M} and {alert.last_seen:%H:%M} UTC"
    )
    summary = f"'{alert.title}' fired {times}{about}{span}."
    if explanation.get("text"):
        summary += f" {explanation['text']}"
    return AlertExplanation(
        alert_id=alert.id, rule_id=alert.rule_id, title=alert.title, severity=alert.severity, summary=summary,
        rule_hits=alert.count, first_text=explanation.get("text"), latest_text=explanation.get("latest"),
        entities=explanation.get("entities") or {}, matched_events=matched,
        events_not_stored=len(set(ids) - {m.event_id for m in matched}),
    )  # fmt: skip


__all__ = [
    "ALERT_TRANSITIONS",
    "SEVERITY_SCORE",
    "UpsertResult",
    "explain",
    "get",
    "get_all",
    "update",
    "upsert_groups",
]
