"""Pydantic building blocks shared by the domains' schemas."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict


class ApiModel(BaseModel):
    """Base of request and response bodies: unknown fields are refused, ORM objects readable."""

    model_config = ConfigDict(extra="forbid", from_attributes=True, str_strip_whitespace=True)


class PageParams(BaseModel):
    page: int
    size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


def page_params(
    page: Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number")] = 1,
    size: Annotated[int, Query(ge=1, le=500, description="Items per page")] = 50,
) -> PageParams:
    return PageParams(page=page, size=size)
