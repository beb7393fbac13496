"""File sources: read a raw file in chunks and yield canonical frames, per domain, with dead letters.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "events.ndjson"
>>> _ = path.write_text(
...     '{"event_id": "p1", "ts": "2024-05-01T12:00:00Z", "domain": "payment", "source": "t"}\\n'
...     '{"event_id": "a1", "ts": "2024-05-01T12:00:01Z", "domain": "auth", "source": "t"}\\n'
...     '{"event_id": "p2", "ts": "2024-05-01T12:00:02", "domain": "payment", "source": "t"}\\n'
... )
>>> source = open_source(path, "ndjson")
>>> [(c.domain.value, c.frame.height, 0 if c.rejects is None else len(c.rejects)) for c in source.chunks()]
[('auth', 1, 0), ('payment', 1, 1)]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from finsecure.event.schemas import ARROW_SCHEMAS, Domain
from finsecure.ingest.mapping import Mapping, load_mapping
from finsecure.ingest.normalise import Normaliser
from finsecure.ingest.readers import DEFAULT_CHUNK_ROWS, DEFAULT_MAX_LINE_BYTES, read_raw
from finsecure.pipeline.batch import Source, SourceChunk

__all__ = ["FORMAT_MAPPINGS", "FileSource", "canonical_mapping", "open_source"]

FORMAT_MAPPINGS: dict[str, str] = {
    "nsl-kdd": "nsl-kdd",
    "fraud-handbook": "fraud-handbook",
    "sparkov": "sparkov",
    "cloudtrail": "cloudtrail",
    "aws-s3-honeybucket": "aws-s3-honeybucket",
    "azure-ad": "azure-ad",
    "office-activity": "office-activity",
}
"""Format names of :func:`open_source` that use a shipped YAML mapping (``ndjson`` and ``parquet``
are canonical events and use :func:`canonical_mapping`)."""


def canonical_mapping(format_name: str = "ndjson") -> Mapping:
    """The identity mapping of canonical events, routed to their domain by the ``domain`` field.

    Built from the schema rather than written out, so it can never drift from it. Times must be
    ISO 8601 with a time zone (text) or time-zone-aware (Parquet); records without ``event_id``,
    ``ts`` or ``source`` are rejected. An NDJSON record with a value in a field that is not part of
    its domain (``dst_port`` on a payment, a misspelt ``amt``) is rejected too, naming the field.
    Parquet columns outside the schema are left out instead: they belong to the whole file, such as
    the feature and score columns a lake file carries, not to one sender's record.
    """
    if format_name not in ("ndjson", "parquet"):
        raise ValueError(f"canonical events come as 'ndjson' or 'parquet', not {format_name!r}")
    domains: list[dict[str, Any]] = []
    hints: dict[str, str] = {}
    for domain in Domain:
        names = [name for name in ARROW_SCHEMAS[domain].names if name != "domain"]
        fields: dict[str, Any] = {name: {"column": name} for name in names}
        fields["tenant"] = {"column": "tenant", "default": "default"}
        domains.append(
            {"domain": domain.value, "when": {"column": "domain", "equals": domain.value}, "fields": fields}
        )
        hints.update((field.name, _json_type(field.type)) for field in ARROW_SCHEMAS[domain])
    read: dict[str, Any] = {"format": format_name}
    if format_name == "ndjson":
        read["fields"] = hints
    return Mapping.from_dict(
        {
            "name": f"canonical-{format_name}",
            "source": "canonical",
            "read": read,
            "domains": domains,
            "unmatched_reason": f"domain: missing or not one of {', '.join(d.value for d in Domain)}",
            "unknown_fields": "reject" if format_name == "ndjson" else "ignore",
        },
        origin=f"<canonical {format_name}>",
    )


def _json_type(arrow_type: pa.DataType) -> str:
    """How a canonical column travels in JSON (times as ISO 8601 text)."""
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    return "str"


class FileSource(Source):
    """Replays a raw file through a mapping, chunk by chunk.

    Parameters
    ----------
    path
        The file (plain, gzip, zip or tar; told by magic bytes).
    mapping
        The mapping, or the name of a shipped one.
    chunk_rows
        At most this many raw records per chunk.
    source_name
        Names the source in dead letters and seeds generated event ids; default the file name.
    max_line_bytes
        JSON lines longer than this are rejected unread.
    tenant, hash_key
        Passed to :class:`~finsecure.ingest.normalise.Normaliser`.
    """

    def __init__(
        self,
        path: str | Path,
        mapping: Mapping | str,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        source_name: str | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        tenant: str | None = None,
        hash_key: bytes | None = None,
    ) -> None:
        self.path = Path(path)
        self.mapping = load_mapping(mapping) if isinstance(mapping, str) else mapping
        self.chunk_rows = chunk_rows
        self.max_line_bytes = max_line_bytes
        self.source_name = source_name or self.path.name
        self.source_id = f"replay:{self.source_name}"
        self.normaliser = Normaliser(self.mapping, self.source_name, tenant=tenant, hash_key=hash_key)
        self.skipped = 0
        """Records left out on purpose by the mapping (``unmatched: skip``) so far."""

    def chunks(self) -> Iterator[SourceChunk]:
        """Yield, per raw chunk, one :class:`SourceChunk` per domain that has rows or rejects.

        Rejects of records that matched no domain (or could not be parsed) travel with the first
        chunk yielded for that raw chunk.
        """
        raw_chunks = read_raw(
            self.path,
            self.mapping.read,
            chunk_rows=self.chunk_rows,
            max_line_bytes=self.max_line_bytes,
            source=self.source_name,
            keep=self.mapping.read_columns(),
        )
        for raw in raw_chunks:
            result = self.normaliser.normalise(raw.frame, raw.first_offset)
            self.skipped += result.skipped
            orphans: list[pa.Table] = (
                [raw.rejects] if raw.rejects is not None and raw.rejects.num_rows else []
            )
            unmatched = result.rejects_for(None)
            if unmatched.num_rows:
                orphans.append(unmatched)
            emitted = False
            for domain in self.mapping.domains:
                frame = result.frames.get(domain)
                own = result.rejects_for(domain)
                parts = (
                    ([*orphans, own] if not emitted else [own])
                    if own.num_rows
                    else (orphans if not emitted else [])
                )
                rejects = pa.concat_tables(parts) if parts else None
                if (frame is None or frame.height == 0) and rejects is None:
                    continue
                emitted = True
                yield SourceChunk(
                    domain=domain,
                    frame=frame if frame is not None else self.normaliser.empty(domain),
                    rejects=rejects,
                    offset_end=raw.offset_end,
                )
            if not emitted and orphans:
                domain = self.mapping.domains[0]
                yield SourceChunk(
                    domain=domain,
                    frame=self.normaliser.empty(domain),
                    rejects=pa.concat_tables(orphans),
                    offset_end=raw.offset_end,
                )


def open_source(
    path: str | Path,
    format_name: str,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    source_name: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    tenant: str | None = None,
    hash_key: bytes | None = None,
) -> FileSource:
    """Open a file by format name: ``nsl-kdd``, ``fraud-handbook``, ``sparkov``, ``cloudtrail``,
    ``aws-s3-honeybucket``, ``azure-ad``, ``office-activity``, ``ndjson`` (canonical events, any mix
    of domains, told by their ``domain`` field) or ``parquet`` (canonical events).

    Raises
    ------
    ValueError
        For an unknown format name.
    """
    if format_name in ("ndjson", "parquet"):
        mapping = canonical_mapping(format_name)
    elif format_name in FORMAT_MAPPINGS:
        mapping = load_mapping(FORMAT_MAPPINGS[format_name])
    else:
        known = ", ".join([*FORMAT_MAPPINGS, "ndjson", "parquet"])
        raise ValueError(f"unknown format {format_name!r}; expected one of: {known}")
    return FileSource(
        path,
        mapping,
        chunk_rows=chunk_rows,
        source_name=source_name,
        max_line_bytes=max_line_bytes,
        tenant=tenant,
        hash_key=hash_key,
    )
