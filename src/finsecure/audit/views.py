"""Reading the audit log (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from finsecure.audit import service as audit_service
from finsecure.audit.schemas import AuditPage, AuditRead
from finsecure.auth.deps import AdminUser
from finsecure.core.deps import DbSession, Page
from finsecure.core.errors import error_responses
from finsecure.core.schemas import MAX_ROW_ID, QueryTime

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get(
    "",
    response_model=AuditPage,
    summary="Who changed what, newest first",
    responses=error_responses(400, 401, 403, 422),
)
def list_audit(
    _admin: AdminUser,
    db_session: DbSession,
    page: Page,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    target_id: Annotated[str | None, Query(max_length=128)] = None,
    actor_user_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    since: Annotated[
        QueryTime | None, Query(description="From this time (inclusive; UTC if no zone)")
    ] = None,
    until: Annotated[QueryTime | None, Query(description="Before this time (exclusive)")] = None,
) -> AuditPage:
    entries, total = audit_service.get_all(
        db_session=db_session,
        offset=page.offset,
        limit=page.size,
        action=action,
        target_type=target_type,
        target_id=target_id,
        actor_user_id=actor_user_id,
        since=since,
        until=until,
    )
    return AuditPage(
        items=[AuditRead.model_validate(e) for e in entries], total=total, page=page.page, size=page.size
    )
