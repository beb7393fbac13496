"""Batches on the wire: Arrow IPC stream bytes, and the stable entity hash that picks a partition.

A message carries one batch of one domain as an Arrow IPC *stream* (schema + record batches), with the
batch's ``domain``, ``source`` and ``seq`` in the schema metadata, so a message is self-describing. Column
buffers are written as they are (optionally LZ4- or Zstandard-compressed) and read back without
copying where Arrow allows it. Strings travel offset-based (Arrow ``large_string``), so a message cut
from a bigger batch carries only its own rows' bytes.

Partitioning must agree across processes, machines and library versions, so it uses its own hash
(FNV-1a 64 over the UTF-8 bytes, then the MurmurHash3 finaliser), never Python's ``hash`` or a
library's internal one.

Example
-------
>>> from finsecure.pipeline.batch import Batch
>>> from finsecure.pipeline.testing import sample_frame
>>> batch = Batch("payment", sample_frame("payment", 3), source="doc", seq=7)
>>> back = decode_batch(encode_batch(batch))
>>> back.domain, back.source, back.seq, back.frame.equals(batch.frame)
(<Domain.payment: 'payment'>, 'doc', 7, True)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
from numba import njit

from finsecure.event.schemas import SCHEMA_VERSION, Domain
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.engine import canonical_polars_schema

__all__ = [
    "PARTITION_KEYS",
    "CodecError",
    "Compression",
    "PartitionPlan",
    "decode_batch",
    "dedup_id",
    "dedup_id_of",
    "encode_batch",
    "encode_table",
    "partition_of",
    "plan_partitions",
    "split_by_partition",
    "stable_hash",
    "to_wire",
]

Compression = Literal["lz4", "zstd"] | None

_META_DOMAIN = b"finsecure.domain"
_META_SOURCE = b"finsecure.source"
_META_SEQ = b"finsecure.seq"
_META_VERSION = b"finsecure.schema_version"

PARTITION_KEYS: Mapping[Domain, tuple[str, ...]] = MappingProxyType(
    {
        Domain.payment: ("card_id", "account_id", "user_id"),
        Domain.auth: ("user_id", "device_id", "src_ip"),
        Domain.network: ("src_ip", "dst_ip"),
        Domain.cloud: ("user_id", "principal_id", "access_key_id"),
    }
)
"""Per domain, the entity columns whose first non-null value picks a row's partition (then ``event_id``,
which spreads rows without any entity evenly)."""


class CodecError(ValueError):
    """Bytes that are not a FinSecure batch (not Arrow IPC, no domain, or not the canonical columns)."""


def encode_batch(batch: Batch, *, compression: Compression = "lz4") -> bytes:
    """Serialise a batch as Arrow IPC stream bytes.

    Parameters
    ----------
    batch
        Any batch: canonical columns first, plus any columns steps added.
    compression
        ``"lz4"`` (fast, the default), ``"zstd"`` (smaller) or ``None``.
    """
    return encode_table(
        to_wire(batch.frame), domain=batch.domain, source=batch.source, seq=batch.seq, compression=compression
    )


def to_wire(frame: pl.DataFrame) -> pa.Table:
    """The Arrow table that goes on the wire: plain (offset-based) strings, not Polars' string views.

    A slice of a string-view column still points at every data buffer of the whole column, and IPC writes
    those buffers in full; offset-based strings are written for just the rows of the slice.
    """
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def encode_table(
    table: pa.Table,
    *,
    domain: Domain | str,
    source: str,
    seq: int = 0,
    compression: Compression = "lz4",
) -> bytes:
    """Serialise an Arrow table (e.g. a zero-copy slice of :func:`to_wire`) as one batch message."""
    table = table.replace_schema_metadata(
        {
            _META_DOMAIN: Domain(domain).value.encode(),
            _META_SOURCE: source.encode(),
            _META_SEQ: str(seq).encode(),
            _META_VERSION: SCHEMA_VERSION.encode(),
        }
    )
    sink = pa.BufferOutputStream()
    # Messages are small: compressing buffers on a thread pool costs more than it saves.
    options = pa.ipc.IpcWriteOptions(compression=compression, use_threads=False)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def decode_batch(data: bytes | bytearray | memoryview, *, arrived_ns: int | None = None) -> Batch:
    """Read a batch written by :func:`encode_batch` (columns reference ``data`` where possible).

    Raises
    ------
    CodecError
        If the bytes are not an Arrow IPC stream, carry no known domain, or their first columns are not
        the domain's canonical columns.
    """
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CodecError(f"not an Arrow IPC stream ({len(data)} bytes): {exc}") from None
    metadata: Mapping[bytes, bytes] = table.schema.metadata or {}
    raw_domain = metadata.get(_META_DOMAIN, b"").decode(errors="replace")
    try:
        domain = Domain(raw_domain)
    except ValueError:
        raise CodecError(f"batch has no known domain in its metadata (got {raw_domain!r})") from None
    version = metadata.get(_META_VERSION, b"").decode(errors="replace")
    if version != SCHEMA_VERSION:
        raise CodecError(f"batch has schema version {version!r}; this process reads {SCHEMA_VERSION!r}")
    frame = pl.DataFrame(table)
    canonical = canonical_polars_schema(domain)
    head = list(frame.schema.items())[: len(canonical)]
    if head != list(canonical.items()):
        raise CodecError(f"{domain} batch does not start with the canonical {domain} columns")
    try:
        seq = int(metadata.get(_META_SEQ, b"0"))
    except ValueError:
        raise CodecError("batch metadata has a seq that is not a number") from None
    return Batch(
        domain=domain,
        frame=frame,
        source=metadata.get(_META_SOURCE, b"bus").decode(errors="replace"),
        seq=seq,
        arrived_ns=time.monotonic_ns() if arrived_ns is None else arrived_ns,
    )


# --------------------------------------------------------------------------------------------
# Stable hashing and partitioning
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _fnv1a_fmix(offsets: npt.NDArray[np.int64], data: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    prime = np.uint64(0x100000001B3)
    for i in range(n):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * prime
        # MurmurHash3 fmix64: FNV's low bits are weak, and partitions are taken modulo small numbers.
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
        out[i] = h
    return out


def stable_hash(values: pl.Series) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each value's text that never changes across processes or versions.

    Nulls hash like the empty string.

    Examples
    --------
    >>> [hex(h) for h in stable_hash(pl.Series(["card-1", None]))]
    ['0x2ef6cb114039dc73', '0xefd01f60ba992926']
    """
    array = values.cast(pl.String).fill_null("").to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    if len(array) == 0:
        return np.empty(0, np.uint64)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    hashes: npt.NDArray[np.uint64] = _fnv1a_fmix(offsets, data)
    return hashes


def partition_of(
    frame: pl.DataFrame,
    domain: Domain | str,
    partitions: int,
    *,
    key_columns: Mapping[Domain, Sequence[str]] | None = None,
) -> npt.NDArray[np.int64]:
    """Each row's partition in ``[0, partitions)``: the stable hash of its entity key, modulo ``partitions``.

    The key is the first non-null of the domain's :data:`PARTITION_KEYS` (or ``key_columns``), then
    ``event_id``.
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    keys = (key_columns or PARTITION_KEYS)[Domain(domain)]
    key = frame.select(pl.coalesce([*(pl.col(name) for name in keys), pl.col("event_id")])).to_series()
    parts: npt.NDArray[np.int64] = (stable_hash(key) % np.uint64(partitions)).astype(np.int64)
    return parts


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    """How a frame's rows split into partitions: ``order`` groups row indices by partition (stable, so
    row order is kept within a partition) and ``parts`` holds ``(partition, offset, count)`` into it."""

    order: npt.NDArray[np.int64]
    parts: list[tuple[int, int, int]]

    @property
    def identity(self) -> bool:
        """True when every row is in one partition (the frame needs no reordering)."""
        return len(self.parts) == 1


def plan_partitions(
    frame: pl.DataFrame,
    domain: Domain | str,
    partitions: int,
    *,
    key_columns: Mapping[Domain, Sequence[str]] | None = None,
) -> PartitionPlan:
    """Group a frame's rows by partition (vectorised: one hash pass and one stable sort)."""
    if frame.height == 0:
        return PartitionPlan(np.empty(0, np.int64), [])
    parts = partition_of(frame, domain, partitions, key_columns=key_columns)
    first = int(parts[0])
    if (parts == first).all():
        return PartitionPlan(np.arange(frame.height, dtype=np.int64), [(first, 0, frame.height)])
    order = np.argsort(parts, kind="stable").astype(np.int64)
    counts = np.bincount(parts, minlength=partitions)
    present = np.flatnonzero(counts)
    offsets = np.concatenate(([0], np.cumsum(counts[present])[:-1]))
    return PartitionPlan(
        order,
        [(int(p), int(o), int(counts[p])) for p, o in zip(present, offsets, strict=True)],
    )


def split_by_partition(
    batch: Batch,
    partitions: int,
    *,
    key_columns: Mapping[Domain, Sequence[str]] | None = None,
) -> list[tuple[int, pl.DataFrame]]:
    """Split a batch's rows by partition (row order kept within each part), smallest partition first."""
    plan = plan_partitions(batch.frame, batch.domain, partitions, key_columns=key_columns)
    if plan.identity:
        return [(plan.parts[0][0], batch.frame)]  # one partition: no copy at all
    shuffled = batch.frame[pl.Series(plan.order)]
    return [(partition, shuffled.slice(offset, count)) for partition, offset, count in plan.parts]


def dedup_id(batch: Batch, partition: int, frame: pl.DataFrame) -> str:
    """A message id that is the same whenever the same events are published to the same partition again.

    Built from the stable hashes of the rows' ``event_id`` values, so a retried publish (after a crash or
    a lost acknowledgement) is recognised as a duplicate by the bus.
    """
    return dedup_id_of(batch.domain, partition, stable_hash(frame["event_id"]))


def dedup_id_of(domain: Domain | str, partition: int, event_id_hashes: npt.NDArray[np.uint64]) -> str:
    """:func:`dedup_id` from already computed :func:`stable_hash` values of the rows' event ids."""
    digest = hashlib.blake2b(np.ascontiguousarray(event_id_hashes).tobytes(), digest_size=16)
    digest.update(len(event_id_hashes).to_bytes(8, "little"))
    return f"{Domain(domain).value}.{partition}.{digest.hexdigest()}"
