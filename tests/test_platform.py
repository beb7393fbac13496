"""The data plane as `finsecure serve` runs it: the live demo stream reaches every domain, and stopping
drains everything that was accepted into the lake."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from finsecure.alert.sink import EntityDetectionStep
from finsecure.core.database import make_session_factory
from finsecure.event.schemas import Domain
from finsecure.lake.query import LakeQuery
from finsecure.pipeline.testing import TestingSink
from finsecure.platform import RULES_DIR, Platform, default_rules, default_steps
from tests.conftest import make_settings


def test_platform__demo_stream_feeds_all_four_domains(db_engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path, demo_rate=2_000.0, demo_customers=1_000)
    sink = TestingSink()
    platform = Platform(settings, make_session_factory(db_engine), extra_sinks=[sink]).start()
    try:
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        while time.monotonic() < deadline and seen != set(Domain):
            seen = {batch.domain for batch in list(sink.batches)}
            time.sleep(0.2)
    finally:
        stats = platform.stop()
    assert seen == set(Domain), f"only {sorted(seen)} within 60 s"
    assert not stats.errors
    # stop() drained the pipeline and closed the lake: everything that went out is queryable.
    written = {d: sum(len(b) for b in sink.batches if b.domain == d) for d in Domain}
    lake = LakeQuery(settings.lake_dir)
    for domain in Domain:
        sql = f"select count(*) as n from {domain.value}"  # noqa: S608 - a fixed enum value
        count = lake.sql(sql).table.column("n")[0].as_py()
        assert count == written[domain], domain
    feature_columns = [c for c in sink.batches[0].frame.columns if "__" in c]
    assert feature_columns, "the feature step must add columns"
    assert platform.alerts.errors == 0, "the alert sink must never fail on the demo stream"


def test_default_steps__features_then_detection_with_the_repository_rules() -> None:
    steps = default_steps()
    assert [s.step_id for s in steps] == ["features", "detection"]
    assert isinstance(steps[1], EntityDetectionStep)
    rules = default_rules()
    assert len(rules) == len(list(RULES_DIR.rglob("*.yml"))) > 0


def test_default_rules__missing_directory_runs_with_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="finsecure.platform"):
        assert default_rules(tmp_path / "absent") == ()
    assert "detection runs with no rules" in caplog.text


def test_platform__without_demo_stream_stays_quiet(db_engine: Engine, tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path, demo_stream=False)
    sink = TestingSink()
    platform = Platform(settings, make_session_factory(db_engine), extra_sinks=[sink]).start()
    time.sleep(0.3)
    stats = platform.stop()
    assert sink.batches == []
    assert sum(stats.events_in.values()) == 0
