"""The shape of a dead letter: a raw record that could not be normalised, with the reason and where it
came from. Dead letters go to the ``dead_letters`` table and to the lake's ``dead_letter`` partition;
the rest of their batch carries on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pyarrow as pa

#: Raw records are truncated to this many characters in a dead letter (a 50 MB line stays out of the DB).
MAX_RAW_CHARS = 4096

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("offset", pa.int64()),
        pa.field("domain", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
    ]
)


def truncate_raw(raw: str | bytes | None) -> str | None:
    """The stored form of a raw record: text, at most :data:`MAX_RAW_CHARS` characters.

    Examples
    --------
    >>> truncate_raw(b"abc")
    'abc'
    >>> len(truncate_raw("x" * 10_000) or "")
    4096
    """
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return text[:MAX_RAW_CHARS]


def dead_letters(
    *,
    source: str,
    reasons: Sequence[str],
    offsets: Sequence[int | None],
    raws: Sequence[str | bytes | None],
    domain: str | None = None,
    ts: dt.datetime | None = None,
) -> pa.Table:
    """Build a dead-letter table (one row per rejected record)."""
    if not len(reasons) == len(offsets) == len(raws):
        raise ValueError("reasons, offsets and raws must have the same length")
    now = ts or dt.datetime.now(dt.UTC)
    n = len(reasons)
    return pa.table(
        {
            "ts": pa.array([now] * n, type=pa.timestamp("us", tz="UTC")),
            "source": pa.array([source] * n, type=pa.string()),
            "offset": pa.array(list(offsets), type=pa.int64()),
            "domain": pa.array([domain] * n, type=pa.string()),
            "reason": pa.array(list(reasons), type=pa.string()),
            "raw": pa.array([truncate_raw(r) for r in raws], type=pa.string()),
        },
        schema=DEAD_LETTER_SCHEMA,
    )


def empty() -> pa.Table:
    """A dead-letter table with no rows."""
    return DEAD_LETTER_SCHEMA.empty_table()
