"""BusSink and BusSource on the in-process bus: partitioning, size limits, dedup, acknowledgement."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest

from finsecure.bus.base import BusError, BusLoop, BusSink, BusSource, subject_matches
from finsecure.bus.codec import decode_batch
from finsecure.bus.memory import InProcessBus
from finsecure.event.schemas import Domain
from finsecure.pipeline.batch import Batch
from finsecure.pipeline.drive import drive
from finsecure.pipeline.engine import Pipeline
from finsecure.pipeline.testing import TestingSink, sample_frame


def all_messages(bus: InProcessBus, loop: BusLoop, durable: str) -> list[tuple[str, Batch]]:
    """Every message on the bus, decoded, acknowledged under a throwaway durable."""

    async def read() -> list[tuple[str, Batch]]:
        out = []
        messages = bus.subscribe("events.>", durable)
        while True:
            try:
                message = await asyncio.wait_for(anext(messages), 0.2)
            except TimeoutError:
                return out
            out.append((message.subject, decode_batch(message.data)))
            await message.ack()

    return loop.run(read(), timeout=30)


def test_bus_sink__publishes_each_entity_to_one_partition():
    bus, loop = InProcessBus(), BusLoop()
    frame = sample_frame("payment", 2_000, entities=64)
    sink = BusSink(bus, partitions=8, loop=loop)
    with Pipeline([], [sink], max_rows=500) as pipeline:
        pipeline.submit("payment", frame, source="ingest")
    messages = all_messages(bus, loop, "check")
    loop.close()
    assert {subject.rsplit(".", 1)[0] for subject, _ in messages} == {"events.payment"}
    partitions_by_card: dict[str, set[str]] = {}
    for subject, batch in messages:
        assert batch.domain == Domain.payment
        assert batch.source == "ingest"
        for card in batch.frame["card_id"].unique().to_list():
            partitions_by_card.setdefault(card, set()).add(subject)
    assert len(partitions_by_card) == 64
    assert all(len(subjects) == 1 for subjects in partitions_by_card.values())
    assert len({subject for subject, _ in messages}) == 8
    combined = pl.concat([batch.frame for _, batch in messages])
    assert combined.sort("event_id").equals(frame.sort("event_id"))
    assert sink.published == len(messages)


def test_bus_sink__splits_messages_over_the_size_limit():
    bus, loop = InProcessBus(max_payload=20_000), BusLoop()
    frame = sample_frame("network", 3_000)
    sink = BusSink(bus, partitions=1, loop=loop, compression=None)
    sink.write(Batch(Domain.network, frame, source="s"))
    messages = all_messages(bus, loop, "check")
    loop.close()
    assert len(messages) > 2
    assert pl.concat([batch.frame for _, batch in messages]).equals(frame)  # order kept within a subject


def test_bus_sink__publishing_the_same_batch_again_is_a_duplicate():
    bus = InProcessBus()
    sink = BusSink(bus, partitions=4)
    batch = Batch(Domain.auth, sample_frame("auth", 500), source="s", seq=1)
    sink.write(batch)
    first = sink.published
    sink.write(batch)  # e.g. retried after a crash before the ack reached the caller
    assert sink.published == first
    assert sink.duplicates == first
    assert len(bus) == first
    sink.close()
    with pytest.raises(BusError, match="closed"):
        sink.write(batch)


def test_bus_source__acks_only_what_the_caller_confirms():
    bus, loop = InProcessBus(), BusLoop()
    frames = [sample_frame("auth", 300), sample_frame("cloud", 200)]
    publisher = BusSink(bus, partitions=2, loop=loop)
    for frame in frames:
        publisher.write(Batch(Domain(frame["domain"][0]), frame, source="ingest"))

    source = BusSource(bus, durable="workers", loop=loop, idle_timeout_s=0.3)
    received = TestingSink()
    with Pipeline([], [received]) as worker:
        drive(source, worker)
        mark = source.mark()
        worker.flush()
        assert mark == publisher.published
        assert source.ack_through(mark - 1) == mark - 1  # the last one stays unacknowledged
    source.close()
    assert received.rows == 500

    again = BusSource(bus, durable="workers", loop=loop, idle_timeout_s=0.3)
    redelivered = [chunk.frame.height for chunk in again.chunks()]
    assert len(redelivered) == 1  # only the unacknowledged message comes back
    assert again.ack_through(again.mark()) == 1
    again.close()

    last = BusSource(bus, durable="workers", loop=loop, idle_timeout_s=0.2)
    assert list(last.chunks()) == []
    last.close()
    loop.close()


def test_bus_source__a_message_left_unread_is_not_acknowledged():
    bus = InProcessBus()
    loop = BusLoop()
    for _index in range(3):
        loop.run(bus.publish("events.auth.0", b"junk"), timeout=10)
    source = BusSource(bus, loop=loop, idle_timeout_s=0.3)
    chunks = source.chunks()
    first = next(chunks)  # taken, but the caller never asks for the next one
    assert first.frame.height == 0
    assert first.rejects is not None
    assert source.mark() == 0
    chunks.close()
    source.close()
    loop.close()


def test_bus_source__turns_undecodable_messages_into_dead_letters():
    bus = InProcessBus()
    loop = BusLoop()
    loop.run(bus.publish("events.payment.3", b"not arrow", {"Finsecure-Domain": "payment"}), timeout=10)
    source = BusSource(bus, loop=loop, idle_timeout_s=0.3, source_id="bus:test")
    [chunk] = list(source.chunks())
    assert chunk.rejects is not None
    assert chunk.frame.height == 0
    row = chunk.rejects.to_pylist()[0]
    assert row["source"] == "bus:test"
    assert row["domain"] == "payment"
    assert row["offset"] == 1
    assert row["reason"].startswith("cannot read bus message events.payment.3#1: not an Arrow IPC stream")
    assert source.ack_through(source.mark()) == 1  # a poison message is acknowledged like any other
    source.close()
    loop.close()


def test_bus_loop__runs_coroutines_and_reports_timeouts():
    loop = BusLoop()
    assert loop.run(asyncio.sleep(0, result=7), timeout=10) == 7
    with pytest.raises(BusError, match=r"did not answer within 0\.01 s"):
        loop.run(asyncio.sleep(5), timeout=0.01)
    loop.close()
    loop.close()  # harmless twice


@pytest.mark.parametrize(
    ("subject_filter", "subject", "expected"),
    [
        ("events.>", "events.payment.3", True),
        ("events.>", "events", False),
        ("events.*.3", "events.auth.3", True),
        ("events.*.3", "events.auth.4", False),
        ("events.*", "events.auth.3", False),
        ("events.auth.3", "events.auth.3", True),
        (">", "anything.at.all", True),
    ],
)
def test_subject_matches__nats_wildcards(subject_filter: str, subject: str, expected: bool):
    assert subject_matches(subject_filter, subject) is expected


def test_bus_source__commits_through_the_pipeline_it_feeds():
    bus, loop = InProcessBus(max_ack_pending=4), BusLoop()
    publisher = BusSink(bus, partitions=1, loop=loop)
    frame = sample_frame("network", 1_000)
    for offset in range(0, 1_000, 100):  # 10 messages, more than max_ack_pending
        publisher.write(Batch(Domain.network, frame.slice(offset, 100), source="ingest"))
    received = TestingSink()
    with Pipeline([], [received], max_rows=10_000) as worker:
        source = BusSource(
            bus, loop=loop, idle_timeout_s=0.3, commit_to=worker, commit_every_messages=2, commit_every_s=60
        )
        progress = drive(source, worker)
        source.close()
    assert progress.events == received.rows == 1_000
    assert received.flushes >= 5  # one flush per commit
    assert len(bus) == 0  # everything acknowledged, so the bus let go of it
    loop.close()
