"""The lake's disk fills up under a running pipeline: a clear error, files written before untouched, no
half-written file, the rows kept and written once space is back (and not copied into the dead letters).

The full disk is an ``OSError(ENOSPC)`` raised at the file-write boundary (``lake.writer._write_bytes``),
exactly where a real full disk raises it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from finsecure.api import build_context, create_app
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.event.schemas import Domain
from finsecure.lake import writer as lake_writer
from finsecure.lake.writer import LakeWriteError
from finsecure.platform import Platform
from tests.conftest import make_settings


def _events(platform: Platform, prefix: str, n: int) -> pl.DataFrame:
    records = [
        {
            "event_id": f"{prefix}-{i}",
            "domain": "payment",
            "ts": f"2026-11-24T10:00:{i % 60:02d}Z",
            "source": "disk-test",
        }
        for i in range(n)
    ]
    result = platform.normaliser("disk-test").normalise(pl.DataFrame(records))
    assert result.rejects.num_rows == 0, result.rejects.column("reason").to_pylist()
    return result.frames[Domain.payment]


def _digests(lake: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in lake.rglob("*") if p.is_file()}


def test_platform__disk_full_on_the_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'disk.db'}")
    migrate.upgrade(engine)
    settings = make_settings(
        database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path, demo_stream=False
    )
    platform = Platform(settings, make_session_factory(engine), steps=[], demo_source=None)
    client = TestClient(create_app(context=build_context(settings, engine=engine, platform=platform)))
    full = False
    real_write = lake_writer._write_bytes

    def write_bytes(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        if full:
            with open(path, "xb") as handle:  # a real full disk leaves a partial file behind
                handle.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data, fsync=fsync)

    monkeypatch.setattr(lake_writer, "_write_bytes", write_bytes)
    platform.start()
    try:
        platform.pipeline.submit(Domain.payment, _events(platform, "before", 50), source="disk-test")
        platform.pipeline.flush(timeout=10)
        before = _digests(settings.lake_dir)
        assert len(before) == 1

        full = True
        platform.pipeline.submit(Domain.payment, _events(platform, "during", 70), source="disk-test")
        with pytest.raises(LakeWriteError, match="the disk is full") as caught:
            platform.pipeline.flush(timeout=10)
        assert caught.value.disk_full
        assert "Files written before are intact" in str(caught.value)
        assert _digests(settings.lake_dir) == before  # nothing changed, no temporary file left
        health = client.get("/api/health")
        assert health.status_code == 503
        assert "the disk is full" in health.json()["pipeline"]["detail"]
        assert platform.pipeline.stats().dead_letters == 0  # the rows wait; they are not failed

        full = False
        platform.pipeline.submit(Domain.payment, _events(platform, "after", 30), source="disk-test")
        platform.pipeline.flush(timeout=10)
        assert client.get("/api/health").status_code == 200
    finally:
        platform.stop(timeout=10)
        engine.dispose()
    after = _digests(settings.lake_dir)
    assert {p: d for p, d in after.items() if p in before} == before
    lake = pl.read_parquet(settings.lake_dir / "domain=payment", hive_partitioning=False)
    ids = lake["event_id"].to_list()
    assert len(ids) == len(set(ids)) == 150
