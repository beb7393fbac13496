"""File sources and canonical formats: chunks per domain, rejects with offsets, Parquet round trip."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.ingest.mapping import Mapping
from finsecure.ingest.normalise import canonical_polars_schema
from finsecure.ingest.sources import FileSource, canonical_mapping, open_source
from finsecure.pipeline.batch import Source

GOOD = {"event_id": "p1", "ts": "2024-05-01T12:00:00Z", "domain": "payment", "source": "t", "amount": 5.0}


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_open_source__canonical_ndjson_mixed_domains_and_bad_lines(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        json.dumps(GOOD),
        json.dumps({**GOOD, "event_id": "a1", "domain": "auth", "action": "login", "amount": None}),
        json.dumps({**GOOD, "event_id": "p2", "lat": 91.2}),
        json.dumps({**GOOD, "event_id": "p3", "amount": "NaN"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "ts"}),
        json.dumps({**GOOD, "domain": "host"}),
        b'{"broken": ',
        json.dumps({**GOOD, "event_id": "p4", "amount": [1, 2]}),
        json.dumps(
            {
                **GOOD,
                "event_id": "n1",
                "domain": "network",
                "dst_port": 443,
                "src_ip": "10.0.0.1",
                "amount": None,
            }
        ),
    ]
    source = open_source(_write(tmp_path / "e.ndjson", lines), "ndjson", chunk_rows=100)
    assert isinstance(source, Source)
    assert source.source_id == "replay:e.ndjson"
    chunks = list(source.chunks())
    frames = {chunk.domain: chunk.frame for chunk in chunks}
    assert frames[Domain.payment]["event_id"].to_list() == ["p1"]
    assert frames[Domain.auth]["event_id"].to_list() == ["a1"]
    assert frames[Domain.network]["dst_port"].to_list() == [443]
    for domain, frame in frames.items():
        assert frame.schema == canonical_polars_schema(domain)
    rejects = pl.concat([pl.from_arrow(c.rejects) for c in chunks if c.rejects is not None])  # type: ignore[misc]
    got = sorted(zip(rejects["offset"].to_list(), rejects["reason"].to_list(), strict=True))
    assert got == [
        (2, "lat: above 90"),
        (3, "amount: not a finite number"),
        (4, "ts: missing"),
        (5, "domain: missing or not one of network, cloud, auth, payment"),
        (6, "not valid JSON: Expecting value (column 12)"),
        (7, "amount: not a number"),
    ]
    assert {c.offset_end for c in chunks} == {9}


def test_open_source__canonical_ndjson_rejects_fields_outside_the_domain(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        json.dumps(GOOD),
        json.dumps({**GOOD, "event_id": "p2", "dst_port": 443}),  # a network field on a payment
        json.dumps({**GOOD, "event_id": "p3", "colour": "red", "amount": "x"}),  # in no domain at all
        json.dumps({**GOOD, "event_id": "p4", "dst_port": None}),  # null: as good as absent
        json.dumps({**GOOD, "event_id": "n1", "domain": "network", "dst_port": 443}),  # amount: payment's
    ]
    chunks = list(open_source(_write(tmp_path / "e.ndjson", lines), "ndjson").chunks())
    frames = {chunk.domain: chunk.frame for chunk in chunks}
    assert frames[Domain.payment]["event_id"].to_list() == ["p1", "p4"]
    assert Domain.network not in frames or frames[Domain.network].height == 0
    rejects = pl.concat([pl.from_arrow(c.rejects) for c in chunks if c.rejects is not None])  # type: ignore[misc]
    assert sorted(zip(rejects["offset"].to_list(), rejects["reason"].to_list(), strict=True)) == [
        (1, "dst_port: not a field of payment events"),
        (2, "colour: not a field of payment events; amount: not a number"),
        (4, "amount: not a field of network events"),
    ]


def test_open_source__canonical_ndjson_late_unknown_field_not_lost(tmp_path: Path) -> None:
    # The reader parses chunks with the fields it has seen so far; a field first seen deep in a chunk
    # (or written with odd spacing) must still reach the normaliser and be rejected there.
    lines: list[str | bytes] = [json.dumps({**GOOD, "event_id": f"p{i}"}) for i in range(3000)]
    lines[2500] = json.dumps({**GOOD, "event_id": "late", "colour": "red"})
    lines[2600] = (
        b'{"event_id": "spaced", "ts": "2024-05-01T12:00:00Z", "domain": "payment", "source": "t", "x" : 1}'
    )
    lines[2700] = json.dumps({**GOOD, "event_id": "nested", "amount": 1, "bag": {"amount": 2}})
    chunks = list(open_source(_write(tmp_path / "e.ndjson", lines), "ndjson", chunk_rows=1000).chunks())
    kept = pl.concat([c.frame for c in chunks])
    assert kept.height == 2997
    rejects = pl.concat([pl.from_arrow(c.rejects) for c in chunks if c.rejects is not None])  # type: ignore[misc]
    assert sorted(zip(rejects["offset"].to_list(), rejects["reason"].to_list(), strict=True)) == [
        (2500, "colour: not a field of payment events"),
        (2600, "x: not a field of payment events"),
        (2700, "bag: not a field of payment events"),
    ]


def test_open_source__canonical_parquet_round_trip(tmp_path: Path) -> None:
    first = next(iter(open_source(_write(tmp_path / "e.ndjson", [json.dumps(GOOD)]), "ndjson").chunks()))
    first.frame.write_parquet(tmp_path / "e.parquet")
    again = list(open_source(tmp_path / "e.parquet", "parquet").chunks())
    assert len(again) == 1
    assert again[0].frame.equals(first.frame)


def test_open_source__canonical_parquet_extra_columns_left_out(tmp_path: Path) -> None:
    first = next(iter(open_source(_write(tmp_path / "e.ndjson", [json.dumps(GOOD)]), "ndjson").chunks()))
    first.frame.with_columns(score=pl.lit(0.9)).write_parquet(tmp_path / "scored.parquet")
    again = list(open_source(tmp_path / "scored.parquet", "parquet").chunks())
    assert [(c.frame.height, c.rejects) for c in again] == [(1, None)]
    assert again[0].frame.equals(first.frame)


def test_open_source__naive_parquet_time_rejected(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"event_id": ["x"], "ts": [dt.datetime(2024, 1, 1)], "domain": ["auth"], "source": ["s"]}
    )
    frame.write_parquet(tmp_path / "n.parquet")
    chunk = next(iter(open_source(tmp_path / "n.parquet", "parquet").chunks()))
    assert chunk.frame.height == 0
    assert chunk.rejects is not None
    assert chunk.rejects.column("reason").to_pylist() == ["ts: has no time zone; ts: missing"]


def test_open_source__unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'; expected one of: nsl-kdd"):
        open_source("x", "xml")


def test_canonical_mapping__only_canonical_formats() -> None:
    assert canonical_mapping("parquet").read.format == "parquet"
    with pytest.raises(ValueError, match="canonical events come as"):
        canonical_mapping("csv")


def test_file_source__csv_mapping_chunks_and_gzip(tmp_path: Path) -> None:
    rows = "".join(
        f"{i},2018-04-01 00:00:{i:02d},{i % 3},{i % 5},{i}.5,0,0,{int(i == 7)},{3 if i == 7 else 0}\n"
        for i in range(25)
    )
    header = (
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,"
        "TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO\n"
    )
    path = tmp_path / "fh.data"
    path.write_bytes(gzip.compress((header + rows).encode()))
    chunks = list(FileSource(path, "fraud-handbook", chunk_rows=10).chunks())
    assert [c.frame.height for c in chunks] == [10, 10, 5]
    assert [c.offset_end for c in chunks] == [10, 20, 25]
    frame = pl.concat([c.frame for c in chunks])
    assert frame.filter(pl.col("label") == 1)["label_detail"].to_list() == ["leaked_credentials"]
    assert frame["terminal_id"][:3].to_list() == ["T0", "T1", "T2"]
    assert frame["event_id"][7] == "fh-7"


def test_file_source__azure_ad_routes_signins_to_auth(tmp_path: Path) -> None:
    audit = {
        "Type": "AuditLogs",
        "TimeGenerated": "2021-08-02T13:29:25Z",
        "Id": "y",
        "OperationName": "Add user ",
    }
    signin = {"Type": "SigninLogs", "TimeGenerated": "2021-08-02T13:29:26Z", "Id": "z", "ResultType": "50126"}
    path = _write(tmp_path / "aad.json", [json.dumps(audit), json.dumps(signin)])
    chunks = list(open_source(path, "azure-ad").chunks())
    assert [(c.domain, c.frame.height) for c in chunks] == [(Domain.auth, 1), (Domain.cloud, 1)]
    assert chunks[0].frame.select("event_id", "action", "outcome").rows() == [("z", "login", "failure")]
    assert chunks[1].frame.select("event_id", "action", "cloud_provider").rows() == [
        ("y", "Add user", "azure")
    ]


def test_file_source__unmatched_rows_travel_with_first_chunk(tmp_path: Path) -> None:
    mapping = Mapping.from_dict(
        {
            "name": "two",
            "read": {"format": "ndjson"},
            "fields": {"ts": {"column": "t", "timestamp": {"unit": "s"}}},
            "domains": [
                {"domain": "auth", "when": {"column": "k", "equals": "a"}},
                {"domain": "cloud", "when": {"column": "k", "equals": "c"}},
            ],
        }
    )
    path = _write(tmp_path / "two.json", ['{"t": 1, "k": "c"}', '{"t": 2, "k": "zzz"}', "nope"])
    chunks = list(FileSource(path, mapping).chunks())
    assert [(c.domain, c.frame.height) for c in chunks] == [(Domain.auth, 0), (Domain.cloud, 1)]
    assert chunks[0].rejects is not None
    assert sorted(chunks[0].rejects.column("offset").to_pylist()) == [1, 2]
    assert FileSource(path, mapping, source_name="feed-7").source_id == "replay:feed-7"
