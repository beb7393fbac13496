"""LakeWriter: partitions, buffering and rolling, atomic files, widening schemas, full disks."""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finsecure.ingest.deadletter import DEAD_LETTER_SCHEMA, dead_letters
from finsecure.lake import writer as writer_module
from finsecure.lake.writer import LakeWriteError, LakeWriter
from tests.lake import T0, canonical_frame

NAME = re.compile(r"part-(\d{13})-(\d{6})-([0-9a-f]{8})\.parquet")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def read_all(root: Path, area: str = "domain=payment") -> pl.DataFrame:
    files = sorted((root / area).rglob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def test_write__partitions_by_domain_and_day(tmp_path: Path) -> None:
    with LakeWriter(tmp_path) as lake:
        lake.write("payment", canonical_frame("payment", 5, start=T0))
        lake.write("auth", canonical_frame("auth", 3, start=T0 + dt.timedelta(days=3)))

    dirs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in parquet_files(tmp_path))
    assert dirs == ["domain=auth/date=2024-05-04", "domain=payment/date=2024-05-01"]
    assert read_all(tmp_path, "domain=auth").height == 3
    assert read_all(tmp_path)["event_id"].to_list() == [f"e{i}" for i in range(5)]


def test_write__splits_a_batch_spanning_midnight(tmp_path: Path) -> None:
    # 22:00 UTC + 3 h in 30-minute steps: 4 rows on May 1, 3 rows on May 2
    frame = canonical_frame("network", 7, start=T0, step=dt.timedelta(minutes=30))
    with LakeWriter(tmp_path) as lake:
        lake.write("network", frame)

    by_day = {
        p.parent.name: pl.read_parquet(p)["event_id"].to_list()
        for p in parquet_files(tmp_path / "domain=network")
    }
    assert by_day == {"date=2024-05-01": ["e0", "e1", "e2", "e3"], "date=2024-05-02": ["e4", "e5", "e6"]}


def test_write__days_are_utc_days(tmp_path: Path) -> None:
    # 01:30 in Paris (UTC+2) on May 2 is 23:30 UTC on May 1
    paris = pl.DataFrame(
        {"event_id": ["p"], "ts": [dt.datetime(2024, 5, 1, 23, 30, tzinfo=dt.UTC)], "source": ["s"]}
    ).with_columns(pl.col("ts").dt.convert_time_zone("Europe/Paris"))
    assert paris["ts"].dt.day().item() == 2
    with LakeWriter(tmp_path) as lake:
        lake.write("auth", paris)

    (path,) = parquet_files(tmp_path)
    assert path.parent.name == "date=2024-05-01"
    stored = pl.read_parquet(path)["ts"]
    assert stored.dtype == pl.Datetime("us", "UTC")
    assert stored.item() == dt.datetime(2024, 5, 1, 23, 30, tzinfo=dt.UTC)


def test_write__buffers_small_batches_until_max_rows(tmp_path: Path) -> None:
    lake = LakeWriter(tmp_path, max_rows=25, max_age_s=3600)
    for i in range(2):
        assert lake.write("payment", canonical_frame(n=10, prefix=f"b{i}-")) == []
    assert parquet_files(tmp_path) == []
    assert lake.pending_rows == 20

    written = lake.write("payment", canonical_frame(n=10, prefix="b2-"))

    assert len(written) == 1
    assert pl.read_parquet(written[0]).height == 30  # one file for the three batches
    assert lake.pending_rows == 0


def test_write__rolls_a_partition_by_age(tmp_path: Path) -> None:
    clock = FakeClock()
    lake = LakeWriter(tmp_path, max_rows=1_000, max_age_s=5.0, clock=clock)
    lake.write("payment", canonical_frame(n=3, prefix="old"))
    clock.now += 4.9
    assert lake.flush_expired() == []

    clock.now += 0.2
    written = lake.flush_expired()

    assert len(written) == 1
    assert pl.read_parquet(written[0])["event_id"].to_list() == ["old0", "old1", "old2"]
    # an old buffer is also written by the next write, without waiting for a timer
    lake.write("payment", canonical_frame(n=1, prefix="next"))
    clock.now += 6
    assert len(lake.write("auth", canonical_frame("auth", 1))) == 1
    assert lake.pending_rows == 1


def test_flush__names_files_uniquely_and_in_write_order(tmp_path: Path) -> None:
    lake = LakeWriter(tmp_path, max_rows=1)
    written = [
        path for i in range(5) for path in lake.write("payment", canonical_frame(n=1, prefix=f"r{i}-"))
    ]

    assert len(written) == 5
    names = [p.name for p in written]
    assert all(NAME.fullmatch(n) for n in names), names
    assert sorted(names) == names
    assert len(set(names)) == 5
    assert [pl.read_parquet(p)["event_id"].item() for p in sorted(written)] == [f"r{i}-0" for i in range(5)]


def test_flush__writes_zstd_parquet_with_statistics(tmp_path: Path) -> None:
    with LakeWriter(tmp_path) as lake:
        lake.write("payment", canonical_frame(n=50, amount=3.5))

    (path,) = parquet_files(tmp_path)
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert column.statistics is not None
    assert column.statistics.has_min_max


def test_write__keeps_columns_added_by_steps(tmp_path: Path) -> None:
    plain = canonical_frame(n=2, prefix="plain")
    scored = canonical_frame(n=2, prefix="scored").with_columns(score=pl.Series([0.1, 0.9]), f1=pl.lit(7))
    with LakeWriter(tmp_path) as lake:
        lake.write("payment", plain)
        lake.write("payment", scored)

    (path,) = parquet_files(tmp_path)
    stored = pl.read_parquet(path)
    assert stored.columns == [*plain.columns, "score", "f1"]
    assert stored["score"].to_list() == [None, None, 0.1, 0.9]


def test_write__incompatible_column_types_go_to_separate_files(tmp_path: Path) -> None:
    with LakeWriter(tmp_path) as lake:
        lake.write("payment", canonical_frame(n=1, prefix="a").with_columns(tag=pl.lit([1, 2])))
        lake.write("payment", canonical_frame(n=1, prefix="b").with_columns(tag=pl.lit("x")))

    files = parquet_files(tmp_path)
    assert len(files) == 2
    assert sorted(pl.read_parquet(f)["event_id"].item() for f in files) == ["a0", "b0"]


def test_write__never_shows_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real = writer_module._write_bytes

    def spying(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        real(path, data, fsync=fsync)
        # the bytes are all on disk but the file is still under its temporary name
        seen.append(sorted(p.name for p in path.parent.iterdir()))

    monkeypatch.setattr(writer_module, "_write_bytes", spying)
    with LakeWriter(tmp_path) as lake:
        lake.write("payment", canonical_frame(n=5))

    assert len(seen) == 1
    (listing,) = seen
    (name,) = listing
    assert name.startswith(".part-")
    assert name.endswith(".tmp")
    assert not any(name.endswith(".parquet") for name in listing)
    (path,) = parquet_files(tmp_path)
    assert NAME.fullmatch(path.name)


def test_flush__disk_full_keeps_earlier_files_and_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = LakeWriter(tmp_path)
    lake.write("payment", canonical_frame(n=4, prefix="first"))
    (first,) = lake.flush()
    before = first.read_bytes()
    lake.write("payment", canonical_frame(n=3, prefix="second"))

    def full_disk(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        with open(path, "xb") as handle:
            handle.write(bytes(data)[: len(data) // 2])  # half the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module, "_write_bytes", full_disk)
    with pytest.raises(LakeWriteError, match="the disk is full") as caught:
        lake.flush()

    assert caught.value.disk_full
    assert caught.value.path.parent == first.parent
    assert list(tmp_path.rglob("*")) == [tmp_path / "domain=payment", first.parent, first]  # no temp file
    assert first.read_bytes() == before
    assert pl.read_parquet(first).height == 4
    assert lake.pending_rows == 3

    monkeypatch.undo()
    lake.close()
    assert sorted(read_all(tmp_path)["event_id"].to_list()) == [
        *(f"first{i}" for i in range(4)),
        *(f"second{i}" for i in range(3)),
    ]


def test_flush__other_os_errors_are_reported_with_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(writer_module, "_write_bytes", denied)
    lake = LakeWriter(tmp_path)
    lake.write("payment", canonical_frame(n=1))
    with pytest.raises(LakeWriteError, match="Permission denied") as caught:
        lake.flush()
    assert not caught.value.disk_full
    assert "domain=payment/date=2024-05-01" in str(caught.value)


def test_write__refuses_rows_it_cannot_place(tmp_path: Path) -> None:
    lake = LakeWriter(tmp_path)
    naive = pl.DataFrame({"event_id": ["x"], "ts": [dt.datetime(2024, 5, 1)]})
    with pytest.raises(ValueError, match="time-zone-aware"):
        lake.write("payment", naive)
    with pytest.raises(ValueError, match="no 'ts' column"):
        lake.write("payment", pl.DataFrame({"event_id": ["x"]}))
    with pytest.raises(ValueError, match="unknown domain 'wire'"):
        lake.write("wire", canonical_frame(n=1))
    nulls = pl.DataFrame({"ts": pl.Series([None], dtype=pl.Datetime("us", "UTC"))})
    with pytest.raises(ValueError, match="nulls"):
        lake.write("payment", nulls)
    assert lake.pending_rows == 0


def test_write__accepts_arrow_tables_and_ignores_empty_batches(tmp_path: Path) -> None:
    with LakeWriter(tmp_path) as lake:
        assert lake.write("cloud", canonical_frame("cloud", 0)) == []
        lake.write("cloud", canonical_frame("cloud", 2).to_arrow())
    assert read_all(tmp_path, "domain=cloud").height == 2


def test_write_dead_letters__go_to_their_own_area(tmp_path: Path) -> None:
    table = dead_letters(
        source="replay:feed.ndjson",
        reasons=["not JSON", "no ts"],
        offsets=[3, None],
        raws=[b"{oops", "{}"],
        domain="auth",
        ts=dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
    )
    with LakeWriter(tmp_path) as lake:
        lake.write_dead_letters(table)
        with pytest.raises(ValueError, match="not a dead-letter table"):
            lake.write_dead_letters(pa.table({"reason": ["x"]}))

    (path,) = parquet_files(tmp_path)
    assert path.parent.relative_to(tmp_path).as_posix() == "dead_letter/date=2024-05-01"
    stored = pq.read_table(path)
    assert stored.schema.names == DEAD_LETTER_SCHEMA.names
    assert stored.column("offset").to_pylist() == [3, None]
    assert stored.column("raw").to_pylist() == ["{oops", "{}"]


def test_close__flushes_once_and_refuses_more_writes(tmp_path: Path) -> None:
    lake = LakeWriter(tmp_path)
    lake.write("payment", canonical_frame(n=2))
    lake.close()
    lake.close()
    assert len(parquet_files(tmp_path)) == 1
    with pytest.raises(RuntimeError, match="closed"):
        lake.write("payment", canonical_frame(n=1))


def test_sweep_temp_files__removes_only_old_leftovers(tmp_path: Path) -> None:
    directory = tmp_path / "domain=payment" / "date=2024-05-01"
    directory.mkdir(parents=True)
    old, fresh = (
        directory / ".part-1-000001-aaaaaaaa.parquet.tmp",
        directory / ".part-2-000002-bbbbbbbb.parquet.tmp",
    )
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    long_ago = time.time() - 7200
    os.utime(old, (long_ago, long_ago))

    assert LakeWriter(tmp_path).sweep_temp_files(older_than_s=3600) == 1
    assert not old.exists()
    assert fresh.exists()


def test_write__in_the_background_does_not_wait_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = writer_module._write_bytes

    def slow_disk(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        assert release.wait(10)
        real(path, data, fsync=fsync)

    monkeypatch.setattr(writer_module, "_write_bytes", slow_disk)
    lake = LakeWriter(tmp_path, max_rows=5, background=True, max_pending_files=4)
    for i in range(3):
        assert lake.write("payment", canonical_frame(n=5, prefix=f"b{i}-")) == []  # each one rolls a file
    assert parquet_files(tmp_path) == []
    assert lake.pending_rows == 15

    release.set()
    written = lake.flush()

    assert len(written) == 3
    assert lake.pending_rows == 0
    assert [pl.read_parquet(p)["event_id"][0] for p in sorted(written)] == ["b0-0", "b1-0", "b2-0"]
    lake.close()


def test_write__background_failures_surface_later_with_rows_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def full_disk(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        assert release.wait(10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module, "_write_bytes", full_disk)
    lake = LakeWriter(tmp_path, max_rows=3, background=True)
    lake.write("payment", canonical_frame(n=3, prefix="a"))  # rolls; the worker is stuck on the disk
    release.set()
    with pytest.raises(LakeWriteError, match="the disk is full"):
        lake.flush()
    lake.write("payment", canonical_frame(n=1, prefix="b"))
    assert lake.pending_rows == 4
    assert parquet_files(tmp_path) == []

    monkeypatch.undo()
    lake.close()
    assert sorted(read_all(tmp_path)["event_id"].to_list()) == ["a0", "a1", "a2", "b0"]
