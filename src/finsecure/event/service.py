"""Event search over the Parquet lake (scored events in the database are a separate, smaller store)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any

from finsecure.core.cache import RefreshingCache
from finsecure.core.errors import AppError, BadRequest
from finsecure.core.settings import Settings
from finsecure.event.schemas import Domain
from finsecure.lake.query import LakeQuery, LakeQueryError, LakeQueryTimeout, SearchResult, SortOrder

logger = logging.getLogger(__name__)

#: Time limit of one search made through the API.
SEARCH_TIMEOUT_S = 10.0
#: A search's answer is kept this long for the same filters (the lake's files arrive every few seconds
#: anyway), and served while a new one is computed in the background up to SEARCH_STALE_S.
SEARCH_FRESH_S = 5.0
SEARCH_STALE_S = 30.0
_search_cache: RefreshingCache[tuple[Any, ...], SearchResult] = RefreshingCache(
    fresh_s=SEARCH_FRESH_S, stale_s=SEARCH_STALE_S, max_entries=256
)


class SearchUnavailable(AppError):
    """The lake could not answer (too slow, or a file could not be read)."""

    status_code = 503
    code = "search_unavailable"


_lakes: dict[Path, LakeQuery] = {}
_lakes_lock = threading.Lock()


def lake_root(*, settings: Settings) -> Path:
    """Where the event lake lives: ``<data_dir>/lake``."""
    return settings.data_dir / "lake"


def get_lake(*, settings: Settings) -> LakeQuery:
    """The process-wide read-only query engine of the settings' lake (one DuckDB per lake directory)."""
    root = lake_root(settings=settings).absolute()
    with _lakes_lock:
        lake = _lakes.get(root)
        if lake is None:
            lake = _lakes[root] = LakeQuery(root, timeout_s=SEARCH_TIMEOUT_S)
        return lake


def search(
    *,
    settings: Settings,
    domain: Domain,
    offset: int,
    limit: int,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    user_id: str | None = None,
    account_id: str | None = None,
    card_id: str | None = None,
    device_id: str | None = None,
    src_ip: str | None = None,
    dst_ip: str | None = None,
    merchant_id: str | None = None,
    min_score: float | None = None,
    text: str | None = None,
    order: SortOrder = "desc",
) -> SearchResult:
    """Search one domain's events in the lake; see :meth:`finsecure.lake.query.LakeQuery.search`.

    Raises
    ------
    BadRequest
        For filters that cannot match anything sensible (``since`` not before ``until``, a
        non-finite ``min_score``).
    SearchUnavailable
        When the lake is too slow or cannot be read.

    Notes
    -----
    The same search within :data:`SEARCH_FRESH_S` seconds gets the same answer (up to
    :data:`SEARCH_STALE_S` while a new one is computed in the background).
    """
    filters: dict[str, Any] = {
        "since": since,
        "until": until,
        "user_id": user_id,
        "account_id": account_id,
        "card_id": card_id,
        "device_id": device_id,
        "src_ip": src_ip,
        "dst_ip": dst_ip,
        "merchant_id": merchant_id,
        "min_score": min_score,
        "text": text,
        "order": order,
        "limit": limit,
        "offset": offset,
    }
    lake = get_lake(settings=settings)
    key = (lake.root, Domain(domain).value, *sorted(filters.items()))
    try:
        return _search_cache.get(key, lambda: lake.search(domain, **filters))
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_filter") from exc
    except LakeQueryTimeout as exc:
        raise SearchUnavailable(
            "The search took too long; narrow the time range or add filters", code="search_timeout"
        ) from exc
    except LakeQueryError as exc:
        logger.error("event search failed on %s: %s", lake_root(settings=settings), exc)
        raise SearchUnavailable("The event store could not be read; try again later") from exc
