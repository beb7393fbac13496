"""Streaming readers of raw files: CSV, NDJSON, JSON record files and Parquet, in chunks.

Every reader yields :class:`RawChunk` objects: a Polars frame of raw records (at most ``chunk_rows``
rows) whose :data:`OFFSET_COLUMN` holds each record's position in the source, plus dead letters for
records that could not even be parsed. Compression is told by magic bytes, not by the file name:
gzip files are decompressed on the fly (by ISA-L in a background thread when the ``isal`` package is
installed, several times faster than zlib); zip and tar archives are read member by member (offsets
keep counting across members). CSV streams in blocks of whole records, each parsed by Polars, only
the columns the mapping reads.

Offsets count from 0: the data row for CSV (header excluded), the line for NDJSON (blank lines
included), the record for JSON record files, the row for Parquet.

The NDJSON reader has a fast path (Polars parses a whole chunk at once) and a slow path, taken
only for a chunk that Polars refuses: each line is checked on its own, and lines that are not
valid UTF-8, not valid JSON, not a JSON object, or longer than ``max_line_bytes`` become dead
letters with their line number while every good line of the chunk is kept. With field hints
(``read.fields``, as canonical events have), the fast path parses with a fixed schema, several
times faster than inferring one, and proves by counting that no field was left out (see
:func:`_only_known_fields`); a chunk where it cannot goes the inferring way.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
import typing
import zipfile
import zlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from finsecure.features._numba import kernel
from finsecure.ingest.deadletter import MAX_RAW_CHARS, dead_letters
from finsecure.ingest.mapping import ReadSpec

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "DEFAULT_MAX_LINE_BYTES",
    "OFFSET_COLUMN",
    "RawChunk",
    "ReadError",
    "compression_of",
    "parse_records",
    "read_csv",
    "read_json_records",
    "read_ndjson",
    "read_parquet",
    "read_raw",
]

OFFSET_COLUMN = "__offset__"
"""Column every raw chunk carries: the record's position in its source (Int64)."""

DEFAULT_CHUNK_ROWS = 100_000
DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_INFLATED_BYTES = 64 << 20
"""Most bytes :func:`parse_records` inflates a gzip body to: a small gzip bomb cannot fill memory."""
"""A JSON line longer than this (1 MiB) is rejected without being parsed."""

_READ_SIZE = 8 << 20
_BOM = b"\xef\xbb\xbf"
_BLANK_CANDIDATE_BYTES = 16


class ReadError(ValueError):
    """A file that cannot be read at all (missing, unreadable CSV structure); names the file."""


@dataclass(frozen=True, slots=True)
class RawChunk:
    """Raw records of one chunk.

    Attributes
    ----------
    frame
        The records as read (columns as in the source, all text for CSV), plus :data:`OFFSET_COLUMN`.
    first_offset
        Offset of the first record the chunk covers (also of rejected ones).
    offset_end
        Offset just after the last record the chunk covers: where to resume.
    rejects
        Dead letters (``finsecure.ingest.deadletter`` shape) of records that could not be parsed.
    """

    frame: pl.DataFrame
    first_offset: int
    offset_end: int
    rejects: pa.Table | None = None


_Reject = tuple[int, str, bytes | str | None]


def compression_of(head: bytes) -> str | None:
    """Name the container format from a file's first bytes (``gzip``, ``zip``, ``tar``) or ``None``.

    >>> compression_of(b"\\x1f\\x8b\\x08\\x00"), compression_of(b"PK\\x03\\x04"), compression_of(b'{"a": 1}')
    ('gzip', 'zip', None)
    """
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def _gunzip(raw: IO[bytes]) -> IO[bytes]:
    """A gzip stream's content. ISA-L, when installed, inflates several times faster than zlib and
    does it in a background thread, so decompression overlaps with parsing (it releases the GIL)."""
    try:
        from isal import igzip_threaded
    except ImportError:  # optional: the standard library does the same, only slower
        return typing.cast("IO[bytes]", gzip.GzipFile(fileobj=raw))
    # isal ships no annotations for igzip_threaded.open (it returns an io.BufferedReader)
    stream = igzip_threaded.open(raw, "rb", threads=1, block_size=_READ_SIZE)  # type: ignore[no-untyped-call]
    return typing.cast("IO[bytes]", stream)


def _decompress_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [OSError, EOFError, zlib.error]
    with contextlib.suppress(ImportError):
        from isal import isal_zlib

        errors.append(typing.cast("type[Exception]", isal_zlib.error))
    return tuple(errors)


_DECOMPRESS_ERRORS = _decompress_errors()


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[list[tuple[str, IO[bytes], str | None]]]:
    """The decompressed byte streams of a file: itself, its gzip content, or each archive member."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ReadError(f"{path}: cannot open: {exc.strerror}") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(raw)
        kind = compression_of(raw.read(512))
        raw.seek(0)
        if kind == "gzip":
            unzipped = _gunzip(raw)
            stack.callback(unzipped.close)
            yield [(str(path), unzipped, kind)]
        elif kind == "zip":
            archive = stack.enter_context(zipfile.ZipFile(raw))
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
            yield [(f"{path}!{name}", stack.enter_context(archive.open(name)), kind) for name in names]
        elif kind == "tar":
            tar = stack.enter_context(tarfile.open(fileobj=raw))
            members: list[tuple[str, IO[bytes], str | None]] = []
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    members.append((f"{path}!{member.name}", stack.enter_context(handle), kind))
            yield members
        else:
            yield [(str(path), raw, None)]


def _with_offsets(frame: pl.DataFrame, offsets: np.ndarray[Any, Any] | range | list[int]) -> pl.DataFrame:
    if isinstance(offsets, range):  # np.asarray would walk the range in Python
        values = np.arange(offsets.start, offsets.stop, offsets.step, dtype=np.int64)
    else:
        values = np.asarray(offsets, dtype=np.int64)
    series = pl.Series(OFFSET_COLUMN, values)
    if frame.width == 0:
        return series.to_frame()
    return frame.with_columns(series)


def _rejects(source: str, rejects: list[_Reject]) -> pa.Table | None:
    if not rejects:
        return None
    return dead_letters(
        source=source,
        reasons=[reason for _, reason, _ in rejects],
        offsets=[offset for offset, _, _ in rejects],
        raws=[raw for _, _, raw in rejects],
    )


# ------------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------------


def read_csv(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    separator: str = ",",
    header: bool = True,
    columns: tuple[str, ...] | None = None,
    source: str | None = None,
    keep: Collection[str] | None = None,
) -> Iterator[RawChunk]:
    """Read a CSV file (plain, gzip, or each member of a zip/tar) in chunks, every column as text.

    Reading everything as text keeps one odd value from breaking a whole file: the mapping's casts
    turn text into numbers and reject the rows where that fails. Rows with invalid UTF-8 become
    dead letters. With ``keep``, only those columns are parsed (the others are skipped, and stay
    out of dead letters too).

    The file streams in blocks of whole records (cut at a line end outside quotes), each parsed by
    Polars; a block of plain ASCII, the usual case, needs no UTF-8 check at all.

    Raises
    ------
    ReadError
        When the file is missing, its compression is broken, or its CSV structure is broken (e.g. an
        unclosed quote).
    """
    path = Path(path)
    name = source or str(path)
    offset = 0
    with _opened(path) as streams:
        for label, stream, _ in streams:
            names = list(columns) if columns else None
            has_header = header
            pending: pl.DataFrame | None = None
            lossy = False  # whether a pending row may hold text decoded lossily
            picked: list[int] | None = None
            try:
                for block in _csv_blocks(stream):
                    if keep is not None and picked is None:
                        names = (
                            names
                            or pl.read_csv(block, has_header=header, separator=separator, n_rows=0).columns
                        )
                        picked = [i for i, name in enumerate(names) if name in keep] or [0]
                    frame, block_lossy = _parse_csv_block(block, separator, has_header, names, picked)
                    if has_header:
                        names, has_header = names or frame.columns, False
                    if frame.height == 0:
                        continue
                    frame = frame.with_columns(
                        pl.int_range(offset, offset + frame.height, dtype=pl.Int64).alias(OFFSET_COLUMN)
                    )
                    offset += frame.height
                    pending = frame if pending is None else pl.concat([pending, frame], rechunk=False)
                    lossy = lossy or block_lossy
                    while pending is not None and pending.height >= chunk_rows:
                        yield _csv_chunk(pending.slice(0, chunk_rows), name, lossy)
                        pending = pending.slice(chunk_rows) if pending.height > chunk_rows else None
                        lossy = lossy and pending is not None
            except pl.exceptions.PolarsError as exc:
                raise ReadError(f"{label}: cannot read CSV after row {offset}: {exc}") from None
            except _DECOMPRESS_ERRORS as exc:
                raise ReadError(f"{label}: cannot decompress after row {offset}: {exc}") from None
            if pending is not None:
                yield _csv_chunk(pending, name, lossy)


def _csv_blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """Whole CSV records in blocks of about ``_READ_SIZE`` bytes (the first without a byte-order mark)."""
    carry = b""
    first = True
    while True:
        data = stream.read(_READ_SIZE)
        if first:
            data = data.removeprefix(_BOM)
            first = False
        if not data:
            if carry:
                yield carry
            return
        if carry:
            data = carry + data
        cut = _records_end(data)
        if cut == 0:
            carry = data
            continue
        yield data[:cut] if cut < len(data) else data
        carry = data[cut:]


def _records_end(data: bytes) -> int:
    """Just past the last line end that is outside quotes (0 if none).

    A line end is outside quotes when an even number of quote characters comes before it: escaped
    quotes (``""``) come in pairs, so they keep the count even.
    """
    end = data.rfind(b"\n")
    if end < 0:
        return 0
    if data.find(b'"', 0, end) < 0:
        return end + 1
    quotes = _count_byte(data, 0, end, ord('"'))
    while quotes % 2:
        previous = data.rfind(b"\n", 0, end)
        if previous < 0:
            return 0
        quotes -= _count_byte(data, previous, end, ord('"'))
        end = previous
    return end + 1


def _count_byte(data: bytes, start: int, stop: int, byte: int) -> int:
    """``data.count`` of one byte, several times faster for large blocks."""
    return int(
        np.count_nonzero(np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start) == byte)
    )


def _parse_csv_block(
    block: bytes, separator: str, header: bool, names: list[str] | None, picked: list[int] | None
) -> tuple[pl.DataFrame, bool]:
    """One block of records as text columns, and whether it had to be decoded lossily."""
    valid = block.isascii()
    if not valid:
        try:
            block.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
    frame = pl.read_csv(
        block,
        has_header=header,
        separator=separator,
        new_columns=names,
        columns=picked,
        infer_schema=False,
        encoding="utf8" if valid else "utf8-lossy",
        raise_if_empty=False,
    )
    return frame, not valid


def _csv_chunk(frame: pl.DataFrame, source: str, lossy: bool) -> RawChunk:
    offsets = frame[OFFSET_COLUMN]
    first, end = int(offsets[0]), int(offsets[-1]) + 1
    rejects = None
    if lossy:
        frame, rejects = _drop_invalid_utf8(frame, source)
    return RawChunk(frame, first, end, rejects)


def _drop_invalid_utf8(frame: pl.DataFrame, source: str) -> tuple[pl.DataFrame, pa.Table | None]:
    """Rows where lossy decoding left U+FFFD were not valid UTF-8: dead letters, not silent edits."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not text:
        return frame, None
    bad = frame.select(pl.any_horizontal(pl.col(text).str.contains("\ufffd", literal=True)).fill_null(False))
    mask = bad.to_series()
    if not mask.any():
        return frame, None
    rejected = frame.filter(mask)
    table = dead_letters(
        source=source,
        reasons=["not valid UTF-8"] * rejected.height,
        offsets=rejected[OFFSET_COLUMN].to_list(),
        raws=rejected.drop(OFFSET_COLUMN).write_ndjson().split("\n")[:-1],
    )
    return frame.filter(~mask), table


# ------------------------------------------------------------------------------------------------
# NDJSON
# ------------------------------------------------------------------------------------------------

_Lines = np.ndarray[Any, np.dtype[np.int64]]
"""Positions of the line ends (``\\n``) in a block of bytes."""
_Blob = bytes | memoryview
"""A block of whole lines: a read's bytes, or a view of part of them (no copy)."""


def _line_ends(blob: _Blob) -> _Lines:
    return np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 10)


def _line_blocks(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[_Blob, int, _Lines] | _Reject]:
    """Split a byte stream into blocks of whole lines, ``(blob, first_line, line_ends)``.

    A line longer than ``max_line_bytes`` that does not fit in one read is skipped as it streams
    past (never held in memory whole) and reported as ``(line, reason, head)``. The whole lines of a
    read are a view of it, not a copy: the line a read finishes (begun in the previous read) comes
    as a block of its own.
    """
    line_no = 0
    carry = b""
    skipping: tuple[int, bytes] | None = None
    first = True
    while True:
        data = stream.read(_READ_SIZE)
        if first:
            data = data.removeprefix(_BOM)
            first = False
        if not data:
            if skipping is not None:
                yield (line_no, _too_long(skipping[0], max_line_bytes), skipping[1])
            elif carry:
                yield (carry + b"\n", line_no, np.array([len(carry)], dtype=np.int64))
            return
        if skipping is not None:
            newline = data.find(b"\n")
            if newline < 0:
                skipping = (skipping[0] + len(data), skipping[1])
                continue
            yield (line_no, _too_long(skipping[0] + newline, max_line_bytes), skipping[1])
            line_no += 1
            skipping = None
            data = data[newline + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            carry += data
        else:
            start = 0
            if carry:
                start = data.find(b"\n") + 1
                head = carry + data[:start]
                yield (head, line_no, np.array([len(head) - 1], dtype=np.int64))
                line_no += 1
            if start <= last:
                blob: _Blob = memoryview(data)[start : last + 1] if start or last + 1 < len(data) else data
                ends = _line_ends(blob)
                yield (blob, line_no, ends)
                line_no += len(ends)
            carry = data[last + 1 :]
        if len(carry) > max_line_bytes:
            skipping = (len(carry), carry[:MAX_RAW_CHARS])
            carry = b""


def _too_long(size: int, limit: int) -> str:
    return f"line is {size:,} bytes, over the limit of {limit:,}"


def read_ndjson(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    records_path: str | None = None,
    source: str | None = None,
    fields: Sequence[tuple[str, str]] = (),
) -> Iterator[RawChunk]:
    """Read newline-delimited JSON in chunks of at most ``chunk_rows`` lines.

    With ``records_path`` (e.g. ``Records``), a line holding a list of records there (a CloudTrail
    file) yields those records; offsets then count records instead of lines. ``fields`` (name and
    JSON type, see :attr:`~finsecure.ingest.mapping.ReadSpec.fields`) lets whole chunks be parsed
    with a fixed schema, several times faster than inferring one; records that do not fit it are
    still read in full.
    """
    path = Path(path)
    name = source or str(path)
    hints = _FieldHints(fields) if fields and records_path is None else None
    state = _NdjsonState(name, chunk_rows, max_line_bytes, records_path, hints)
    with _opened(path) as streams:
        for label, stream, _ in streams:
            try:
                yield from state.feed(stream)
            except _DECOMPRESS_ERRORS as exc:
                raise ReadError(f"{label}: cannot decompress after line {state.base}: {exc}") from None
    yield from state.finish()


class _NdjsonState:
    """Groups line blocks into chunks and keeps the offsets going across archive members."""

    def __init__(
        self,
        source: str,
        chunk_rows: int,
        max_line_bytes: int,
        records_path: str | None,
        hints: _FieldHints | None = None,
    ) -> None:
        self.source = source
        self.chunk_rows = chunk_rows
        self.max_line_bytes = max_line_bytes
        self.records_path = records_path
        self.hints = hints
        self.base = 0  # lines of earlier archive members
        self.next_record = 0  # records yielded so far, for records_path offsets
        self.pending: list[tuple[_Blob, _Lines]] = []
        self.pending_lines = 0
        self.pending_first = 0
        self.rejects: list[_Reject] = []
        self.end = 0

    def feed(self, stream: IO[bytes]) -> Iterator[RawChunk]:
        lines_seen = 0
        for item in _line_blocks(stream, self.max_line_bytes):
            if isinstance(item[0], int):
                line, reason, head = item
                yield from self.flush(force=True)
                self.rejects.append((self.base + line, reason, head))
                lines_seen = line + 1
                self.pending_first = self.base + lines_seen
                continue
            blob, first_line, ends = item
            if not self.pending:
                self.pending_first = self.base + first_line
            self.pending.append((blob, ends))
            self.pending_lines += len(ends)
            lines_seen = first_line + len(ends)
            yield from self.flush(force=False)
        yield from self.flush(force=True)
        self.base += lines_seen
        self.pending_first = self.base

    def flush(self, *, force: bool) -> Iterator[RawChunk]:
        """Yield chunks of ``chunk_rows`` lines from the pending blocks (with ``force``, the rest too).

        A chunk is cut out of the blocks it spans with one copy (a join), never joined whole and sliced
        again: at several hundred bytes a line, copies are a good part of the reading cost.
        """
        while self.pending and (force or self.pending_lines >= self.chunk_rows):
            parts: list[_Blob] = []
            part_ends: list[_Lines] = []
            lines = size = 0
            while self.pending and lines < self.chunk_rows:
                blob, ends = self.pending[0]
                need = self.chunk_rows - lines
                if len(ends) <= need:
                    self.pending.pop(0)
                    taken, taken_ends = blob, ends
                else:  # the chunk ends inside this block: keep its tail for the next chunk
                    cut = int(ends[need - 1]) + 1
                    taken, taken_ends = blob[:cut], ends[:need]
                    self.pending[0] = (blob[cut:], ends[need:] - cut)
                parts.append(taken)
                part_ends.append(taken_ends + size if size else taken_ends)
                size += len(taken)
                lines += len(taken_ends)
            first = self.pending_first
            self.pending_lines -= lines
            self.pending_first = first + lines
            joined = b"".join(parts) if len(parts) > 1 or isinstance(parts[0], memoryview) else parts[0]
            joined_ends = part_ends[0] if len(part_ends) == 1 else np.concatenate(part_ends)
            yield self.chunk(joined, first, joined_ends)

    def chunk(self, blob: bytes, first_line: int, ends: _Lines) -> RawChunk:
        frame, rejects = _parse_lines(blob, first_line, self.max_line_bytes, ends=ends, hints=self.hints)
        rejects = self.rejects + rejects
        self.rejects = []
        line_end = first_line + len(ends)
        if self.records_path is not None:
            frame, first, end = _unwrap_records(frame, self.records_path, self.next_record)
            self.next_record = end
        else:
            first, end = first_line, line_end
        self.end = end
        return RawChunk(frame, first, end, _rejects(self.source, rejects))

    def finish(self) -> Iterator[RawChunk]:
        if self.rejects:
            yield RawChunk(
                _with_offsets(pl.DataFrame(), []), self.end, self.end, _rejects(self.source, self.rejects)
            )
            self.rejects = []


_HINT_TYPES: dict[str, pl.DataType] = {
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
}
_SAMPLE_LINES = 1000


class _FieldHints:
    """Parses NDJSON chunks with a fixed schema: the hinted fields seen so far, with their types.

    Polars parses a chunk several times faster with a schema than when it infers one, but silently
    drops fields the schema lacks. So the schema holds every field seen in the file so far (learnt
    from the first lines, and from any chunk that needed inferring), and each chunk is checked to
    hold no other field; a chunk that might goes the inferring way, and its new fields are learnt.
    """

    def __init__(self, fields: Sequence[tuple[str, str]]) -> None:
        self.types = {name: _HINT_TYPES[kind] for name, kind in fields}
        self.keys: dict[str, None] = {}

    def learn(self, columns: Sequence[str]) -> None:
        for column in columns:
            self.keys.setdefault(column, None)

    def parse(self, blob: bytes, ends: _Lines) -> pl.DataFrame | None:
        """The chunk's records with a fixed schema, or ``None`` when that cannot be trusted."""
        if blob.find(b"\\") >= 0:
            # escapes make a text value differ from its raw bytes, which the field check relies on
            return None
        if not self.keys:
            sample = blob[: int(ends[min(len(ends), _SAMPLE_LINES) - 1]) + 1]
            try:
                self.learn(pl.read_ndjson(sample, infer_schema_length=None).columns)
            except pl.exceptions.PolarsError:
                return None
        typed = pl.Schema({key: self.types.get(key, pl.String()) for key in self.keys})
        frame = _read_with_schema(blob, typed)
        if frame is None:  # a value of another type: read every field as text, the mapping casts it
            frame = _read_with_schema(blob, pl.Schema(dict.fromkeys(self.keys, pl.String())))
        if frame is None or not _only_known_fields(blob, frame):
            return None
        return frame


def _read_with_schema(blob: bytes, schema: pl.Schema) -> pl.DataFrame | None:
    try:
        return pl.read_ndjson(blob, schema=schema)
    except pl.exceptions.PolarsError:
        return None


def _only_known_fields(blob: bytes, frame: pl.DataFrame) -> bool:
    """Whether the records in ``blob`` (no backslash in it) hold no non-null field missing from ``frame``.

    Every field of a record owns exactly one ``:`` after its name. Without escapes, a text value reads
    exactly as its raw bytes, so the colons of the raw chunk are: one per field, plus those inside
    text values (counted in ``frame``), plus those inside values of unknown fields. A field whose
    value is null leaves a null in ``frame`` too, so ``:null`` tokens are counted apart. Whatever is
    left over after taking away the fields ``frame`` holds is an unknown field (or a repeated one);
    every term is at least zero, so "nothing left" proves there is none. (Counting a ``:null`` inside
    text values where there is none, e.g. across two values, can only leave more over: still safe.)
    """
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    values = frame.height * frame.width - int(sum(frame.null_count().row(0)))
    colons, nulls = _colon_counts(np.frombuffer(blob, dtype=np.uint8))
    in_text = [_colons_in(frame[name]) for name in text]
    left = colons - values - sum(found for found, _ in in_text)
    if left > 0:
        left -= nulls - sum(found for _, found in in_text)
    return left == 0


@kernel
def _colon_counts(data: npt.NDArray[np.uint8]) -> tuple[int, int]:
    """Colons in ``data``, and how many of them start a ``:null`` or ``: null`` token (one pass).

    >>> _colon_counts(np.frombuffer(b'{"a":null,"b": null,"c":"x:nul"}', dtype=np.uint8))
    (4, 2)
    """
    colons = 0
    nulls = 0
    size = data.shape[0]
    for i in range(size):
        if data[i] != 58:  # ":"
            continue
        colons += 1
        j = i + 1
        if j < size and data[j] == 32:  # one space
            j += 1
        if (
            j + 3 < size
            and data[j] == 110  # "n"
            and data[j + 1] == 117  # "u"
            and data[j + 2] == 108  # "l"
            and data[j + 3] == 108  # "l"
        ):
            nulls += 1
    return colons, nulls


def _colons_in(column: pl.Series) -> tuple[int, int]:
    """Colons in the text of a column, and how many of them start a ``:null`` or ``: null`` token,
    counted in its Arrow data buffers (faster than value by value; a token may be counted across two
    values, see :func:`_only_known_fields`)."""
    found = nulls = 0
    exported = column.to_arrow()
    for chunk in exported.chunks if isinstance(exported, pa.ChunkedArray) else [exported]:
        if len(chunk) == 0 or chunk.null_count == len(chunk):
            continue
        if not pa.types.is_large_string(chunk.type):  # another export layout: count value by value
            text = pl.Series(chunk).str
            found += int(text.count_matches(":", literal=True).sum() or 0)
            nulls += int(text.count_matches(":null", literal=True).sum() or 0)
            nulls += int(text.count_matches(": null", literal=True).sum() or 0)
            continue
        # large_string buffers: validity, int64 offsets, data; only the bytes between the first and
        # last offset belong to the values
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)
        start, stop = int(offsets[chunk.offset]), int(offsets[chunk.offset + len(chunk)])
        colons, tokens = _colon_counts(np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[start:stop])
        found += colons
        nulls += tokens
    return found, nulls


def _parse_lines(
    blob: bytes,
    first_line: int,
    max_line_bytes: int,
    *,
    ends: _Lines | None = None,
    hints: _FieldHints | None = None,
) -> tuple[pl.DataFrame, list[_Reject]]:
    """Parse whole lines of NDJSON (``blob`` ends with a newline): fast path, else line by line."""
    if ends is None:
        ends = _line_ends(blob)
    if len(ends) == 0:
        return _with_offsets(pl.DataFrame(), []), []
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    if len(blob) <= max_line_bytes or not (lengths > max_line_bytes).any():
        frame = hints.parse(blob, ends) if hints is not None else None
        if frame is None:
            try:
                frame = pl.read_ndjson(blob, infer_schema_length=None)
            except pl.exceptions.PolarsError:
                frame = None
            if frame is not None and hints is not None:
                hints.learn(frame.columns)
        if frame is not None:
            if frame.height == len(ends):
                return _with_offsets(frame, range(first_line, first_line + len(ends))), []
            # Polars skips blank lines: find them among the short lines to keep offsets exact.
            short = np.flatnonzero(lengths <= _BLANK_CANDIDATE_BYTES)
            blank = [int(i) for i in short if not blob[starts[i] : ends[i]].strip()]
            kept = np.delete(np.arange(len(ends)), blank)
            if frame.width and len(kept) == frame.height:
                return _with_offsets(frame, kept + first_line), []
    return _parse_lines_slowly(blob, starts, ends, first_line, max_line_bytes)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    return "a number"


def _check_line(line: bytes, max_line_bytes: int) -> tuple[dict[str, Any] | None, str | None]:
    """One raw line as a JSON object, or the reason it is not one (never echoing its content)."""
    if len(line) > max_line_bytes:
        return None, _too_long(len(line), max_line_bytes)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (at byte {exc.start + 1})"
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except ValueError as exc:  # NaN / Infinity, or a number Python cannot hold
        return None, f"not valid JSON: {exc}"
    except RecursionError:
        return None, "not valid JSON: nested too deeply"
    if not isinstance(value, dict):
        return None, f"not a JSON object but {_json_kind(value)}"
    return value, None


def _parse_lines_slowly(
    blob: bytes,
    starts: np.ndarray[Any, Any],
    ends: np.ndarray[Any, Any],
    first_line: int,
    max_line_bytes: int,
) -> tuple[pl.DataFrame, list[_Reject]]:
    rejects: list[_Reject] = []
    good_lines: list[bytes] = []
    objects: list[dict[str, Any]] = []
    offsets: list[int] = []
    for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        line = blob[start:end]
        if end - start <= max_line_bytes and not line.strip():
            continue
        value, reason = _check_line(line, max_line_bytes)
        if value is None:
            rejects.append((first_line + index, reason or "unreadable", line[:MAX_RAW_CHARS]))
            continue
        good_lines.append(line)
        objects.append(value)
        offsets.append(first_line + index)
    return _with_offsets(_frame_of(good_lines, objects), offsets), rejects


def _frame_of(lines: list[bytes], objects: list[dict[str, Any]]) -> pl.DataFrame:
    """A frame of records that are each valid JSON objects, even when their types clash."""
    if not objects:
        return pl.DataFrame()
    try:
        frame = pl.read_ndjson(b"\n".join(lines), infer_schema_length=None)
        if frame.height == len(objects):
            return frame
    except pl.exceptions.PolarsError:
        pass
    # Types that clash across records (a list here, a number there) or numbers Polars cannot hold:
    # keep every value as text (nested values as JSON text); the mapping's casts sort them out.
    keys = list(dict.fromkeys(key for obj in objects for key in obj))
    if not keys:
        return pl.DataFrame()
    return pl.DataFrame(
        {key: [_as_text(obj.get(key)) for obj in objects] for key in keys},
        schema=dict.fromkeys(keys, pl.String),
    )


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _field_dtype(struct: pl.Struct, name: str) -> pl.DataType:
    dtype = next(f.dtype for f in struct.fields if f.name == name)
    return dtype if isinstance(dtype, pl.DataType) else dtype()


def _unwrap_records(
    frame: pl.DataFrame, records_path: str, next_record: int
) -> tuple[pl.DataFrame, int, int]:
    """Replace documents that hold a list of records at ``records_path`` by those records."""
    first, *rest = records_path.split(".")
    body = frame.drop(OFFSET_COLUMN)
    expr = pl.col(first)
    dtype: pl.DataType | None = body.schema.get(first)
    for part in rest:
        if not isinstance(dtype, pl.Struct) or part not in {f.name for f in dtype.fields}:
            dtype = None
            break
        dtype = _field_dtype(dtype, part)
        expr = expr.struct.field(part)
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        envelopes = body.select(expr.alias("__records")).explode("__records")
        records = envelopes.filter(pl.col("__records").is_not_null()).unnest("__records")
        flat = body.filter(expr.is_null()).drop(first)
        if flat.height and flat.width:
            records = pl.concat([records, flat], how="diagonal_relaxed")
    else:
        records = body
    end = next_record + records.height
    return _with_offsets(records, range(next_record, end)), next_record, end


# ------------------------------------------------------------------------------------------------
# Whole JSON documents and in-memory bodies
# ------------------------------------------------------------------------------------------------


def _parse_document(
    data: bytes, *, records_path: str | None, max_line_bytes: int, hints: _FieldHints | None = None
) -> tuple[pl.DataFrame, list[_Reject]]:
    """A JSON array, a JSON document holding records at ``records_path``, or NDJSON."""
    data = data.removeprefix(_BOM)
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        frame, rejects = _parse_array(data)
    else:
        blob = data if data.endswith(b"\n") else data + b"\n"
        frame, rejects = _parse_lines(blob, 0, max_line_bytes, hints=hints if records_path is None else None)
        if rejects and frame.height == 0 and stripped.startswith(b"{"):
            # perhaps one pretty-printed document rather than one per line
            value, _ = _check_line(data, max(max_line_bytes, len(data)))
            if value is not None:
                frame, rejects = _with_offsets(_frame_of([json.dumps(value).encode()], [value]), [0]), []
    if records_path is not None:
        frame, _, _ = _unwrap_records(frame, records_path, 0)
    return frame, rejects


def _parse_array(data: bytes) -> tuple[pl.DataFrame, list[_Reject]]:
    with contextlib.suppress(pl.exceptions.PolarsError):
        frame = pl.read_json(data, infer_schema_length=None)
        if frame.width and not any(name == "" for name in frame.columns):
            return _with_offsets(frame, range(frame.height)), []
    try:
        values = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        reason = (
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else f"not valid JSON: {exc}"
        )
        return _with_offsets(pl.DataFrame(), []), [(0, reason, data[:MAX_RAW_CHARS])]
    rejects: list[_Reject] = []
    objects: list[dict[str, Any]] = []
    offsets: list[int] = []
    for index, value in enumerate(values):
        if isinstance(value, dict):
            objects.append(value)
            offsets.append(index)
        else:
            rejects.append((index, f"not a JSON object but {_json_kind(value)}", json.dumps(value)))
    lines = [json.dumps(obj).encode() for obj in objects]
    return _with_offsets(_frame_of(lines, objects), offsets), rejects


def parse_records(
    body: bytes,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    records_path: str | None = None,
    source: str = "http",
    fields: Sequence[tuple[str, str]] = (),
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> tuple[pl.DataFrame, pa.Table]:
    """Parse an in-memory body of NDJSON, a JSON array of objects, or one JSON object.

    A gzip body is decompressed first, to at most ``max_inflated_bytes`` (beyond it, or when the
    inflated data is gzip again, the whole body is one dead letter: a bomb is never inflated).
    Offsets (:data:`OFFSET_COLUMN`) are line numbers for NDJSON and positions in the array otherwise.
    Bad records become dead letters; good ones are kept.
    ``fields`` are hints as in :func:`read_ndjson` (canonical events: ``canonical_mapping().read.fields``).

    Examples
    --------
    >>> frame, rejects = parse_records(b'{"a": 1}\\nnot json\\n{"a": 2}\\n')
    >>> frame["a"].to_list(), frame[OFFSET_COLUMN].to_list()
    ([1, 2], [0, 2])
    >>> rejects.column("offset").to_pylist(), rejects.column("reason").to_pylist()
    ([1], ['not valid JSON: Expecting value (column 1)'])
    """
    if compression_of(body[:512]) == "gzip":
        inflated, problem = _inflate_capped(body, max_inflated_bytes)
        if inflated is None:
            return _with_offsets(pl.DataFrame(), []), _rejects(source, [(0, problem, None)]) or _empty()
        body = inflated
    hints = _FieldHints(fields) if fields else None
    frame, rejects = _parse_document(
        body, records_path=records_path, max_line_bytes=max_line_bytes, hints=hints
    )
    return frame, _rejects(source, rejects) or _empty()


def _inflate_capped(body: bytes, limit: int) -> tuple[bytes | None, str]:
    """``body`` inflated (every gzip member), or ``None`` and why not: broken, too big, or gzip again."""
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while data:
            inflater = zlib.decompressobj(wbits=31)
            chunk = inflater.decompress(data, limit - size + 1)
            size += len(chunk)
            out.append(chunk)
            if size > limit or inflater.unconsumed_tail:
                return None, f"gzip data inflates past the {limit} bytes allowed (a zip bomb?)"
            if not inflater.eof:
                return None, "broken gzip data (it ends too early)"
            data = inflater.unused_data
            if data and compression_of(data[:512]) != "gzip":
                break  # trailing bytes after the last member, as gzip.decompress ignores them
    except zlib.error:
        return None, "broken gzip data"
    inflated = b"".join(out)
    if compression_of(inflated[:512]) == "gzip":
        return None, "gzip data that holds gzip data again is not read (a zip bomb?)"
    return inflated, ""


def _empty() -> pa.Table:
    return dead_letters(source="", reasons=[], offsets=[], raws=[])


def read_json_records(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    records_path: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    source: str | None = None,
) -> Iterator[RawChunk]:
    """Read JSON record files: an array of objects, documents holding records at ``records_path``
    (CloudTrail's ``{"Records": [...]}``), one per line or pretty-printed, or plain NDJSON.

    A file whose first line is a whole JSON document streams like NDJSON; otherwise the whole
    document is read into memory (CloudTrail files are small).
    """
    path = Path(path)
    name = source or str(path)
    offset = 0
    with _opened(path) as streams:
        for _, stream, _ in streams:
            head = stream.read(64 << 10)
            first_line = head.removeprefix(_BOM).split(b"\n", 1)[0]
            whole_line, _ = _check_line(first_line, len(first_line) + 1) if b"\n" in head else (None, None)
            rest = stream.read()
            if whole_line is not None and head.lstrip().startswith(b"{"):
                state = _NdjsonState(name, chunk_rows, max_line_bytes, records_path)
                state.next_record = offset
                yield from state.feed(io.BytesIO(head + rest))
                yield from state.finish()
                offset = state.end
                continue
            frame, rejects = _parse_document(
                head + rest, records_path=records_path, max_line_bytes=max_line_bytes
            )
            frame = frame.with_columns(pl.col(OFFSET_COLUMN) + offset)
            rejects = [(o + offset, reason, raw) for o, reason, raw in rejects]
            total = max(frame.height, 1)
            for start in range(0, total, chunk_rows):
                part = frame.slice(start, chunk_rows)
                first = offset + start
                yield RawChunk(
                    part, first, offset + min(start + chunk_rows, frame.height), _rejects(name, rejects)
                )
                rejects = []
            offset += frame.height


# ------------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------------


def read_parquet(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    source: str | None = None,
    keep: Collection[str] | None = None,
) -> Iterator[RawChunk]:
    """Read a Parquet file (or a gzip-compressed or archived one) in chunks of rows (with ``keep``,
    only those columns).

    The file is read a few row groups at a time (as many as fit in ``chunk_rows``; a bigger row group
    alone, then cut in slices), only when the consumer asks for the next chunk: memory holds one
    such span, however far behind the consumer is.
    """
    path = Path(path)
    offset = 0
    with _opened(path) as streams:
        for label, stream, kind in streams:
            target: str | bytes = str(path) if kind is None else stream.read()
            try:
                metadata = pq.read_metadata(target if isinstance(target, str) else pa.BufferReader(target))
                groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
                scan = pl.scan_parquet(target)
                if keep is not None:
                    scan = scan.select([n for n in scan.collect_schema().names() if n in keep])
                start = 0
                for rows in _row_group_spans(groups, chunk_rows):
                    frame = scan.slice(start, rows).collect()
                    start += rows
                    for part in range(0, frame.height, chunk_rows):
                        piece = frame.slice(part, chunk_rows)
                        first = offset
                        offset += piece.height
                        yield RawChunk(_with_offsets(piece, range(first, offset)), first, offset)
            except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
                raise ReadError(f"{label}: cannot read Parquet after row {offset}: {exc}") from None


def _row_group_spans(groups: Sequence[int], chunk_rows: int) -> Iterator[int]:
    """Rows per read: consecutive row groups merged up to ``chunk_rows`` (a bigger group on its own).

    >>> list(_row_group_spans([40, 40, 40, 250, 0, 10], 100))
    [80, 40, 250, 10]
    """
    span = 0
    for rows in groups:
        if span and span + rows > chunk_rows:
            yield span
            span = 0
        span += rows
    if span:
        yield span


def read_raw(
    path: str | Path,
    read: ReadSpec,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    source: str | None = None,
    keep: Collection[str] | None = None,
) -> Iterator[RawChunk]:
    """Read a raw file the way a mapping's ``read`` section says.

    ``keep`` names the columns worth parsing (see :meth:`~finsecure.ingest.mapping.Mapping.read_columns`);
    CSV and Parquet skip the others, JSON formats read everything.
    """
    if read.format == "csv":
        return read_csv(
            path,
            chunk_rows=chunk_rows,
            separator=read.separator,
            header=read.header,
            columns=read.columns,
            source=source,
            keep=keep,
        )
    if read.format == "ndjson":
        return read_ndjson(
            path,
            chunk_rows=chunk_rows,
            max_line_bytes=max_line_bytes,
            records_path=read.records_path,
            source=source,
            fields=read.fields,
        )
    if read.format == "json-records":
        return read_json_records(
            path,
            chunk_rows=chunk_rows,
            records_path=read.records_path,
            max_line_bytes=max_line_bytes,
            source=source,
        )
    return read_parquet(path, chunk_rows=chunk_rows, source=source, keep=keep)
