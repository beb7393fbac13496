"""Block-list and incident actions: block an entity for a while, open or attach to an incident."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from finsecure.alert.models import Alert
from finsecure.audit import service as audit_service
from finsecure.incident.models import Incident, IncidentAlert, IncidentStatus
from finsecure.response import blocklist
from finsecure.response.actions.base import WORKER_ACTOR, ActionContext, PermanentError, Responder

__all__ = ["AttachToIncident", "BlockEntity", "OpenIncident"]


def _entity(ctx: ActionContext) -> tuple[str, str]:
    """The entity to act on: ``params.entity_type``/``entity_id``, else the target's main entity."""
    entity_type, entity_id = ctx.params.get("entity_type"), ctx.params.get("entity_id")
    if entity_type is None and entity_id is None:
        main = ctx.payload.get("entity")
        if isinstance(main, list | tuple) and len(main) == 2:
            entity_type, entity_id = main
    if ctx.target_type == "entity" and entity_id is None:
        entity_type, _, entity_id = ctx.target_id.partition(":")
    if not isinstance(entity_type, str) or entity_type not in blocklist.BLOCKABLE or not entity_id:
        raise PermanentError(f"no blockable entity to act on (got {entity_type!r} {entity_id!r})")
    return entity_type, str(entity_id)


class BlockEntity(Responder):
    """Put the target's entity (a card, an account, an address...) on the block list for ``ttl_hours``."""

    action_type = "block"
    destructive = True

    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        entity_type, entity_id = _entity(ctx)
        hours = ctx.params.get("ttl_hours", 24)
        if not isinstance(hours, int | float) or hours <= 0:
            raise PermanentError(f"ttl_hours must be a positive number, not {hours!r}")
        reason = str(
            ctx.params.get("reason") or f"{ctx.target_type} {ctx.target_id}: {ctx.payload.get('title', '')}"
        )
        with ctx.session_factory() as session, session.begin():
            entry = blocklist.block(
                db_session=session,
                entity_type=entity_type,
                entity_id=entity_id,
                reason=reason[:2000],
                ttl=dt.timedelta(hours=float(hours)),
                actor=WORKER_ACTOR,
                action_id=ctx.action_id,
            )
            expires = entry.expires_at
        return {
            "entity_type": entity_type,
            "entity_id": entity_id,
            "expires_at": expires.isoformat() if expires else None,
        }

    def describe(self, ctx: ActionContext) -> str:
        try:
            entity_type, entity_id = _entity(ctx)
        except PermanentError as exc:
            return str(exc)
        return f"block {entity_type.removesuffix('_id')} {entity_id} for {ctx.params.get('ttl_hours', 24)} h"


class OpenIncident(Responder):
    """Make sure an alert sits in an incident: returns the one it is in, or opens one for it."""

    action_type = "open_incident"

    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        if ctx.alert_id is None:
            raise PermanentError("open_incident acts on alerts")
        with ctx.session_factory() as session, session.begin():
            existing = session.scalar(
                select(IncidentAlert.incident_id).where(IncidentAlert.alert_id == ctx.alert_id)
            )
            if existing is not None:
                return {"incident_id": existing, "opened": False}
            alert = session.get(Alert, ctx.alert_id)
            if alert is None:
                raise PermanentError(f"alert {ctx.alert_id} no longer exists")
            incident = Incident(
                title=alert.title, summary=alert.description, severity=alert.severity,
                status=IncidentStatus.new, risk=alert.score * 100, domains=[alert.domain], labels=[],
                evidence={},
                first_seen=alert.first_seen, last_seen=alert.last_seen,
            )  # fmt: skip
            session.add(incident)
            session.flush()
            session.add(IncidentAlert(incident_id=incident.id, alert_id=alert.id))
            audit_service.record(
                db_session=session, actor=WORKER_ACTOR, action="incident.open", target_type="incident",
                target_id=incident.id, after={"alert_id": alert.id, "action_id": ctx.action_id},
            )  # fmt: skip
            return {"incident_id": incident.id, "opened": True}


class AttachToIncident(Responder):
    """Add the target alert to incident ``params.incident_id``."""

    action_type = "attach_incident"

    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        incident_id = ctx.params.get("incident_id")
        if ctx.alert_id is None or not isinstance(incident_id, int):
            raise PermanentError("attach_incident needs an alert target and params.incident_id")
        with ctx.session_factory() as session, session.begin():
            incident = session.get(Incident, incident_id)
            if incident is None or incident.merged_into_id is not None:
                raise PermanentError(f"incident {incident_id} does not exist or was merged")
            linked = session.get(IncidentAlert, (incident_id, ctx.alert_id))
            if linked is None:
                session.add(IncidentAlert(incident_id=incident_id, alert_id=ctx.alert_id))
                audit_service.record(
                    db_session=session, actor=WORKER_ACTOR, action="incident.attach", target_type="incident",
                    target_id=incident_id, after={"alert_id": ctx.alert_id, "action_id": ctx.action_id},
                )  # fmt: skip
        return {"incident_id": incident_id, "attached": linked is None}
