"""Writing simulated events to files, and reading them back as canonical frames.

Two formats:

* **NDJSON** (``.ndjson``, ``.jsonl``, optionally ``.gz``): one file, one event per line, domains
  interleaved in the order they were generated; each line holds its domain's canonical columns.
  Compressed output is byte-for-byte reproducible (the gzip header carries no time or name).
* **Parquet** (``.parquet``): a directory laid out like the event lake,
  ``<out>/domain=<d>/part-00000.parquet``: each file holds exactly one domain's canonical columns, sorted
  by ``ts``. DuckDB and Polars read it as one dataset (``<out>/*/*.parquet``, Hive partitioning).

Example
-------
>>> import datetime as dt, tempfile
>>> from finsecure.sim.frames import canonical_frame
>>> frame = canonical_frame(Domain.auth, 1, {"ts": np.array([0]), "action": "login"}, source="test")
>>> frame = frame.with_columns(event_id=pl.lit("e1"))
>>> with tempfile.TemporaryDirectory() as tmp:
...     for name in ("run.ndjson.gz", "run.parquet"):
...         with open_writer(Path(tmp) / name) as writer:
...             writer.write(Domain.auth, frame)
...         print(name, read_events(Path(tmp) / name)[Domain.auth].equals(frame))
run.ndjson.gz True
run.parquet True
"""

from __future__ import annotations

import gzip
import io
import shutil
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import polars as pl

from finsecure.event.schemas import Domain
from finsecure.sim.frames import POLARS_SCHEMAS, WIDE_SCHEMA

__all__ = [
    "FORMATS",
    "EventWriter",
    "NdjsonWriter",
    "ParquetDatasetWriter",
    "format_of",
    "open_writer",
    "read_events",
]

Format = Literal["ndjson", "parquet"]
Compression = Literal["zstd", "lz4", "snappy", "gzip", "brotli", "uncompressed"]
FORMATS: tuple[str, ...] = ("ndjson", "parquet")


def format_of(path: Path | str, fmt: str | None = None) -> Format:
    """The output format: ``fmt`` when given, else from the file name (``.parquet``, ``.ndjson``, ``.jsonl``,
    with ``.gz`` allowed on the JSON ones).

    Raises
    ------
    ValueError
        If neither says a known format.
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
        return "parquet" if fmt == "parquet" else "ndjson"
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    raise ValueError(f"cannot tell the format of {str(path)!r}: name it .parquet, .ndjson or .ndjson.gz")


class EventWriter(ABC):
    """Receives canonical frames of any domain, in order, and writes them out."""

    path: Path
    rows: int = 0

    @abstractmethod
    def write(self, domain: Domain, frame: pl.DataFrame) -> None:
        """Write rows of one domain (canonical columns, in order)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and close; the output is complete only after this."""

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NdjsonWriter(EventWriter):
    """One event per line; ``.gz`` names are gzip-compressed without a time stamp (reproducible bytes)."""

    def __init__(self, path: Path | str, *, compress_level: int = 6) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._raw: io.BufferedIOBase = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._out: io.BufferedIOBase = (
            gzip.GzipFile(filename="", fileobj=self._raw, mode="wb", mtime=0, compresslevel=compress_level)
            if self.path.name.lower().endswith(".gz")
            else self._raw
        )

    def write(self, domain: Domain, frame: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.write_ndjson(buffer)
        self._out.write(buffer.getbuffer())
        self.rows += frame.height

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()


class ParquetDatasetWriter(EventWriter):
    """``<path>/domain=<d>/part-NNNNN.parquet``: each domain buffered and written in parts of ``part_rows``.

    Parts are encoded on a background thread (Polars releases the GIL), so on a machine with two cores
    generation and writing overlap; at most one part is being written while the next one fills. Column
    statistics are off by default: they cost a quarter of the write time and a replay reads whole files.
    An existing directory at ``path`` is replaced (its old parts would mix with the new ones).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        part_rows: int = 500_000,
        compression: Compression = "zstd",
        statistics: bool = False,
        background: bool = True,
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            shutil.rmtree(self.path)
        elif self.path.exists():
            self.path.unlink()
        self.path.mkdir(parents=True)
        self.part_rows = part_rows
        self.compression = compression
        self.statistics = statistics
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-parquet") if background else None
        )
        self._writing: Future[None] | None = None
        self._buffers: dict[Domain, list[pl.DataFrame]] = {d: [] for d in Domain}
        self._buffered: dict[Domain, int] = dict.fromkeys(Domain, 0)
        self._parts: dict[Domain, int] = dict.fromkeys(Domain, 0)

    def write(self, domain: Domain, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        self._buffers[domain].append(frame)
        self._buffered[domain] += frame.height
        self.rows += frame.height
        if self._buffered[domain] >= self.part_rows:
            self._flush(domain)

    def _flush(self, domain: Domain) -> None:
        frames = self._buffers[domain]
        if not frames:
            return
        folder = self.path / f"domain={domain.value}"
        folder.mkdir(exist_ok=True)
        target = folder / f"part-{self._parts[domain]:05d}.parquet"
        self._parts[domain] += 1
        self._buffers[domain] = []
        self._buffered[domain] = 0
        self._wait()
        if self._pool is None:
            self._write_part(target, frames)
        else:
            self._writing = self._pool.submit(self._write_part, target, frames)

    def _write_part(self, target: Path, frames: list[pl.DataFrame]) -> None:
        pl.concat(frames, rechunk=False).write_parquet(
            target,
            compression=self.compression,
            statistics=self.statistics,
        )

    def _wait(self) -> None:
        """Let the part being written finish (re-raising its error, if any)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def close(self) -> None:
        try:
            for domain in Domain:
                self._flush(domain)
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def open_writer(path: Path | str, fmt: str | None = None) -> EventWriter:
    """A writer for ``path``, with default settings, in the format its name (or ``fmt``) says."""
    if format_of(path, fmt) == "parquet":
        return ParquetDatasetWriter(path)
    return NdjsonWriter(path)


def read_events(path: Path | str, fmt: str | None = None) -> dict[Domain, pl.DataFrame]:
    """Read a simulator output back as one canonical frame per domain (rows in file order).

    Domains without rows are left out.
    """
    source = Path(path)
    frames: dict[Domain, pl.DataFrame] = {}
    if format_of(source, fmt) == "parquet":
        for domain in Domain:
            files = sorted((source / f"domain={domain.value}").glob("*.parquet"))
            if files:
                frame = pl.concat([pl.read_parquet(f) for f in files])
                frames[domain] = frame.select([pl.col(n).cast(t) for n, t in POLARS_SCHEMAS[domain].items()])
        return frames
    raw = gzip.decompress(source.read_bytes()) if source.name.lower().endswith(".gz") else source.read_bytes()
    if not raw.strip():
        return frames
    # The JSON reader takes 64-bit integers only; narrower canonical types are restored per domain.
    schema = {
        name: pl.String if name == "ts" else (pl.Int64 if dtype.is_integer() else dtype)
        for name, dtype in WIDE_SCHEMA.items()
    }
    everything = pl.read_ndjson(io.BytesIO(raw), schema=schema).with_columns(
        pl.col("ts").str.to_datetime(time_unit="us", time_zone="UTC")
    )
    domains = everything["domain"].to_numpy()
    for domain in Domain:
        rows = np.flatnonzero(domains == domain.value)
        if len(rows):
            frames[domain] = everything[rows].select(
                [pl.col(n).cast(t) for n, t in POLARS_SCHEMAS[domain].items()]
            )
    return frames
