"""Pydantic building blocks shared by the domains' schemas."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, field_validator


def _contains_nul(value: Any) -> bool:
    """True when ``value`` or any string nested in it holds a NUL (iterative: JSON may nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return False


class ApiModel(BaseModel):
    """Base of request and response bodies: unknown fields are refused, ORM objects readable.

    Strings holding NUL characters are refused: PostgreSQL can store them neither in text nor in
    JSONB columns, so letting one through would fail later, as a server error, on that backend only.
    """

    model_config = ConfigDict(extra="forbid", from_attributes=True, str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_nul(cls, value: Any) -> Any:
        if _contains_nul(value):
            raise ValueError("text must not contain NUL (\\x00) characters")
        return value


#: Largest row id the API accepts: ids are 32-bit on every table's API surface, so a larger number is a
#: clear 422 instead of a driver overflow.
MAX_ROW_ID = 2**31 - 1

#: A row id in a URL path.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="Row id")]


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
