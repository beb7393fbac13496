"""Metrics of a process: pipeline counters read at scrape time, the batch histogram, alerts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.core.enums import Severity
from finsecure.ops.metrics import Metrics
from finsecure.pipeline.batch import Batch, Step
from finsecure.pipeline.engine import Pipeline
from finsecure.pipeline.testing import TestingSink, sample_frame


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


class DropHalf(Step):
    step_id = "drop_half"

    def process(self, batch: Batch) -> Batch:
        return Batch(batch.domain, batch.frame.head(batch.frame.height // 2), batch.source, batch.seq)


def test_watch_pipeline__exports_counters_and_batch_histogram() -> None:
    metrics = Metrics()
    with Pipeline([DropHalf()], [TestingSink()], max_rows=100) as pipeline:
        metrics.watch_pipeline(pipeline, "main")
        pipeline.submit("payment", sample_frame("payment", 300), source="test")
        pipeline.submit("auth", sample_frame("auth", 40), source="test")
        pipeline.flush()
        got = samples(metrics)
    assert got["finsecure_pipeline_events_in_total", (("domain", "payment"), ("pipeline", "main"))] == 300
    assert got["finsecure_pipeline_events_out_total", (("domain", "payment"), ("pipeline", "main"))] == 150
    assert got["finsecure_step_events_out_total", (("pipeline", "main"), ("step", "drop_half"))] == 170
    histogram = ("finsecure_pipeline_batch_seconds_count", (("domain", "payment"), ("pipeline", "main")))
    assert got[histogram] == 3  # 300 rows in batches of 100
    labels = (("domain", "payment"), ("pipeline", "main"))
    assert got["finsecure_pipeline_ingest_latency_seconds_count", labels] == 3
    assert got["finsecure_pipeline_running", (("pipeline", "main"),)] == 1


def test_forget_pipeline__stops_exporting_it() -> None:
    metrics = Metrics()
    pipeline = Pipeline([], [])
    metrics.watch_pipeline(pipeline, "p3")
    metrics.forget_pipeline("p3")
    assert pipeline.batch_observer is None
    assert not any(labels and ("pipeline", "p3") in labels for _, labels in samples(metrics))


def make_alert_row(session: Session, key: str) -> None:
    now = dt.datetime.now(dt.UTC)
    session.add(
        Alert(
            alert_key=key,
            title="Card used far from home",
            severity=Severity.high,
            domain="payment",
            event_ids=[],
            explanation={},
            first_seen=now,
            last_seen=now,
        )
    )


def test_watch_alerts__counts_alerts_by_status_and_severity(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate.upgrade(engine)
    factory = make_session_factory(engine)
    with factory() as session:
        make_alert_row(session, "k1")
        make_alert_row(session, "k2")
        session.commit()
    metrics = Metrics()
    metrics.watch_alerts(factory)
    got = samples(metrics)
    engine.dispose()
    assert got["finsecure_alerts", (("severity", "high"), ("status", "new"))] == 2
    assert got["finsecure_database_up", ()] == 1


def test_watch_alerts__database_down_is_reported_not_raised(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no tables: the query fails
    metrics = Metrics()
    metrics.watch_alerts(make_session_factory(engine))
    got = samples(metrics)
    engine.dispose()
    assert got["finsecure_database_up", ()] == 0
