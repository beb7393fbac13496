from __future__ import annotations

import asyncio
import threading
import time

import pytest

from finsecure.web.hub import InMemoryBroadcaster, SlowSubscriber


def test_publish__reaches_only_subscribers_of_the_channel() -> None:
    hub = InMemoryBroadcaster()

    async def scenario() -> tuple[dict[str, object], int]:
        kpi = hub.subscribe({"kpi"})
        alerts = hub.subscribe({"alerts"})
        delivered = hub.publish("kpi", {"n": 1})
        return await asyncio.wait_for(kpi.get(), 1), delivered + alerts.pending()

    message, count = asyncio.run(scenario())
    assert message == {"channel": "kpi", "data": {"n": 1}}
    assert count == 1


def test_publish__from_another_thread_wakes_the_reader() -> None:
    hub = InMemoryBroadcaster()

    async def scenario() -> dict[str, object]:
        sub = hub.subscribe({"alerts"})
        threading.Timer(0.05, hub.publish, args=("alerts", {"alert_ids": [7]})).start()
        return await asyncio.wait_for(sub.get(), 2)

    assert asyncio.run(scenario())["data"] == {"alert_ids": [7]}


def test_publish__slow_subscriber_is_dropped_without_blocking() -> None:
    hub = InMemoryBroadcaster()

    async def scenario() -> tuple[float, bool, bool, int, int]:
        slow = hub.subscribe({"kpi"}, queue_size=8)
        fast = hub.subscribe({"kpi"}, queue_size=10_000)
        started = time.perf_counter()
        for i in range(5_000):
            hub.publish("kpi", {"i": i})
        elapsed = time.perf_counter() - started
        with pytest.raises(SlowSubscriber):
            await slow.get()
        return elapsed, slow.dropped, fast.dropped, fast.pending(), hub.subscribers

    elapsed, slow_dropped, fast_dropped, fast_pending, left = asyncio.run(scenario())
    assert slow_dropped
    assert not fast_dropped
    assert fast_pending == 5_000
    assert left == 1  # the dropped one is no longer published to
    assert hub.dropped == 1
    assert elapsed < 2.0  # never waited on the slow reader


def test_subscriber__rejects_a_zero_queue() -> None:
    hub = InMemoryBroadcaster()

    async def scenario() -> None:
        hub.subscribe({"kpi"}, queue_size=0)

    with pytest.raises(ValueError, match="queue_size"):
        asyncio.run(scenario())
