"""Searching raw events in the lake (any signed-in person)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from finsecure.auth.deps import ViewerUser
from finsecure.core.deps import Context, Page
from finsecure.core.errors import error_responses
from finsecure.core.schemas import QueryTime
from finsecure.event import service as event_service
from finsecure.event.api_schemas import EventSearchPage
from finsecure.event.schemas import Domain

router = APIRouter(prefix="/events", tags=["events"])

EntityKey = Annotated[str | None, Query(min_length=1, max_length=128)]


@router.get(
    "/search",
    response_model=EventSearchPage,
    summary="Find events of one domain in the lake",
    responses=error_responses(400, 401, 403, 422, 503),
)
def search_events(
    _viewer: ViewerUser,
    ctx: Context,
    page: Page,
    domain: Annotated[Domain, Query(description="network, cloud, auth or payment")],
    since: Annotated[
        QueryTime | None, Query(description="From this time (inclusive; UTC if no zone)")
    ] = None,
    until: Annotated[QueryTime | None, Query(description="Before this time (exclusive)")] = None,
    user_id: EntityKey = None,
    account_id: EntityKey = None,
    card_id: EntityKey = None,
    device_id: EntityKey = None,
    src_ip: EntityKey = None,
    dst_ip: EntityKey = None,
    merchant_id: EntityKey = None,
    min_score: Annotated[float | None, Query(description="Only events scored at least this")] = None,
    text: Annotated[str | None, Query(min_length=1, max_length=256, description="Text in any field")] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="By time")] = "desc",
) -> EventSearchPage:
    result = event_service.search(
        settings=ctx.settings,
        domain=domain,
        offset=page.offset,
        limit=page.size,
        since=since,
        until=until,
        user_id=user_id,
        account_id=account_id,
        card_id=card_id,
        device_id=device_id,
        src_ip=src_ip,
        dst_ip=dst_ip,
        merchant_id=merchant_id,
        min_score=min_score,
        text=text,
        order=order,
    )
    return EventSearchPage(
        items=result.rows, total=result.total, page=page.page, size=page.size, has_more=result.has_more
    )
