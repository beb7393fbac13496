"""Bodies of the event API (the canonical event schema itself is :mod:`finsecure.event.schemas`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EventSearchPage(BaseModel):
    """One page of events from the lake.

    A response, never a request body, so it is a plain model rather than ``ApiModel``: stored events
    are shown as they are, whatever text they hold.
    """

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(
        description="Events, newest first by default: canonical columns, then features and scores"
    )
    total: int = Field(description="Events matching the filters (exact)")
    page: int
    size: int
    has_more: bool = Field(description="Whether the next page holds events")
