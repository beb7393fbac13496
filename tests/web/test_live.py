"""The live feed: KPI samples and change notes published to the hub, rates from two samples."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from finsecure.alert.sink import AlertWriteResult
from finsecure.pipeline.engine import PipelineStats
from finsecure.web.hub import InMemoryBroadcaster
from finsecure.web.live import LiveFeed
from finsecure.web.service import build_kpi
from tests.alert.factories import session_factory


def test_live_feed__publishes_kpi_and_alert_ids(db_session: Session) -> None:
    hub = InMemoryBroadcaster()
    feed = LiveFeed(hub, session_factory(db_session))

    async def scenario() -> list[dict[str, Any]]:
        sub = hub.subscribe({"kpi", "alerts", "incidents"})
        t0 = dt.datetime.now(dt.UTC)
        feed.sample(t0)
        feed.sample(t0 + dt.timedelta(seconds=1))
        feed.on_alerts(AlertWriteResult(hits=3, inserted=1, alert_ids=[41], incident_ids=[7]))
        return [await asyncio.wait_for(sub.get(), 1) for _ in range(4)]

    messages = asyncio.run(scenario())
    assert [m["channel"] for m in messages] == ["kpi", "kpi", "alerts", "incidents"]
    assert messages[1]["data"]["events_per_s"] == {"network": 0.0, "cloud": 0.0, "auth": 0.0, "payment": 0.0}
    assert messages[2]["data"] == {"alert_ids": [41], "inserted": 1, "updated": 0}
    assert messages[3]["data"]["incident_ids"] == [7]
    assert len(feed.history()) == 2


def test_build_kpi__rates_from_two_pipeline_samples(db_session: Session) -> None:
    def stats(payment: int, auth: int) -> PipelineStats:
        return PipelineStats(
            running=True, events_in={}, events_out={"payment": payment, "auth": auth}, step_events_in={},
            step_events_out={}, batches=3, batches_closed_by={}, batches_dropped=0, errors={}, dead_letters=2,
            last_seq=3, queue_depth=1, queue_capacity=16, buffered_rows=0, batch_latency_p50_ms=1.0,
            batch_latency_p99_ms=2.0, event_latency_p50_ms=12.0, event_latency_p99_ms=40.0,
        )  # fmt: skip

    t0 = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)
    first = build_kpi(db_session=db_session, stats=stats(100, 10), now=t0)
    second = build_kpi(
        db_session=db_session, stats=stats(300, 16), now=t0 + dt.timedelta(seconds=2), previous=first
    )
    assert first.events_per_s["payment"] == 0.0
    assert second.events_per_s == {"network": 0.0, "cloud": 0.0, "auth": 3.0, "payment": 100.0}
    assert (second.lag_p50_ms, second.lag_p99_ms, second.dead_letters) == (12.0, 40.0, 2)
    assert second.pipeline_running is True
