from __future__ import annotations

from pathlib import Path

import pytest

from finsecure.event.schemas import Domain
from finsecure.sim.frames import POLARS_SCHEMAS, WIDE_SCHEMA
from finsecure.sim.writers import ParquetDatasetWriter, format_of, open_writer, read_events

from .conftest import SmallRun


@pytest.mark.parametrize("name", ["run.parquet", "run.ndjson", "run.jsonl.gz"])
def test_read_events__round_trips_every_format(tmp_path: Path, small_run: SmallRun, name: str) -> None:
    frames = {d: f.head(3_000) for d, f in small_run.frames.items()}
    with open_writer(tmp_path / name) as writer:
        for domain, frame in frames.items():
            writer.write(domain, frame.head(1_000))
            writer.write(domain, frame.slice(1_000))
    back = read_events(tmp_path / name)
    assert set(back) == set(frames)
    for domain, frame in frames.items():
        assert back[domain].equals(frame), domain


def test_parquet_writer__one_canonical_file_set_per_domain(tmp_path: Path, small_run: SmallRun) -> None:
    target = tmp_path / "run.parquet"
    with ParquetDatasetWriter(target, part_rows=2_000) as writer:
        for domain, frame in small_run.frames.items():
            for start in range(0, 5_000, 1_000):
                writer.write(domain, frame.slice(start, 1_000))
    network = sorted((target / "domain=network").glob("*.parquet"))
    assert [p.name for p in network] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_events(target)[Domain.network].columns == list(POLARS_SCHEMAS[Domain.network])


def test_format_of__names_and_overrides() -> None:
    assert format_of("x.parquet") == "parquet"
    assert format_of("x.NDJSON.GZ") == "ndjson"
    assert format_of("x.bin", "parquet") == "parquet"
    with pytest.raises(ValueError, match="cannot tell the format"):
        format_of("x.csv")
    with pytest.raises(ValueError, match="unknown format"):
        format_of("x.parquet", "avro")


def test_wide_schema__shared_columns_agree_across_domains() -> None:
    for domain in Domain:
        for name, dtype in POLARS_SCHEMAS[domain].items():
            assert WIDE_SCHEMA[name] == dtype
