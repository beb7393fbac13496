"""Batches on the wire and the stable partition hash."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from finsecure.bus.codec import (
    CodecError,
    decode_batch,
    dedup_id,
    encode_batch,
    partition_of,
    split_by_partition,
    stable_hash,
)
from finsecure.event.schemas import ARROW_SCHEMAS, Domain, conform_batch
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.testing import sample_frame

_MASK = (1 << 64) - 1


def reference_hash(text: str) -> int:
    """The documented definition, in plain Python: FNV-1a 64 then MurmurHash3 fmix64."""
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & _MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    return h ^ (h >> 33)


@pytest.mark.parametrize("domain", list(Domain))
@pytest.mark.parametrize("compression", ["lz4", "zstd", None])
def test_encode_batch__round_trips_every_domain(domain: Domain, compression: str | None):
    frame = sample_frame(domain, 200)
    batch = Batch(domain, frame, source="replay:x.parquet", seq=42)
    back = decode_batch(encode_batch(batch, compression=compression), arrived_ns=5)  # type: ignore[arg-type]
    assert (back.domain, back.source, back.seq, back.arrived_ns) == (domain, "replay:x.parquet", 42, 5)
    assert back.frame.equals(frame)
    assert back.frame.schema == frame.schema
    conformed = conform_batch(domain, back.frame.to_arrow())
    assert conformed.schema.names == ARROW_SCHEMAS[domain].names


def test_encode_batch__keeps_columns_steps_added_and_nulls():
    frame = sample_frame("payment", 5).with_columns(
        score=pl.Series([0.1, None, 0.3, 0.4, 0.5]), amount=pl.lit(None, pl.Float64)
    )
    back = decode_batch(encode_batch(Batch(Domain.payment, frame, source="s")))
    assert back.frame.equals(frame)
    assert back.frame.columns[-1] == "score"


def test_decode_batch__refuses_what_is_not_a_batch():
    with pytest.raises(CodecError, match="not an Arrow IPC stream"):
        decode_batch(b"hello")
    sink = pa.BufferOutputStream()
    table = pa.table({"x": [1]})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(CodecError, match="no known domain"):
        decode_batch(sink.getvalue().to_pybytes())
    auth = encode_batch(Batch(Domain.auth, sample_frame("auth", 2), source="s"))
    payment_schema = ARROW_SCHEMAS[Domain.payment].metadata
    reader = pa.ipc.open_stream(auth).read_all()
    relabelled = reader.replace_schema_metadata({**reader.schema.metadata, b"finsecure.domain": b"payment"})
    assert payment_schema is not None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, relabelled.schema) as writer:
        writer.write_table(relabelled)
    with pytest.raises(CodecError, match="canonical payment columns"):
        decode_batch(sink.getvalue().to_pybytes())


def test_stable_hash__matches_the_documented_definition():
    values = ["", "card-1", "10.0.0.1", "ünïcødé", "x" * 300]
    hashes = stable_hash(pl.Series([*values, None]))
    assert hashes.tolist() == [reference_hash(v) for v in [*values, ""]]
    sliced = pl.Series(values).slice(1, 3)  # offsets of a slice
    assert stable_hash(sliced).tolist() == [reference_hash(v) for v in values[1:4]]
    assert stable_hash(pl.Series([], dtype=pl.String)).size == 0


def test_partition_of__follows_the_entity_key_with_event_id_fallback():
    frame = sample_frame("payment", 300, entities=20).with_columns(
        card_id=pl.when(pl.int_range(pl.len()) % 3 == 0).then(None).otherwise(pl.col("card_id"))
    )
    parts = partition_of(frame, "payment", 8)
    assert parts.min() >= 0
    assert parts.max() < 8
    by_card = (
        frame.with_columns(p=pl.Series(parts))
        .drop_nulls("card_id")
        .group_by("card_id")
        .agg(pl.col("p").n_unique())
    )
    assert (by_card["p"] == 1).all()  # every card lives in exactly one partition
    no_card = frame.filter(pl.col("card_id").is_null())
    expected = [reference_hash(a) % 8 for a in no_card["account_id"].to_list()]  # next key: account_id
    assert partition_of(no_card, "payment", 8).tolist() == expected


def test_split_by_partition__keeps_every_row_once_in_order():
    batch = Batch(Domain.auth, sample_frame("auth", 1_000, entities=50), source="s")
    parts = split_by_partition(batch, 4)
    assert [p for p, _ in parts] == sorted({p for p, _ in parts})
    combined = pl.concat([frame for _, frame in parts])
    assert combined.sort("event_id").equals(batch.frame.sort("event_id"))
    for partition, frame in parts:
        assert set(partition_of(frame, "auth", 4).tolist()) == {partition}
        order = frame["event_id"].str.strip_prefix("auth-").cast(pl.Int64)
        assert order.is_sorted()  # per-entity order survives the split
    single = split_by_partition(batch, 1)
    assert len(single) == 1
    assert single[0][1] is batch.frame


def test_dedup_id__same_events_same_id():
    frame = sample_frame("cloud", 10)
    batch = Batch(Domain.cloud, frame, source="a", seq=1)
    again = Batch(Domain.cloud, frame, source="b", seq=99)
    assert dedup_id(batch, 3, frame) == dedup_id(again, 3, frame)
    assert dedup_id(batch, 3, frame) != dedup_id(batch, 3, frame.slice(0, 9))
    assert dedup_id(batch, 3, frame) != dedup_id(batch, 4, frame)
    assert dedup_id(batch, 3, frame).startswith("cloud.3.")
