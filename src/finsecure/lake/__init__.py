"""The event lake: Parquet files partitioned by domain and day, written by :class:`LakeWriter` and
queried read-only with DuckDB through :class:`LakeQuery`; sinks that feed it and the databases."""

from finsecure.lake.query import (
    LakeQuery,
    LakeQueryError,
    LakeQueryTimeout,
    QueryRefused,
    QueryResult,
    SearchResult,
)
from finsecure.lake.sinks import DeadLetterSink, LakeSink, ScoredEventSink
from finsecure.lake.writer import LakeWriteError, LakeWriter

__all__ = [
    "DeadLetterSink",
    "LakeQuery",
    "LakeQueryError",
    "LakeQueryTimeout",
    "LakeSink",
    "LakeWriteError",
    "LakeWriter",
    "QueryRefused",
    "QueryResult",
    "ScoredEventSink",
    "SearchResult",
]
