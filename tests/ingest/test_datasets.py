"""Every shared real data set normalises with zero rejects and sane values (slices for the big ones)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import polars as pl
import pytest

from finsecure.event.schemas import Domain
from finsecure.ingest.sources import open_source
from finsecure.pipeline.engine import is_canonical_schema

SLICE_ROWS = 20_000
UTC = dt.UTC


def _read(
    path: Path, format_name: str, *, max_rows: int | None = None
) -> tuple[dict[Domain, pl.DataFrame], int]:
    source = open_source(path, format_name, chunk_rows=min(max_rows or 100_000, 100_000))
    frames: dict[Domain, list[pl.DataFrame]] = {}
    rejects = 0
    seen = 0
    for chunk in source.chunks():
        frames.setdefault(chunk.domain, []).append(chunk.frame)
        rejects += chunk.rejects.num_rows if chunk.rejects is not None else 0
        seen = chunk.offset_end or seen
        if max_rows is not None and seen >= max_rows:
            break
    result = {domain: pl.concat(parts) for domain, parts in frames.items()}
    for domain, frame in result.items():
        assert is_canonical_schema(domain, frame.schema)  # cloud feeds add the source record (raw)
        if format_name != "azure-ad":  # the OTRF Azure AD export repeats a record
            assert frame["event_id"].n_unique() == frame.height
    return result, rejects


@pytest.mark.parametrize("name", ["KDDTrain+.txt.gz", "KDDTest+.txt.gz", "KDDTest-21.txt.gz"])
def test_nsl_kdd__slice_normalises_cleanly(datasets_dir: Path, name: str) -> None:
    frames, rejects = _read(datasets_dir / "nsl-kdd" / name, "nsl-kdd", max_rows=SLICE_ROWS)
    assert rejects == 0
    frame = frames[Domain.network]
    assert frame.height == min(
        SLICE_ROWS, {"KDDTrain+.txt.gz": 125_973, "KDDTest+.txt.gz": 22_544}.get(name, 11_850)
    )
    assert set(frame["protocol"].unique()) <= {"tcp", "udp", "icmp"}
    assert frame["ts"].min() == dt.datetime(1999, 1, 1, tzinfo=UTC)
    labels = frame["label"].value_counts().sort("label")
    assert labels["label"].to_list() == [0, 1]
    assert labels["count"].min() > 100
    assert (
        frame.filter(pl.col("label") == 0)["label_detail"].null_count()
        == frame.filter(pl.col("label") == 0).height
    )
    assert "neptune" in set(frame["label_detail"].drop_nulls())


def test_fraud_handbook__slice_normalises_cleanly(datasets_dir: Path) -> None:
    path = datasets_dir / "fraud-handbook" / "transactions_2018-04-01_to_2018-08-31.csv.gz"
    frames, rejects = _read(path, "fraud-handbook", max_rows=200_000)
    assert rejects == 0
    frame = frames[Domain.payment]
    assert frame.height == 200_000
    assert frame["ts"].min() == dt.datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC)
    assert frame["ts"].max() < dt.datetime(2018, 5, 1, tzinfo=UTC)
    assert frame["amount"].min() >= 0
    assert frame["label"].sum() > 0
    assert set(frame["label_detail"].drop_nulls()) <= {
        "amount_over_220",
        "compromised_terminal",
        "leaked_credentials",
    }
    assert frame["terminal_id"].str.starts_with("T").all()
    assert frame["currency"].null_count() == frame.height  # the generator does not say


def test_sparkov__slice_normalises_cleanly(datasets_dir: Path) -> None:
    frames, rejects = _read(
        datasets_dir / "sparkov-geo" / "transactions_2023.csv.gz", "sparkov", max_rows=SLICE_ROWS
    )
    assert rejects == 0
    frame = frames[Domain.payment]
    assert frame.height == SLICE_ROWS
    assert frame["card_id"].str.starts_with("tok_").all()
    assert frame["transaction_id"].n_unique() < frame.height  # trans_num repeats: not usable as event id
    assert frame["ts"].min() >= dt.datetime(2023, 1, 1, tzinfo=UTC)
    assert frame["ts"].max() < dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert frame["lat"].is_between(-90, 90).all()
    assert frame["home_lat"].is_between(-90, 90).all()
    assert (frame["lat"] != frame["home_lat"]).any()  # the merchant is not the home
    assert set(frame["channel"].drop_nulls()) == {"pos", "ecommerce"}
    assert frame["label"].sum() > 0


OTRF = "otrf-cloud/datasets"


def test_otrf_cloudtrail__all_records_normalise_cleanly(datasets_dir: Path) -> None:
    path = datasets_dir / OTRF / "atomic/aws/collection/ec2_proxy_s3_exfiltration.zip"
    frames, rejects = _read(path, "cloudtrail")
    assert rejects == 0
    frame = frames[Domain.cloud]
    assert frame.height == 103
    assert frame["event_id"].n_unique() == 103
    assert frame["ts"].min() >= dt.datetime(2020, 9, 13, tzinfo=UTC)
    assert frame["ts"].max() < dt.datetime(2020, 9, 15, tzinfo=UTC)
    assert set(frame["cloud_provider"]) == {"aws"}
    assert "ListBuckets" in set(frame["action"])
    assert "GetObject" in set(frame["action"])
    assert frame["principal_id"].null_count() == 0
    assert frame["src_ip"].drop_nulls().len() > 0


def test_otrf_honeybucket__all_records_normalise_cleanly(datasets_dir: Path) -> None:
    frames, rejects = _read(
        datasets_dir / OTRF / "atomic/aws/discovery/aws_s3_honeybucketlogs.zip", "aws-s3-honeybucket"
    )
    assert rejects == 0
    frame = frames[Domain.cloud]
    assert frame.height == 301
    assert frame["label"].sum() == 301
    assert set(frame["resource"]) == {"microsoft-devtest"}
    assert frame["src_ip"].null_count() == 0


def test_otrf_azure_ad_and_office__all_records_normalise_cleanly(datasets_dir: Path) -> None:
    base = datasets_dir / OTRF / "compound/GoldenSAMLADFSMailAccess"
    frames, rejects = _read(base / "AADAuditEvents.Zip", "azure-ad")
    assert rejects == 0
    audit = frames[Domain.cloud]
    assert audit.height == 4
    assert set(audit["principal_type"]) == {"User"}
    assert audit["user_id"].to_list() == ["pgustavo@simulandlabs.com"] * 4
    frames, rejects = _read(base / "OfficeActivityEvents.Zip", "office-activity")
    assert rejects == 0
    office = frames[Domain.cloud]
    assert office.select("action", "outcome", "src_ip").rows() == [
        ("MailItemsAccessed", "success", "1.2.3.4")
    ]


def test_datasets__first_chunks_of_all_csvs_have_consistent_ids(datasets_dir: Path) -> None:
    path = datasets_dir / "nsl-kdd" / "KDDTest-21.txt.gz"
    first = [
        c.frame["event_id"].to_list() for c in itertools.islice(open_source(path, "nsl-kdd").chunks(), 1)
    ]
    again = [
        c.frame["event_id"].to_list() for c in itertools.islice(open_source(path, "nsl-kdd").chunks(), 1)
    ]
    assert first == again
