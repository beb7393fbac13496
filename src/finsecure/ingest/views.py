"""HTTP ingestion: machines push canonical events with an API key that has the ``ingest`` scope."""

from __future__ import annotations

import time
import zlib
from typing import Annotated

import polars as pl
import pyarrow as pa
from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from finsecure.auth.deps import IngestKey
from finsecure.bus.base import BusError
from finsecure.core.deps import Context
from finsecure.core.errors import (
    BadRequest,
    ErrorBody,
    PayloadTooLarge,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
    error_responses,
)
from finsecure.core.schemas import ApiModel
from finsecure.event.schemas import Domain
from finsecure.ingest.deadletter import dead_letters
from finsecure.ingest.readers import OFFSET_COLUMN, parse_records
from finsecure.ingest.sources import canonical_mapping
from finsecure.pipeline.engine import Backpressure, PipelineClosed
from finsecure.platform import Platform

router = APIRouter(prefix="/ingest", tags=["ingest"])

#: How many rejected records are described one by one in a response (all of them reach dead letters).
MAX_REJECTS_SHOWN = 100
_GZIP_MAGIC = b"\x1f\x8b"
_CANONICAL_FIELDS = canonical_mapping("ndjson").read.fields
_CONTENT_TYPES = ("application/x-ndjson", "application/jsonl", "application/json", "application/ndjson")


class Reject(ApiModel):
    offset: int | None = Field(description="Line number (NDJSON) or position in the array, from 0")
    reason: str


class IngestResult(ApiModel):
    accepted: int
    rejected: int
    rejects: list[Reject] = Field(description=f"The first {MAX_REJECTS_SHOWN} rejected records and why")
    truncated: bool = Field(description="True when more records were rejected than are listed")


def _inflate(body: bytes, limit: int) -> bytes:
    """Decompress gzip with a hard cap on the output, so a small bomb cannot fill memory."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest("The gzip body is broken and cannot be decompressed", code="bad_gzip") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"The body inflates past the {limit} bytes allowed", code="inflated_too_large")
    if not inflater.eof:
        raise BadRequest("The gzip body ends too early", code="bad_gzip")
    return out


def _route_to_domain(frame: pl.DataFrame, domain: Domain) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """Records default to the URL's domain; a record naming another domain is rejected, not rerouted."""
    if frame.height == 0:
        return frame, []
    if "domain" not in frame.columns:
        return frame.with_columns(pl.lit(domain.value).alias("domain")), []
    column = pl.col("domain").cast(pl.String, strict=False)
    frame = frame.with_columns(column.fill_null(domain.value).alias("domain"))
    wrong = frame.filter(pl.col("domain") != domain.value)
    if wrong.height == 0:
        return frame, []
    bad = [
        (int(off), f"domain: this endpoint takes {domain.value} events; send other domains to their own URL")
        for off in wrong[OFFSET_COLUMN].to_list()
    ]
    return frame.filter(pl.col("domain") == domain.value), bad


def _process(platform: Platform, domain: Domain, body: bytes, source: str, timeout: float) -> IngestResult:
    settings = platform.settings
    arrived = time.monotonic_ns()
    frame, rejects = parse_records(
        body,
        max_line_bytes=settings.ingest_max_line_bytes,
        source=source,
        fields=_CANONICAL_FIELDS,  # a fixed schema lets Polars parse the whole body in one pass
    )
    frame, wrong_domain = _route_to_domain(frame, domain)
    tables = [rejects]
    if wrong_domain:
        tables.append(
            dead_letters(
                source=source,
                reasons=[r for _, r in wrong_domain],
                offsets=[o for o, _ in wrong_domain],
                raws=[None] * len(wrong_domain),
                domain=domain.value,
            )
        )
    accepted = 0
    if frame.height:
        result = platform.normaliser(source).normalise(frame)
        tables.append(result.rejects)
        canonical = result.frames.get(domain)
        if canonical is not None and canonical.height:
            # With FINSECURE_BUS_URL the events go to NATS JetStream for the workers (durable on return).
            target = platform.bus or platform.pipeline
            try:
                target.submit(domain, canonical, source=source, arrived_ns=arrived, timeout=timeout)
            except Backpressure as exc:
                raise Unavailable(str(exc), headers={"Retry-After": "1"}) from exc
            except BusError as exc:
                message = f"The event bus is not available: {exc}"
                raise Unavailable(message, headers={"Retry-After": "5"}) from exc
            except PipelineClosed as exc:
                raise Unavailable("The platform is shutting down; try again shortly") from exc
            accepted = canonical.height
    all_rejects = pa.concat_tables(tables) if len(tables) > 1 else rejects
    if all_rejects.num_rows:
        platform.pipeline.submit_rejects(all_rejects)
    offsets = all_rejects.column("offset").to_pylist()
    reasons = all_rejects.column("reason").to_pylist()
    shown = sorted(zip(offsets, reasons, strict=True), key=lambda r: (r[0] is None, r[0] or 0))
    return IngestResult(
        accepted=accepted,
        rejected=all_rejects.num_rows,
        rejects=[Reject(offset=o, reason=r) for o, r in shown[:MAX_REJECTS_SHOWN]],
        truncated=all_rejects.num_rows > MAX_REJECTS_SHOWN,
    )


@router.post(
    "/{domain}",
    response_model=IngestResult,
    summary="Push events of one domain (NDJSON or a JSON array, optionally gzip)",
    responses={
        **error_responses(400, 401, 403, 413, 415, 422, 503),
        413: {"model": ErrorBody, "description": "Body (or its decompressed form) too large"},
        415: {"model": ErrorBody, "description": "Not JSON or NDJSON"},
        422: {"model": ErrorBody, "description": "Every record was rejected, or the domain is unknown"},
        503: {
            "model": ErrorBody,
            "description": "The pipeline is busy or not running; retry after the Retry-After header",
        },
    },
)
async def ingest(
    domain: Domain,
    request: Request,
    api_key: IngestKey,
    ctx: Context,
    content_type: Annotated[str | None, Header()] = None,
    content_encoding: Annotated[str | None, Header()] = None,
) -> IngestResult:
    """Each record is one canonical event (see docs/events.md); ``domain`` may be left out.

    Good records are accepted even when others in the same body are rejected; every rejected record is
    kept as a dead letter with the reason, and the first ones are listed in the answer.
    """
    platform = ctx.platform
    if platform is None or not platform.pipeline.running:
        raise Unavailable("Ingestion is not running in this process", headers={"Retry-After": "5"})
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in _CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"Send application/x-ndjson or application/json, not {media or 'nothing'!r}"
        )
    body = await request.body()
    encoding = (content_encoding or "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    if encoding == "gzip" or body[:2] == _GZIP_MAGIC:
        body = await run_in_threadpool(_inflate, body, ctx.settings.ingest_max_decompressed_bytes)
        if body[:2] == _GZIP_MAGIC:
            # The parser would inflate this inner layer again, past the size cap: a gzip bomb inside
            # a small gzip body (found by the hostile-input tests).
            raise BadRequest("A gzip body must not hold gzip data again", code="nested_gzip")
    if not body.strip():
        raise BadRequest("The body is empty; send at least one event", code="empty_body")
    source = f"http:{api_key.prefix}"
    result = await run_in_threadpool(_process, platform, domain, body, source, ctx.settings.ingest_timeout_s)
    if result.accepted == 0 and result.rejected:
        raise Unprocessable(
            code="all_records_rejected",
            message=f"All {result.rejected} record(s) were rejected; see details",
            details=[r.model_dump() for r in result.rejects],
        )
    return result
