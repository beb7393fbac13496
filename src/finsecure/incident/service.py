"""Reading incidents and the analyst workflow on them (every change audited with before/after)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, func, select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.audit import service as audit_service
from finsecure.audit.models import AuditEntry
from finsecure.audit.service import Actor
from finsecure.auth.models import User
from finsecure.core.database import fetch_page, utcnow
from finsecure.core.enums import Severity
from finsecure.core.errors import Conflict, Unprocessable
from finsecure.incident.models import Incident, IncidentAlert, IncidentStatus
from finsecure.incident.schemas import IncidentSort, IncidentUpdate, TimelineEntry

#: Where an incident may go from each status. Reopening a finished incident goes back to investigating.
TRANSITIONS: dict[IncidentStatus, frozenset[IncidentStatus]] = {
    IncidentStatus.open: frozenset(
        {
            IncidentStatus.investigating,
            IncidentStatus.contained,
            IncidentStatus.resolved,
            IncidentStatus.closed,
        }
    ),
    IncidentStatus.investigating: frozenset(
        {IncidentStatus.contained, IncidentStatus.resolved, IncidentStatus.closed}
    ),
    IncidentStatus.contained: frozenset({IncidentStatus.resolved, IncidentStatus.closed}),
    IncidentStatus.resolved: frozenset({IncidentStatus.closed, IncidentStatus.investigating}),
    IncidentStatus.closed: frozenset({IncidentStatus.investigating}),
}
FINISHED = frozenset({IncidentStatus.resolved, IncidentStatus.closed})


def get(*, db_session: Session, incident_id: int) -> Incident | None:
    return db_session.get(Incident, incident_id)


def get_all(
    *,
    db_session: Session,
    offset: int,
    limit: int,
    status: IncidentStatus | None = None,
    severity: Severity | None = None,
    assignee_id: int | None = None,
    domain: str | None = None,
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


def timeline(*, db_session: Session, incident_id: int, alerts: list[Alert]) -> list[TimelineEntry]:
    """Alerts as they were first seen and analysts' changes, in time order."""
    entries = [
        TimelineEntry(
            ts=a.first_seen,
            kind="alert",
            text=f"{a.title} ({a.severity.value}, {a.domain}): {a.description}".strip().removesuffix(":"),
            alert_id=a.id,
        )
        for a in alerts
    ]
    changes = db_session.scalars(
        select(AuditEntry)
        .where(AuditEntry.target_type == "incident", AuditEntry.target_id == str(incident_id))
        .order_by(AuditEntry.id)
        .limit(500)
    ).all()
    for change in changes:
        after = change.after or {}
        words = ", ".join(f"{k} → {v}" for k, v in after.items())
        entries.append(
            TimelineEntry(ts=change.ts, kind="change", text=f"{change.actor} set {words}", actor=change.actor)
        )
    return sorted(entries, key=lambda e: e.ts)


def _state(incident: Incident) -> dict[str, Any]:
    return {
        "status": incident.status.value,
        "disposition": incident.disposition.value if incident.disposition else None,
        "assignee_id": incident.assignee_id,
    }


def update(*, db_session: Session, incident: Incident, incident_in: IncidentUpdate, actor: Actor) -> Incident:
    """Apply an analyst's change, audited with before/after; the change is committed.

    Raises
    ------
    Conflict
        For a status move the workflow does not allow, or a change to a merged incident.
    Unprocessable
        For an unknown or disabled assignee, or finishing an incident without a disposition.
    """
    if incident.merged_into_id is not None:
        raise Conflict(
            f"This incident was merged into incident {incident.merged_into_id}; change that one",
            code="incident_merged",
        )
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
    db_session.commit()
    return incident
