"""Response actions in the database: request (idempotent), approve, cancel, claim, finish. Every step is
in the audit log."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finsecure.audit import service as audit_service
from finsecure.audit.service import Actor
from finsecure.core.database import fetch_page, utcnow
from finsecure.core.errors import Conflict
from finsecure.response.models import FINAL_STATUSES, ActionStatus, ResponseAction

__all__ = [
    "approve",
    "cancel",
    "claim",
    "finish",
    "get",
    "get_all",
    "idempotency_key",
    "request_action",
]


def idempotency_key(*parts: object) -> str:
    """A stable key of at most 128 characters for an action (long ones are hashed).

    >>> idempotency_key("playbook-a", 0, "incident", 42)
    'playbook-a:0:incident:42'
    >>> len(idempotency_key("x" * 300))
    128
    """
    text = ":".join(str(p) for p in parts)
    if len(text) <= 128:
        return text
    return text[:63] + ":" + hashlib.sha256(text.encode()).hexdigest()


def _insert(db_session: Session) -> Any:
    if db_session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(ResponseAction).on_conflict_do_nothing(index_elements=["idempotency_key"])
    return sqlite.insert(ResponseAction).on_conflict_do_nothing(index_elements=["idempotency_key"])


def request_action(
    *,
    db_session: Session,
    key: str,
    action_type: str,
    target_type: str,
    target_id: str,
    params: dict[str, Any],
    actor: Actor,
    needs_approval: bool = False,
    incident_id: int | None = None,
    alert_id: int | None = None,
    playbook_id: str | None = None,
) -> tuple[ResponseAction, bool]:
    """The action with idempotency ``key``, created when new (``True``) — asking twice never makes two.
    Audited when created; the caller commits."""
    now = utcnow()
    status = ActionStatus.awaiting_approval if needs_approval else ActionStatus.pending
    inserted = db_session.execute(
        _insert(db_session).values(
            idempotency_key=key, action_type=action_type, target_type=target_type, target_id=target_id[:128],
            status=status, params=params, requested_by_id=actor.user_id, incident_id=incident_id,
            alert_id=alert_id, playbook_id=playbook_id, attempts=0, created_at=now,
        ).returning(ResponseAction.id)
    ).scalar_one_or_none() is not None  # fmt: skip
    action = db_session.scalars(
        select(ResponseAction)
        .where(ResponseAction.idempotency_key == key)
        .execution_options(populate_existing=True)
    ).one()
    if inserted:
        audit_service.record(
            db_session=db_session,
            actor=actor,
            action="response.request",
            target_type="response_action",
            target_id=action.id,
            after={
                "action_type": action_type, "target": f"{target_type}:{target_id}", "status": status.value,
                "playbook_id": playbook_id, "dry_run": bool(params.get("dry_run")),
            },
        )  # fmt: skip
    return action, bool(inserted)


def get(*, db_session: Session, action_id: int) -> ResponseAction | None:
    return db_session.get(ResponseAction, action_id)


def get_all(
    *,
    db_session: Session,
    offset: int,
    limit: int,
    status: ActionStatus | None = None,
    action_type: str | None = None,
    incident_id: int | None = None,
    playbook_id: str | None = None,
) -> tuple[list[ResponseAction], int]:
    """Actions, newest first, filtered."""
    query = select(ResponseAction)
    if status is not None:
        query = query.where(ResponseAction.status == status)
    if action_type is not None:
        query = query.where(ResponseAction.action_type == action_type)
    if incident_id is not None:
        query = query.where(ResponseAction.incident_id == incident_id)
    if playbook_id is not None:
        query = query.where(ResponseAction.playbook_id == playbook_id)
    return fetch_page(db_session, query, order_by=[ResponseAction.id.desc()], offset=offset, limit=limit)


def approve(*, db_session: Session, action: ResponseAction, actor: Actor) -> ResponseAction:
    """A person allows an action that waited for approval (committed; the worker then runs it).

    Raises
    ------
    Conflict
        If the action is not waiting for approval.
    """
    if action.status != ActionStatus.awaiting_approval:
        raise Conflict(
            f"This action is {action.status.value}, not awaiting approval", code="not_awaiting_approval"
        )
    action.status = ActionStatus.pending
    action.approved_by, action.approved_at = actor.label, utcnow()
    audit_service.record(
        db_session=db_session, actor=actor, action="response.approve", target_type="response_action",
        target_id=action.id, before={"status": "awaiting_approval"}, after={"status": "pending"},
    )  # fmt: skip
    db_session.commit()
    return action


def cancel(*, db_session: Session, action: ResponseAction, actor: Actor) -> ResponseAction:
    """Stop an action that has not finished (committed).

    Raises
    ------
    Conflict
        If it already finished.
    """
    if action.status in FINAL_STATUSES:
        raise Conflict(f"This action already finished ({action.status.value})", code="action_finished")
    before = action.status.value
    action.status, action.completed_at = ActionStatus.cancelled, utcnow()
    audit_service.record(
        db_session=db_session, actor=actor, action="response.cancel", target_type="response_action",
        target_id=action.id, before={"status": before}, after={"status": "cancelled"},
    )  # fmt: skip
    db_session.commit()
    return action


def claim(*, db_session: Session, action_id: int) -> ResponseAction | None:
    """Take a pending action whose time has come for one attempt: counts the attempt in the same conditional
    UPDATE, so two workers never run the same attempt. ``None`` when it is not runnable (committed)."""
    now = utcnow()
    seen = db_session.execute(
        select(ResponseAction.attempts).where(
            ResponseAction.id == action_id,
            ResponseAction.status == ActionStatus.pending,
            (ResponseAction.next_attempt_at.is_(None)) | (ResponseAction.next_attempt_at <= now),
        )
    ).scalar_one_or_none()
    if seen is None:
        return None
    taken = db_session.execute(
        sql_update(ResponseAction)
        .where(
            ResponseAction.id == action_id,
            ResponseAction.status == ActionStatus.pending,
            ResponseAction.attempts == seen,
        )
        .values(attempts=seen + 1, next_attempt_at=None)
        .returning(ResponseAction.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    db_session.commit()
    if taken is None:
        return None
    action = db_session.get(ResponseAction, action_id, populate_existing=True)
    return action


def finish(
    *,
    db_session: Session,
    action: ResponseAction,
    status: ActionStatus,
    actor: Actor,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    retry_at: dt.datetime | None = None,
) -> ResponseAction:
    """Record an attempt's outcome: final (succeeded, failed, dead_letter, dry_run) or a retry at
    ``retry_at`` (status stays pending). Audited; committed."""
    action.status = status
    action.result = result if result is not None else action.result
    action.error = error[:4000] if error else None
    action.next_attempt_at = retry_at
    if status in FINAL_STATUSES:
        action.completed_at = utcnow()
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="response.retry" if retry_at is not None else f"response.{status.value}",
        target_type="response_action",
        target_id=action.id,
        after={
            "status": status.value, "attempt": action.attempts, "error": action.error,
            "retry_at": retry_at.isoformat() if retry_at else None,
        },
    )  # fmt: skip
    db_session.commit()
    return action
