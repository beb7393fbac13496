"""The original record of a cloud or audit event, kept beside its canonical columns.

A mapping with ``keep_raw: true`` (CloudTrail, Azure AD, Office 365) gives its cloud and auth events one more
column, :data:`RAW_COLUMN`: the source record as one JSON object of dotted paths to text. Sigma rules read
the fields that have no canonical column from it (``requestParameters.userName``, ``ResultType``,
``TargetResources.modifiedProperties.newValue``...), on live events as on files.

The format: nested objects become dotted paths, lists are flattened (their values joined by new lines),
JSON text inside a value (as Log Analytics exports nested fields) is opened up, nulls are left out. Each value
keeps at most :data:`MAX_VALUE_CHARS` characters and the whole record at most :data:`MAX_RAW_CHARS` (paths
beyond the budget are left out, so the text always stays valid JSON).

This runs in Python, once per record, and only for the feeds that ask for it; the pipeline's other domains
never pay for it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import polars as pl

__all__ = ["MAX_RAW_CHARS", "MAX_VALUE_CHARS", "RAW_COLUMN", "flat_record", "flat_records"]

RAW_COLUMN = "raw"
"""Name of the optional column holding the source record (see the module docstring)."""
MAX_RAW_CHARS = 32_768
"""Longest ``raw`` text kept per event."""
MAX_VALUE_CHARS = 4_096
"""Longest value kept per path."""


def flat_record(
    record: Mapping[str, Any], *, max_chars: int = MAX_RAW_CHARS, max_value_chars: int = MAX_VALUE_CHARS
) -> str:
    r"""A source record as the ``raw`` column holds it.

    >>> flat_record({"a": {"b": [{"c": 1}, {"c": "x"}]}, "d": '{"e": true}', "f": None})
    '{"a.b.c": "1\\nx", "d.e": "true"}'

    Too long a record keeps the paths that fit, in order:

    >>> flat_record({"a": "x" * 10, "b": "y" * 10, "c": "z"}, max_chars=30)
    '{"a": "xxxxxxxxxx", "c": "z"}'
    """
    flat: dict[str, list[str]] = {}

    def walk(prefix: str, value: object, depth: int) -> None:
        if isinstance(value, str) and value[:1] in "[{" and depth < 8:
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner, depth + 1)
        elif isinstance(value, list):
            for inner in value:
                walk(prefix, inner, depth + 1)
        elif value is not None and prefix:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            flat.setdefault(prefix, []).append(text)

    walk("", record, 0)
    joined = {key: "\n".join(values)[:max_value_chars] for key, values in flat.items()}
    text = json.dumps(joined)
    if len(text) <= max_chars:
        return text
    kept: dict[str, str] = {}
    used = 2  # the braces
    for key, value in joined.items():
        size = len(json.dumps({key: value})) - 2 + (2 if kept else 0)  # ", " between entries
        if used + size <= max_chars:
            kept[key] = value
            used += size
    return json.dumps(kept)


def flat_records(frame: pl.DataFrame, *, max_chars: int = MAX_RAW_CHARS) -> pl.Series:
    """:func:`flat_record` of every row of a raw frame (as a reader parsed it), as a :data:`RAW_COLUMN`
    series.

    >>> flat_records(pl.DataFrame({"a": [1, None], "b": [{"c": "x"}, {"c": None}]})).to_list()
    ['{"a": "1", "b.c": "x"}', '{}']
    """
    texts = [flat_record(row, max_chars=max_chars) for row in frame.iter_rows(named=True)]
    return pl.Series(RAW_COLUMN, texts, dtype=pl.String)
