"""InProcessBus specifics: bounded retention, forgetting acknowledged messages, waking across threads.

The behaviour it shares with NatsBus is tested on both in ``test_nats.py``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from finsecure.bus.base import BusClosed, BusError, BusFull, BusLoop
from finsecure.bus.memory import InProcessBus


def test_publish__waits_then_refuses_when_consumers_fall_behind():
    async def scenario() -> None:
        bus = InProcessBus(max_messages=3, publish_timeout_s=0.05)
        messages = bus.subscribe("events.>", "slow")
        for index in range(3):
            await bus.publish("events.auth.0", bytes([index]))
        with pytest.raises(BusFull, match="not acknowledged"):
            await bus.publish("events.auth.0", b"x")
        first = await anext(messages)
        await first.ack()  # frees one slot
        assert (await bus.publish("events.auth.0", b"x")).seq == 4
        assert len(bus) == 3
        await messages.aclose()
        await bus.close()

    asyncio.run(scenario())


def test_publish__a_waiting_publisher_resumes_when_a_consumer_acks():
    async def scenario() -> None:
        bus = InProcessBus(max_messages=1, publish_timeout_s=10)
        messages = bus.subscribe("events.>", "d")
        await bus.publish("events.auth.0", b"a")
        blocked = asyncio.create_task(bus.publish("events.auth.0", b"b"))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        await (await anext(messages)).ack()
        assert (await asyncio.wait_for(blocked, 10)).seq == 2
        await messages.aclose()
        await bus.close()

    asyncio.run(scenario())


def test_ack__forgets_messages_only_once_every_durable_has_them():
    async def scenario() -> None:
        bus = InProcessBus()
        fast, slow = bus.subscribe("events.>", "fast"), bus.subscribe("events.auth.*", "slow")
        await bus.publish("events.auth.0", b"a")
        await bus.publish("events.payment.0", b"p")
        held = await anext(slow)
        for message in [await anext(fast), await anext(fast)]:
            await message.ack()
        assert len(bus) == 2  # "slow" has not acknowledged the auth message yet
        await held.ack()
        assert len(bus) == 0  # the payment message never concerned "slow"
        await fast.aclose()
        await slow.aclose()
        await bus.close()

    asyncio.run(scenario())


def test_subscribe__is_woken_by_a_publish_from_another_thread_and_loop():
    bus = InProcessBus()
    publisher = BusLoop("publisher")
    received: list[bytes] = []
    ready = threading.Event()

    async def consume() -> None:
        messages = bus.subscribe("events.>", "x")
        ready.set()
        async for message in messages:
            received.append(message.data)
            await message.ack()
            if len(received) == 3:
                break
        await messages.aclose()

    consumer = threading.Thread(target=asyncio.run, args=(consume(),))
    consumer.start()
    assert ready.wait(10)
    for index in range(3):
        publisher.run(bus.publish("events.network.1", bytes([index])), timeout=10)
    consumer.join(10)
    publisher.close()
    assert received == [b"\x00", b"\x01", b"\x02"]


def test_subscribe__ends_when_the_bus_closes():
    async def scenario() -> None:
        bus = InProcessBus()
        messages = bus.subscribe("events.>", "d")
        pending = asyncio.ensure_future(anext(messages))
        await asyncio.sleep(0.01)
        await bus.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 10)
        with pytest.raises(BusClosed):
            await bus.publish("events.auth.0", b"x")

    asyncio.run(scenario())


def test_publish__refuses_bad_subjects_and_big_payloads():
    async def scenario() -> None:
        bus = InProcessBus(max_payload=10)
        with pytest.raises(BusError, match="without wildcards"):
            await bus.publish("events.*", b"x")
        with pytest.raises(BusError, match="without wildcards"):
            await bus.publish("events..x", b"x")
        with pytest.raises(BusError, match="over the bus limit of 10"):
            await bus.publish("events.auth.0", b"x" * 11)
        first = bus.subscribe("events.>", "d")
        await bus.publish("events.auth.0", b"x")
        await anext(first)
        with pytest.raises(BusError, match="already reads"):
            await anext(bus.subscribe("events.auth.>", "d"))
        await first.aclose()
        await bus.close()

    asyncio.run(scenario())


def test_subscribe__holds_back_new_messages_at_max_ack_pending():
    async def scenario() -> None:
        bus = InProcessBus(max_ack_pending=2)
        for index in range(3):
            await bus.publish("events.auth.0", bytes([index]))
        messages = bus.subscribe("events.>", "d")
        first, second = await anext(messages), await anext(messages)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(anext(messages))), 0.05)
        await first.ack()
        await second.ack()
        await bus.close()

    asyncio.run(scenario())
