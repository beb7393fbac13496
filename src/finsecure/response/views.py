"""Response: actions (viewers read, analysts approve, cancel and start them), the block list (viewers
read, analysts change; enforcement points read it with an API key) and playbooks (admins reload them)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from finsecure.alert.models import Alert
from finsecure.audit import service as audit_service
from finsecure.auth.deps import AdminUser, AnalystUser, RequireScope, ViewerUser, user_actor
from finsecure.auth.models import ApiKey
from finsecure.auth.schemas import Scope
from finsecure.core.deps import Context, DbSession, Page
from finsecure.core.errors import NotFound, error_responses
from finsecure.core.schemas import MAX_ROW_ID, RowId
from finsecure.incident.models import Incident
from finsecure.response import blocklist
from finsecure.response import service as action_service
from finsecure.response.actions import default_responders
from finsecure.response.models import ActionStatus, ResponseAction
from finsecure.response.playbooks import PLAYBOOKS_DIR, LoadedPlaybooks, load_playbooks
from finsecure.response.schemas import (
    ActionCreate,
    ActionPage,
    ActionRead,
    BlockableType,
    BlockCreate,
    BlockPage,
    BlockRead,
    PlaybookList,
    PlaybookRead,
)
from finsecure.response.worker import ResponseWorker

actions_router = APIRouter(prefix="/actions", tags=["response"])
blocklist_router = APIRouter(prefix="/blocklist", tags=["response"])
enforcement_router = APIRouter(prefix="/enforcement", tags=["response"])
playbooks_router = APIRouter(prefix="/playbooks", tags=["response"])

ReadKey = Annotated[ApiKey, Depends(RequireScope(Scope.read))]


def _worker(ctx: Context) -> ResponseWorker | None:
    return ctx.platform.responses if ctx.platform is not None else None


def _action_or_404(db_session: DbSession, action_id: int) -> ResponseAction:
    action = action_service.get(db_session=db_session, action_id=action_id)
    if action is None:
        raise NotFound("There is no response action with that id")
    return action


@actions_router.get(
    "",
    response_model=ActionPage,
    summary="Response actions, newest first",
    responses=error_responses(400, 401, 403, 422),
)
def list_actions(
    _viewer: ViewerUser,
    db_session: DbSession,
    page: Page,
    status: ActionStatus | None = None,
    action_type: Annotated[str | None, Query(max_length=32)] = None,
    incident_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    playbook_id: Annotated[str | None, Query(max_length=128)] = None,
) -> ActionPage:
    items, total = action_service.get_all(
        db_session=db_session, offset=page.offset, limit=page.size, status=status, action_type=action_type,
        incident_id=incident_id, playbook_id=playbook_id,
    )  # fmt: skip
    return ActionPage(
        items=[ActionRead.model_validate(a) for a in items], total=total, page=page.page, size=page.size
    )


@actions_router.post(
    "",
    response_model=ActionRead,
    status_code=201,
    summary="Start an action by hand: block an entity, open or attach an incident for an alert",
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def create_action(
    body: ActionCreate, user: AnalystUser, request: Request, ctx: Context, db_session: DbSession
) -> ActionRead:
    if body.incident_id is not None and db_session.get(Incident, body.incident_id) is None:
        raise NotFound("There is no incident with that id")
    if body.action_type == "block":
        target_type, target_id = "entity", f"{body.entity_type}:{body.entity_id}"
    else:
        target_type, target_id = "alert", str(body.alert_id)
    params: dict[str, object] = {"dry_run": body.dry_run}
    if body.action_type == "block":
        params.update(entity_type=body.entity_type, entity_id=body.entity_id, ttl_hours=body.ttl_hours)
    if body.reason:
        params["reason"] = body.reason
    if body.action_type == "attach_incident":
        params["incident_id"] = body.incident_id
    if body.alert_id is not None and db_session.get(Alert, body.alert_id) is None:
        raise NotFound("There is no alert with that id")
    action, _ = action_service.request_action(
        db_session=db_session, key=f"manual:{uuid.uuid4().hex}", action_type=body.action_type,
        target_type=target_type, target_id=target_id, params=params, actor=user_actor(user, request),
        incident_id=body.incident_id, alert_id=body.alert_id,
    )  # fmt: skip
    db_session.commit()
    worker = _worker(ctx)
    if worker is not None:
        worker.enqueue(action.id)
    return ActionRead.model_validate(action)


@actions_router.get(
    "/{action_id}",
    response_model=ActionRead,
    summary="One response action",
    responses=error_responses(401, 403, 404, 422),
)
def read_action(action_id: RowId, _viewer: ViewerUser, db_session: DbSession) -> ActionRead:
    return ActionRead.model_validate(_action_or_404(db_session, action_id))


@actions_router.post(
    "/{action_id}/approve",
    response_model=ActionRead,
    summary="Allow an action that waits for a person (e.g. blocking a card); the worker then runs it",
    responses=error_responses(401, 403, 404, 409, 422),
)
def approve_action(
    action_id: RowId, user: AnalystUser, request: Request, ctx: Context, db_session: DbSession
) -> ActionRead:
    action = action_service.get(db_session=db_session, action_id=action_id)
    if action is None:
        raise NotFound("There is no response action with that id")
    action = action_service.approve(db_session=db_session, action=action, actor=user_actor(user, request))
    worker = _worker(ctx)
    if worker is not None:
        worker.enqueue(action.id)
    return ActionRead.model_validate(action)


@actions_router.post(
    "/{action_id}/cancel",
    response_model=ActionRead,
    summary="Stop an action that has not finished (waiting for approval or for a retry)",
    responses=error_responses(401, 403, 404, 409, 422),
)
def cancel_action(action_id: RowId, user: AnalystUser, request: Request, db_session: DbSession) -> ActionRead:
    action = action_service.get(db_session=db_session, action_id=action_id)
    if action is None:
        raise NotFound("There is no response action with that id")
    action = action_service.cancel(db_session=db_session, action=action, actor=user_actor(user, request))
    return ActionRead.model_validate(action)


@blocklist_router.get(
    "",
    response_model=BlockPage,
    summary="Blocked entities, newest first (active ones unless include_expired)",
    responses=error_responses(400, 401, 403, 422),
)
def list_blocks(
    _viewer: ViewerUser,
    db_session: DbSession,
    page: Page,
    entity_type: BlockableType | None = None,
    entity_id: Annotated[str | None, Query(max_length=128)] = None,
    include_expired: bool = False,
) -> BlockPage:
    items, total = blocklist.get_all(
        db_session=db_session, offset=page.offset, limit=page.size, entity_type=entity_type,
        entity_id=entity_id, include_expired=include_expired,
    )  # fmt: skip
    return BlockPage(
        items=[BlockRead.model_validate(b) for b in items], total=total, page=page.page, size=page.size
    )


@blocklist_router.post(
    "",
    response_model=BlockRead,
    status_code=201,
    summary="Block an entity for a while (blocking it again renews the entry)",
    responses=error_responses(400, 401, 403, 413, 422),
)
def create_block(body: BlockCreate, user: AnalystUser, request: Request, db_session: DbSession) -> BlockRead:
    entry = blocklist.block(
        db_session=db_session, entity_type=body.entity_type, entity_id=body.entity_id, reason=body.reason,
        ttl=None if body.ttl_hours is None else dt.timedelta(hours=body.ttl_hours),
        actor=user_actor(user, request),
    )  # fmt: skip
    db_session.commit()
    return BlockRead.model_validate(entry)


@blocklist_router.delete(
    "/{entry_id}",
    response_model=BlockRead,
    summary="Unblock an entity",
    responses=error_responses(401, 403, 404, 422),
)
def delete_block(entry_id: RowId, user: AnalystUser, request: Request, db_session: DbSession) -> BlockRead:
    entry = blocklist.get(db_session=db_session, entry_id=entry_id)
    if entry is None:
        raise NotFound("There is no block list entry with that id")
    read = BlockRead.model_validate(entry)
    blocklist.unblock(db_session=db_session, entry=entry, actor=user_actor(user, request))
    db_session.commit()
    return read


@enforcement_router.get(
    "/blocklist",
    response_model=BlockPage,
    summary="The active block list for enforcement points (API key with the read scope)",
    responses=error_responses(400, 401, 403, 422),
)
def enforcement_blocklist(
    _key: ReadKey,
    db_session: DbSession,
    page: Page,
    entity_type: BlockableType | None = None,
    entity_id: Annotated[str | None, Query(max_length=128)] = None,
) -> BlockPage:
    items, total = blocklist.get_all(
        db_session=db_session,
        offset=page.offset,
        limit=page.size,
        entity_type=entity_type,
        entity_id=entity_id,
    )
    return BlockPage(
        items=[BlockRead.model_validate(b) for b in items], total=total, page=page.page, size=page.size
    )


def _playbook_list(loaded: LoadedPlaybooks) -> PlaybookList:
    return PlaybookList(
        items=[PlaybookRead.model_validate(p.summary()) for p in loaded.playbooks], errors=list(loaded.errors)
    )


@playbooks_router.get(
    "",
    response_model=PlaybookList,
    summary="The response playbooks in use, and any that could not be loaded",
    responses=error_responses(401, 403),
)
def list_playbooks(_viewer: ViewerUser, ctx: Context) -> PlaybookList:
    worker = _worker(ctx)
    if worker is not None:
        return _playbook_list(LoadedPlaybooks(worker.playbooks, worker.load_errors))
    directory = ctx.settings.playbooks_dir or PLAYBOOKS_DIR
    return _playbook_list(load_playbooks(directory, action_types=default_responders()))


@playbooks_router.post(
    "/reload",
    response_model=PlaybookList,
    summary="Re-read the playbook files (after an edit); the running worker uses them at once",
    responses=error_responses(401, 403),
)
def reload_playbooks(user: AdminUser, request: Request, ctx: Context, db_session: DbSession) -> PlaybookList:
    worker = _worker(ctx)
    if worker is not None:
        loaded = worker.reload_playbooks()
    else:
        loaded = load_playbooks(
            ctx.settings.playbooks_dir or PLAYBOOKS_DIR, action_types=default_responders()
        )
    audit_service.record(
        db_session=db_session, actor=user_actor(user, request), action="playbooks.reload",
        target_type="playbooks", target_id=None,
        after={"loaded": [p.id for p in loaded.playbooks], "errors": len(loaded.errors)},
    )  # fmt: skip
    db_session.commit()
    return _playbook_list(loaded)
