"""Pydantic building blocks shared by the domains' schemas."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, field_validator


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


#: The range a time filter must fall in, in UTC: a day inside Python's limits so that converting the
#: zone or stepping a microsecond or a day can never overflow (a 500 found by the API fuzzer).
EARLIEST_TIME = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
LATEST_TIME = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)


def utc_in_range(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC (naive means UTC), refused when it is outside the years 1 to 9999.

    >>> utc_in_range(dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))).hour
    10
    >>> utc_in_range(dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5))))
    Traceback (most recent call last):
    ...
    ValueError: the time must be between the years 1 and 9999
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("the time must be between the years 1 and 9999") from None
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise ValueError("the time must be between the years 1 and 9999")
    return value


def _iso_text_only(value: Any) -> Any:
    """Refuse bare numbers: pydantic would read them as Unix times, guessing seconds or milliseconds."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("expected an ISO 8601 time such as 2026-11-24T10:00:00Z")
    return value


#: A time filter in a query string: ISO 8601 only, naive means UTC, always returned in UTC.
QueryTime = Annotated[dt.datetime, BeforeValidator(_iso_text_only), AfterValidator(utc_in_range)]
