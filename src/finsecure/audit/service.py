"""Writing and reading the audit log. Entries are added in the caller's transaction, so a change and
its audit record are committed together or not at all."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.audit.models import AuditEntry
from finsecure.core.database import fetch_page


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: a signed-in user, an API key or a command-line operator."""

    label: str
    user_id: int | None = None
    ip: str | None = None


def record(
    *,
    db_session: Session,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add an audit entry to the session (the caller commits)."""
    entry = AuditEntry(
        actor_user_id=actor.user_id,
        actor=actor.label,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        before=before,
        after=after,
        ip=actor.ip,
    )
    db_session.add(entry)
    return entry


def get_all(
    *,
    db_session: Session,
    offset: int,
    limit: int,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    actor_user_id: int | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> tuple[list[AuditEntry], int]:
    """Newest first, filtered; returns the page and the total number of matches.

    ``since`` and ``until`` without a time zone are taken as UTC.
    """
    since, until = _as_utc(since), _as_utc(until)
    query = select(AuditEntry)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if target_type is not None:
        query = query.where(AuditEntry.target_type == target_type)
    if target_id is not None:
        query = query.where(AuditEntry.target_id == target_id)
    if actor_user_id is not None:
        query = query.where(AuditEntry.actor_user_id == actor_user_id)
    if since is not None:
        query = query.where(AuditEntry.ts >= since)
    if until is not None:
        query = query.where(AuditEntry.ts < until)
    return fetch_page(db_session, query, order_by=[AuditEntry.id.desc()], offset=offset, limit=limit)


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` with naive times read as UTC (the timestamp columns refuse naive datetimes)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)
