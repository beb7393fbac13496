"""Reading incidents and the analyst workflow on them: status, assignment, labels, notes, merge, split,
bulk changes and the evidence bundle. Every change is audited with before/after and committed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Text, delete, func, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.alert.schemas import AlertRead
from finsecure.audit import service as audit_service
from finsecure.audit.models import AuditEntry
from finsecure.audit.service import Actor
from finsecure.auth.models import User
from finsecure.core.database import fetch_page, utcnow
from finsecure.core.enums import Severity
from finsecure.core.errors import AppError, Conflict, NotFound, Unprocessable
from finsecure.event.models import StoredEvent
from finsecure.incident.models import Disposition, Incident, IncidentAlert, IncidentNote, IncidentStatus
from finsecure.incident.schemas import (
    BulkFailure,
    BulkResult,
    BulkUpdate,
    IncidentExport,
    IncidentRead,
    IncidentSort,
    IncidentUpdate,
    NoteRead,
    TimelineEntry,
)
from finsecure.response.models import ResponseAction

#: Where an incident may go from each status. Reopening a resolved incident goes back to investigating.
TRANSITIONS: dict[IncidentStatus, frozenset[IncidentStatus]] = {
    IncidentStatus.new: frozenset(
        {IncidentStatus.triaged, IncidentStatus.investigating, IncidentStatus.resolved}
    ),
    IncidentStatus.triaged: frozenset({IncidentStatus.investigating, IncidentStatus.resolved}),
    IncidentStatus.investigating: frozenset({IncidentStatus.triaged, IncidentStatus.resolved}),
    IncidentStatus.resolved: frozenset({IncidentStatus.investigating}),
}
FINISHED = frozenset({IncidentStatus.resolved})
#: Most events and audit entries a timeline or an export reads.
MAX_TIMELINE_ROWS = 500


def get(*, db_session: Session, incident_id: int) -> Incident | None:
    return db_session.get(Incident, incident_id)


def get_or_raise(*, db_session: Session, incident_id: int) -> Incident:
    incident = db_session.get(Incident, incident_id)
    if incident is None:
        raise NotFound("There is no incident with that id")
    return incident


def get_all(
    *,
    db_session: Session,
    offset: int,
    limit: int,
    status: IncidentStatus | None = None,
    severity: Severity | None = None,
    assignee_id: int | None = None,
    domain: str | None = None,
    label: str | None = None,
    include_merged: bool = False,
    sort: IncidentSort = "-last_seen",
) -> tuple[list[Incident], int]:
    """Incidents matching every filter, ordered by ``sort``; merged ones are left out unless asked for."""
    query = select(Incident)
    if status is not None:
        query = query.where(Incident.status == status)
    if severity is not None:
        query = query.where(Incident.severity == severity)
    if assignee_id is not None:
        query = query.where(Incident.assignee_id == assignee_id)
    if not include_merged:
        query = query.where(Incident.merged_into_id.is_(None))
    if domain is not None:
        # domains is a short JSON list; matching its text works on both backends without a JSON operator
        query = query.where(func.lower(Incident.domains.cast(Text())).contains(f'"{domain.lower()}"'))
    if label is not None:
        query = query.where(Incident.labels.cast(Text()).contains(json.dumps(label)))
    column: Any = {
        "last_seen": Incident.last_seen,
        "created_at": Incident.created_at,
        "risk": Incident.risk,
    }[sort.lstrip("-")]
    order = column.desc() if sort.startswith("-") else column.asc()
    return fetch_page(db_session, query, order_by=[order, Incident.id.desc()], offset=offset, limit=limit)


def alerts_of(*, db_session: Session, incident_id: int) -> list[Alert]:
    """The incident's alerts, oldest first."""
    rows = db_session.scalars(
        select(Alert)
        .join(IncidentAlert, IncidentAlert.alert_id == Alert.id)
        .where(IncidentAlert.incident_id == incident_id)
        .order_by(Alert.first_seen, Alert.id)
    ).all()
    return list(rows)


def notes_of(*, db_session: Session, incident_id: int) -> list[IncidentNote]:
    """The incident's notes, oldest first."""
    return list(
        db_session.scalars(
            select(IncidentNote).where(IncidentNote.incident_id == incident_id).order_by(IncidentNote.id)
        ).all()
    )


def actions_of(*, db_session: Session, incident_id: int) -> list[ResponseAction]:
    return list(
        db_session.scalars(
            select(ResponseAction)
            .where(ResponseAction.incident_id == incident_id)
            .order_by(ResponseAction.id)
            .limit(MAX_TIMELINE_ROWS)
        ).all()
    )


def events_of(*, db_session: Session, alerts: Sequence[Alert]) -> list[StoredEvent]:
    """The stored (scored) events the alerts name, oldest first; raw events stay in the lake."""
    ids = list(dict.fromkeys(str(e) for a in alerts for e in (a.event_ids or ())))[:MAX_TIMELINE_ROWS]
    if not ids:
        return []
    return list(
        db_session.scalars(
            select(StoredEvent).where(StoredEvent.event_id.in_(ids)).order_by(StoredEvent.ts)
        ).all()
    )


def _describe_change(after: dict[str, Any]) -> str:
    return ", ".join(f"{k} → {v}" for k, v in after.items())


def timeline(
    *,
    db_session: Session,
    incident_id: int,
    alerts: list[Alert],
    notes: Sequence[IncidentNote] | None = None,
    actions: Sequence[ResponseAction] | None = None,
    events: Sequence[StoredEvent] | None = None,
) -> list[TimelineEntry]:
    """Events, alerts as first seen, analysts' changes and notes and response actions, in time order."""
    entries = [
        TimelineEntry(
            ts=a.first_seen,
            kind="alert",
            text=f"{a.title} ({a.severity.value}, {a.domain}): {a.description}".strip().removesuffix(":"),
            alert_id=a.id,
        )
        for a in alerts
    ]
    for event in events if events is not None else events_of(db_session=db_session, alerts=alerts):
        who = event.user_id or event.card_id or event.account_id or event.src_ip or "unknown"
        where = f" in {event.country}" if event.country else ""
        entries.append(
            TimelineEntry(
                ts=event.ts,
                kind="event",
                text=f"{event.domain} event from {event.source} for {who}{where}",
                event_id=event.event_id,
            )
        )
    changes = db_session.scalars(
        select(AuditEntry)
        .where(
            AuditEntry.target_type == "incident",
            AuditEntry.target_id == str(incident_id),
            AuditEntry.action != "incident.note",
        )
        .order_by(AuditEntry.id)
        .limit(MAX_TIMELINE_ROWS)
    ).all()
    for change in changes:
        entries.append(
            TimelineEntry(
                ts=change.ts,
                kind="change",
                text=f"{change.actor} set {_describe_change(change.after or {})}",
                actor=change.actor,
            )
        )
    if notes is None:
        notes = notes_of(db_session=db_session, incident_id=incident_id)
    for note in notes:
        entries.append(TimelineEntry(ts=note.created_at, kind="note", text=note.text, actor=note.author))
    if actions is None:
        actions = actions_of(db_session=db_session, incident_id=incident_id)
    for action in actions:
        what = f"{action.action_type} on {action.target_type} {action.target_id}"
        entries.append(
            TimelineEntry(
                ts=action.completed_at or action.created_at,
                kind="action",
                text=f"{what}: {action.status.value}",
                action_id=action.id,
            )
        )
    return sorted(entries, key=lambda e: e.ts)


def _state(incident: Incident) -> dict[str, Any]:
    return {
        "status": incident.status.value,
        "disposition": incident.disposition.value if incident.disposition else None,
        "assignee_id": incident.assignee_id,
        "labels": list(incident.labels or []),
    }


def _refuse_merged(incident: Incident) -> None:
    if incident.merged_into_id is not None:
        raise Conflict(
            f"This incident was merged into incident {incident.merged_into_id}; change that one",
            code="incident_merged",
        )


def _apply(db_session: Session, incident: Incident, incident_in: IncidentUpdate, actor: Actor) -> None:
    """The change of :func:`update`, without committing."""
    _refuse_merged(incident)
    before = _state(incident)
    if incident_in.unassign:
        incident.assignee_id = None
    elif incident_in.assignee_id is not None:
        user = db_session.get(User, incident_in.assignee_id)
        if user is None or user.disabled:
            raise Unprocessable("There is no active user with that id to assign", code="unknown_assignee")
        incident.assignee_id = user.id
    if incident_in.disposition is not None:
        incident.disposition = incident_in.disposition
    if incident_in.labels is not None:
        incident.labels = list(dict.fromkeys(incident_in.labels))
    target = incident_in.status
    if target is not None and target != incident.status:
        if target not in TRANSITIONS[incident.status]:
            raise Conflict(
                f"An incident that is {incident.status.value} cannot become {target.value}",
                code="invalid_transition",
            )
        if target in FINISHED and incident.disposition is None:
            raise Unprocessable(
                "Say what it was (disposition: true_positive, false_positive or benign) before "
                f"marking it {target.value}",
                code="disposition_required",
            )
        incident.status = target
        incident.closed_at = utcnow() if target in FINISHED else None
        if target not in FINISHED and incident_in.disposition is None:
            incident.disposition = None  # reopened: the old verdict no longer holds
    after = _state(incident)
    if after != before:
        incident.updated_at = utcnow()
        audit_service.record(
            db_session=db_session,
            actor=actor,
            action="incident.update",
            target_type="incident",
            target_id=incident.id,
            before={k: v for k, v in before.items() if after[k] != v},
            after={k: v for k, v in after.items() if before[k] != v},
        )


def update(*, db_session: Session, incident: Incident, incident_in: IncidentUpdate, actor: Actor) -> Incident:
    """Apply an analyst's change, audited with before/after; the change is committed.

    Raises
    ------
    Conflict
        For a status move the workflow does not allow, or a change to a merged incident.
    Unprocessable
        For an unknown or disabled assignee, or resolving an incident without a disposition.
    """
    try:
        _apply(db_session, incident, incident_in, actor)
    except AppError:
        db_session.rollback()
        raise
    db_session.commit()
    return incident


def bulk_update(*, db_session: Session, bulk_in: BulkUpdate, actor: Actor) -> BulkResult:
    """Apply one status change to many incidents; each succeeds or fails on its own (committed)."""
    result = BulkResult(updated=[], failed=[])
    change = IncidentUpdate(status=bulk_in.status, disposition=bulk_in.disposition)
    for incident_id in dict.fromkeys(bulk_in.incident_ids):
        incident = db_session.get(Incident, incident_id)
        if incident is None:
            result.failed.append(BulkFailure(id=incident_id, code="not_found", message="No such incident"))
            continue
        savepoint = db_session.begin_nested()
        try:
            _apply(db_session, incident, change, actor)
            savepoint.commit()
        except AppError as exc:
            savepoint.rollback()
            result.failed.append(BulkFailure(id=incident_id, code=exc.code, message=exc.message))
            continue
        result.updated.append(incident_id)
    db_session.commit()
    return result


def add_note(*, db_session: Session, incident: Incident, text: str, actor: Actor) -> IncidentNote:
    """Add an analyst's note (audited; committed)."""
    note = IncidentNote(incident_id=incident.id, author_id=actor.user_id, author=actor.label, text=text)
    db_session.add(note)
    db_session.flush()
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="incident.note",
        target_type="incident",
        target_id=incident.id,
        after={"note_id": note.id},
    )
    db_session.commit()
    return note


def _refresh(db_session: Session, incident_ids: Sequence[int]) -> None:
    from finsecure.correlation.engine import Correlator  # the correlation's summary of an incident

    db_session.flush()
    Correlator().refresh(db_session=db_session, incident_ids=incident_ids)
    for incident_id in incident_ids:
        incident = db_session.get(Incident, incident_id)
        if incident is not None:
            db_session.refresh(incident)


def merge(*, db_session: Session, incident: Incident, other_ids: Sequence[int], actor: Actor) -> Incident:
    """Move the alerts of ``other_ids`` into ``incident``; the others are marked merged (committed).

    Raises
    ------
    NotFound
        If one of the other incidents does not exist.
    Conflict
        If one of them is the incident itself or any of them was already merged.
    """
    _refuse_merged(incident)
    others = []
    for other_id in dict.fromkeys(other_ids):
        if other_id == incident.id:
            raise Conflict("An incident cannot be merged into itself", code="merge_into_self")
        other = db_session.get(Incident, other_id)
        if other is None:
            raise NotFound(f"There is no incident {other_id}")
        _refuse_merged(other)
        others.append(other)
    now = utcnow()
    for other in others:
        moved = db_session.scalars(
            select(IncidentAlert.alert_id).where(IncidentAlert.incident_id == other.id)
        ).all()
        db_session.execute(
            sql_update(IncidentAlert)
            .where(IncidentAlert.incident_id == other.id)
            .values(incident_id=incident.id)
        )
        db_session.execute(
            sql_update(ResponseAction)
            .where(ResponseAction.incident_id == other.id)
            .values(incident_id=incident.id)
        )
        before = _state(other)
        other.merged_into_id = incident.id
        other.status = IncidentStatus.resolved
        other.closed_at = now
        other.summary = f"Merged into incident {incident.id} by {actor.label}."
        audit_service.record(
            db_session=db_session,
            actor=actor,
            action="incident.merge",
            target_type="incident",
            target_id=other.id,
            before=before,
            after={"merged_into": incident.id},
        )
        audit_service.record(
            db_session=db_session,
            actor=actor,
            action="incident.merge",
            target_type="incident",
            target_id=incident.id,
            after={"merged_in": other.id, "alerts_moved": len(moved)},
        )
        incident.labels = list(dict.fromkeys([*(incident.labels or []), *(other.labels or [])]))
    _refresh(db_session, [incident.id])
    db_session.commit()
    return incident


def split(*, db_session: Session, incident: Incident, alert_ids: Sequence[int], actor: Actor) -> Incident:
    """Move ``alert_ids`` out of ``incident`` into a new incident, which is returned (committed).

    Raises
    ------
    Unprocessable
        If an alert is not in the incident, or the split would leave the incident empty.
    """
    _refuse_merged(incident)
    wanted = set(alert_ids)
    current = set(
        db_session.scalars(
            select(IncidentAlert.alert_id).where(IncidentAlert.incident_id == incident.id)
        ).all()
    )
    if not wanted <= current:
        missing = sorted(wanted - current)
        raise Unprocessable(f"Alerts {missing} are not in this incident", code="alert_not_in_incident")
    if wanted == current:
        raise Unprocessable(
            "Splitting off every alert would leave the incident empty; keep at least one",
            code="split_would_empty",
        )
    moved = db_session.scalars(select(Alert).where(Alert.id.in_(wanted))).all()
    first = min(a.first_seen for a in moved)
    new = Incident(
        title=f"Split from incident {incident.id}",
        summary="",
        severity=max((a.severity for a in moved), key=lambda s: list(Severity).index(s)),
        status=IncidentStatus.new,
        risk=0.0,
        domains=[],
        labels=[],
        evidence={},
        first_seen=first,
        last_seen=max(a.last_seen for a in moved),
    )
    db_session.add(new)
    db_session.flush()
    db_session.execute(
        delete(IncidentAlert).where(
            IncidentAlert.incident_id == incident.id, IncidentAlert.alert_id.in_(wanted)
        )
    )
    db_session.add_all(IncidentAlert(incident_id=new.id, alert_id=alert_id) for alert_id in sorted(wanted))
    for target, after in (
        (incident.id, {"split_into": new.id, "alerts_moved": sorted(wanted)}),
        (new.id, {"split_from": incident.id, "alerts": sorted(wanted)}),
    ):
        audit_service.record(
            db_session=db_session,
            actor=actor,
            action="incident.split",
            target_type="incident",
            target_id=target,
            after=after,
        )
    _refresh(db_session, [incident.id, new.id])
    db_session.commit()
    return new


def _action_dict(action: ResponseAction) -> dict[str, Any]:
    return {
        "id": action.id,
        "action_type": action.action_type,
        "target_type": action.target_type,
        "target_id": action.target_id,
        "status": action.status.value,
        "playbook_id": action.playbook_id,
        "attempts": action.attempts,
        "result": action.result,
        "error": action.error,
        "created_at": action.created_at.isoformat(),
        "completed_at": action.completed_at.isoformat() if action.completed_at else None,
    }


def _event_dict(event: StoredEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "ts": event.ts.isoformat(),
        "domain": event.domain,
        "source": event.source,
        "score": event.score,
        "explanation": event.explanation,
        "payload": event.payload,
    }


def export(*, db_session: Session, incident: Incident, actor: Actor) -> IncidentExport:
    """The evidence bundle of an incident, with a SHA-256 over its content (audited; committed)."""
    alerts = alerts_of(db_session=db_session, incident_id=incident.id)
    notes = notes_of(db_session=db_session, incident_id=incident.id)
    actions = actions_of(db_session=db_session, incident_id=incident.id)
    events = events_of(db_session=db_session, alerts=alerts)
    bundle = IncidentExport(
        generated_at=utcnow(),
        generated_by=actor.label,
        incident=IncidentRead.model_validate(incident),
        alerts=[AlertRead.model_validate(a) for a in alerts],
        events=[_event_dict(e) for e in events],
        notes=[NoteRead.model_validate(n) for n in notes],
        actions=[_action_dict(a) for a in actions],
        timeline=timeline(
            db_session=db_session,
            incident_id=incident.id,
            alerts=alerts,
            notes=notes,
            actions=actions,
            events=events,
        ),
        sha256="",
    )
    bundle.sha256 = bundle_digest(bundle)
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="incident.export",
        target_type="incident_export",
        target_id=incident.id,
        after={"sha256": bundle.sha256},
    )
    db_session.commit()
    return bundle


def bundle_digest(bundle: IncidentExport) -> str:
    """SHA-256 of the bundle's JSON (sorted keys, ``sha256`` left out): anyone can re-check it."""
    content = bundle.model_dump(mode="json", exclude={"sha256"})
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


__all__ = [
    "FINISHED",
    "TRANSITIONS",
    "Disposition",
    "add_note",
    "alerts_of",
    "bulk_update",
    "bundle_digest",
    "export",
    "get",
    "get_all",
    "get_or_raise",
    "merge",
    "split",
    "timeline",
    "update",
]
