"""The event bus contract, and the adapters that connect it to the synchronous pipeline.

A :class:`Bus` is a persistent, ordered log of subjects (``events.payment.3``) that durable consumers
read with explicit acknowledgement: at-least-once delivery, redelivery of whatever was not acknowledged,
and idempotent publishing by message id. :class:`~finsecure.bus.memory.InProcessBus` (the embedded
default) and :class:`~finsecure.bus.nats.NatsBus` (NATS JetStream) behave the same way.

:class:`BusSink` publishes each pipeline batch to ``events.<domain>.<partition>``, split by a stable hash
of the entity key, so one worker sees every event of an entity. :class:`BusSource` reads batches back as
a pipeline :class:`~finsecure.pipeline.batch.Source`; it acknowledges only when told that results are
durable::

    mark = source.mark()          # everything the pipeline has been given so far
    pipeline.flush()              # ... is now through every sink, and the sinks flushed
    source.ack_through(mark)      # so the bus may forget it
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

import polars as pl
import pyarrow as pa

from finsecure.bus.codec import (
    CodecError,
    Compression,
    decode_batch,
    dedup_id_of,
    encode_table,
    plan_partitions,
    stable_hash,
    to_wire,
)
from finsecure.event.schemas import Domain
from finsecure.ingest.deadletter import dead_letters
from finsecure.pipeline.batch import Batch, Sink, Source, SourceChunk

__all__ = [
    "MSG_ID_HEADER",
    "Bus",
    "BusClosed",
    "BusError",
    "BusFull",
    "BusLoop",
    "BusSink",
    "BusSource",
    "Flushable",
    "Message",
    "PublishAck",
    "subject_matches",
]

logger = logging.getLogger(__name__)

MSG_ID_HEADER: Final = "Nats-Msg-Id"
"""Header holding a message's dedup id; a second publish with the same id is recognised as a duplicate."""

_T = TypeVar("_T")


class BusError(RuntimeError):
    """The bus could not do what was asked (not reachable, refused, timed out)."""


class BusClosed(BusError):
    """The bus was closed."""


class BusFull(BusError):
    """The bus holds as many messages as it may and consumers have not acknowledged enough of them."""


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The bus's receipt for a published message."""

    seq: int
    """Position of the message in the stream (of the original, for a duplicate)."""
    duplicate: bool = False
    """True when a message with the same dedup id was already stored."""
    stream: str = ""


class Message:
    """One delivered message. Call :meth:`ack` once its effects are durable, or it will come again."""

    __slots__ = ("_ack", "_nak", "data", "headers", "num_delivered", "seq", "subject")

    def __init__(
        self,
        *,
        subject: str,
        data: bytes,
        seq: int,
        headers: Mapping[str, str] | None = None,
        num_delivered: int = 1,
        ack: Callable[[], Awaitable[None]],
        nak: Callable[[], Awaitable[None]],
    ) -> None:
        self.subject = subject
        self.data = data
        self.seq = seq
        self.headers: Mapping[str, str] = headers or {}
        self.num_delivered = num_delivered
        """How many times the bus has delivered it (NATS may under-count a redelivery that races with
        an expiring pull request; treat values above 1 as a hint, not a guarantee)."""
        self._ack = ack
        self._nak = nak

    async def ack(self) -> None:
        """Acknowledge: the consumer is done with this message (idempotent)."""
        await self._ack()

    async def nak(self) -> None:
        """Give the message back for immediate redelivery."""
        await self._nak()

    def __repr__(self) -> str:
        return f"Message(subject={self.subject!r}, seq={self.seq}, bytes={len(self.data)})"


class Bus(ABC):
    """A persistent, ordered, at-least-once message log with durable consumers."""

    @property
    def max_payload(self) -> int | None:
        """Largest message the bus accepts, in bytes (``None``: no limit)."""
        return None

    @property
    def local(self) -> bool:
        """True when messages never leave the process (compressing them would only cost CPU)."""
        return False

    @abstractmethod
    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        msg_id: str | None = None,
    ) -> PublishAck:
        """Store a message durably and return its receipt.

        ``msg_id`` (or a ``Nats-Msg-Id`` header) makes publishing idempotent: a second message with the
        same id inside the bus's duplicate window is not stored again and comes back with
        ``duplicate=True``.
        """

    @abstractmethod
    def subscribe(
        self, subject_filter: str, durable: str, *, ack_wait_s: float | None = None
    ) -> AsyncGenerator[Message, None]:
        """Iterate over messages matching ``subject_filter`` (``*`` = one token, ``>`` = the rest).

        ``durable`` names a consumer that survives disconnections and restarts: it resumes after the
        last acknowledged message. Several iterators on the same durable share its messages (a worker
        group). Messages not acknowledged within ``ack_wait_s`` (set when the durable is created), or
        still unacknowledged when an iterator is closed, are delivered again.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release the connection; iterators end."""


def subject_matches(subject_filter: str, subject: str) -> bool:
    """Whether ``subject`` matches a NATS-style filter.

    Examples
    --------
    >>> subject_matches("events.>", "events.payment.3"), subject_matches("events.*.3", "events.auth.3")
    (True, True)
    >>> subject_matches("events.*", "events.payment.3"), subject_matches("events.>", "events")
    (False, False)
    """
    wanted = subject_filter.split(".")
    parts = subject.split(".")
    for index, pattern in enumerate(wanted):
        if pattern == ">":
            return len(parts) > index
        if index >= len(parts) or pattern not in ("*", parts[index]):
            return False
    return len(parts) == len(wanted)


# --------------------------------------------------------------------------------------------
# Bridging the async bus into synchronous sinks and sources
# --------------------------------------------------------------------------------------------


class BusLoop:
    """An asyncio loop on a background thread, for synchronous code that talks to a bus.

    A NATS connection belongs to the loop it was opened on: a sink and a source that share one
    :class:`~finsecure.bus.nats.NatsBus` must share one ``BusLoop`` too.
    """

    def __init__(self, name: str = "finsecure-bus") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result (cancelling it after ``timeout`` seconds)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BusLoop.run was called from its own loop thread; await the coroutine instead")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise BusError(f"the bus did not answer within {timeout} s") from None

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Start ``coro`` as a task on the loop without waiting for it."""
        return self.run(_create_task(coro))

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join its thread."""
        if self.loop.is_closed():
            return

        async def _cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()


class BusSink(Sink):
    """Publishes every batch to ``<prefix>.<domain>.<partition>``, split by a stable hash of its entity key.

    ``write`` returns once the bus has acknowledged every message, so a written batch is durable. Each
    message carries a dedup id derived from its events' ids, so re-publishing after a crash is harmless.
    Messages larger than the bus's ``max_payload`` are split by rows.

    Parameters
    ----------
    bus
        Where to publish.
    partitions
        Number of partitions per domain; keep it fixed for the life of a stream.
    key_columns
        Per domain, the entity columns that pick a partition (default
        :data:`~finsecure.bus.codec.PARTITION_KEYS`).
    compression
        Arrow IPC compression of each message; ``"auto"``: none on an in-process bus, LZ4 otherwise.
    loop
        The loop to run the bus on; by default the sink starts its own.
    close_bus
        Close ``bus`` when the sink is closed (set it when the sink owns the bus).
    timeout_s
        How long ``write`` may wait for the bus.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        partitions: int = 16,
        subject_prefix: str = "events",
        key_columns: Mapping[Domain, Sequence[str]] | None = None,
        compression: Compression | Literal["auto"] = "auto",
        loop: BusLoop | None = None,
        close_bus: bool = False,
        timeout_s: float = 30.0,
        sink_id: str = "bus",
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.sink_id = sink_id
        self.bus = bus
        self.partitions = partitions
        self.subject_prefix = subject_prefix
        self.key_columns = key_columns
        self.compression: Compression = (
            (None if bus.local else "lz4") if compression == "auto" else compression
        )
        self.timeout_s = timeout_s
        self._own_loop = loop is None
        self._loop = loop or BusLoop("finsecure-bus-sink")
        self._close_bus = close_bus
        self._closed = False
        self.published = 0
        """Messages stored so far (duplicates excluded)."""
        self.duplicates = 0

    def messages(self, batch: Batch) -> list[tuple[str, bytes, dict[str, str]]]:
        """The ``(subject, payload, headers)`` messages that :meth:`write` publishes for ``batch``."""
        domain = Domain(batch.domain)
        frame = batch.frame
        plan = plan_partitions(frame, domain, self.partitions, key_columns=self.key_columns)
        if not plan.parts:
            return []
        # One reorder, one Arrow conversion and one hash pass per batch; partitions are zero-copy slices.
        ids = stable_hash(frame["event_id"])
        if not plan.identity:
            frame = frame[pl.Series(plan.order)]
            ids = ids[plan.order]
        table = to_wire(frame)
        limit = self.bus.max_payload
        out: list[tuple[str, bytes, dict[str, str]]] = []
        for partition, offset, count in plan.parts:
            subject = f"{self.subject_prefix}.{domain.value}.{partition}"
            for start, rows, payload in self._encode_within(batch, table, offset, count, limit):
                headers = {
                    MSG_ID_HEADER: dedup_id_of(domain, partition, ids[start : start + rows]),
                    "Finsecure-Domain": domain.value,
                    "Finsecure-Source": batch.source,
                    "Finsecure-Rows": str(rows),
                }
                out.append((subject, payload, headers))
        return out

    def _encode_within(
        self, batch: Batch, table: pa.Table, offset: int, count: int, limit: int | None
    ) -> list[tuple[int, int, bytes]]:
        """``(offset, rows, payload)`` messages for rows ``offset..offset+count``, each under ``limit``."""
        payload = encode_table(
            table.slice(offset, count),
            domain=batch.domain,
            source=batch.source,
            seq=batch.seq,
            compression=self.compression,
        )
        # Headers and protocol framing also count against the server's limit: keep a margin.
        if limit is None or len(payload) <= limit - 1024:
            return [(offset, count, payload)]
        if count <= 1:
            raise BusError(
                f"one {batch.domain} row encodes to {len(payload)} bytes, over the bus limit of {limit}"
            )
        half = count // 2
        return self._encode_within(batch, table, offset, half, limit) + self._encode_within(
            batch, table, offset + half, count - half, limit
        )

    def write(self, batch: Batch) -> None:
        """Publish the batch and wait until the bus has stored every part."""
        if self._closed:
            raise BusClosed("the bus sink is closed")
        messages = self.messages(batch)
        if messages:
            acks = self._loop.run(self._publish_all(messages), self.timeout_s)
            self.duplicates += sum(ack.duplicate for ack in acks)
            self.published += sum(not ack.duplicate for ack in acks)

    async def _publish_all(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> list[PublishAck]:
        # Subjects in parallel, but one subject's messages in order: the bus keeps per-subject order.
        by_subject: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
        for subject, payload, headers in messages:
            by_subject.setdefault(subject, []).append((payload, headers))

        async def publish_in_order(
            subject: str, items: list[tuple[bytes, dict[str, str]]]
        ) -> list[PublishAck]:
            return [await self.bus.publish(subject, payload, headers) for payload, headers in items]

        results = await asyncio.gather(*(publish_in_order(s, items) for s, items in by_subject.items()))
        return [ack for acks in results for ack in acks]

    def close(self) -> None:
        """Close the bus if the sink owns it, and stop the sink's own loop."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._close_bus:
                self._loop.run(self.bus.close(), self.timeout_s)
        finally:
            if self._own_loop:
                self._loop.close()


_END: Final = object()


class Flushable(Protocol):
    """What :class:`BusSource` commits through (a :class:`~finsecure.pipeline.engine.Pipeline`)."""

    def flush(self, *, timeout: float | None = None) -> None: ...


class BusSource(Source):
    """Reads batches from the bus as a pipeline source, for workers.

    A background task on the loop pulls messages (at most ``prefetch`` ahead of the pipeline) and
    :meth:`chunks` decodes them. A message counts as *consumed* once the pipeline has taken its chunk
    (the iterator was asked for the next one); :meth:`mark` and :meth:`ack_through` acknowledge consumed
    messages once the caller knows their results are durable. Messages that cannot be decoded come out
    as rejects (dead letters) and are acknowledged like the others, so one bad message cannot block a
    partition.

    Parameters
    ----------
    bus
        Where to read.
    subject_filter
        For example ``events.>`` (everything) or ``events.*.3`` (partition 3 of every domain).
    durable
        The consumer group's name; workers sharing it share the messages.
    idle_timeout_s
        End :meth:`chunks` after this long without a message (``None``: run until :meth:`close`).
    commit_to
        The pipeline the chunks go to. When given, :meth:`chunks` commits by itself every
        ``commit_every_messages`` messages or ``commit_every_s`` seconds, and when it ends: it flushes the
        pipeline (results durable), then acknowledges what the pipeline had taken. Keep
        ``commit_every_messages`` below the bus's ``max_ack_pending`` (1000 by default), or delivery
        pauses until the next timed commit.
    """

    def __init__(
        self,
        bus: Bus,
        subject_filter: str = "events.>",
        durable: str = "finsecure-workers",
        *,
        prefetch: int = 8,
        idle_timeout_s: float | None = None,
        ack_wait_s: float | None = None,
        loop: BusLoop | None = None,
        close_bus: bool = False,
        timeout_s: float = 30.0,
        source_id: str | None = None,
        commit_to: Flushable | None = None,
        commit_every_s: float = 1.0,
        commit_every_messages: int = 256,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.commit_to = commit_to
        self.commit_every_s = commit_every_s
        self.commit_every_messages = commit_every_messages
        self._last_commit = time.monotonic()
        self.bus = bus
        self.subject_filter = subject_filter
        self.durable = durable
        self.source_id = source_id or f"bus:{durable}"
        self.prefetch = prefetch
        self.idle_timeout_s = idle_timeout_s
        self.ack_wait_s = ack_wait_s
        self.timeout_s = timeout_s
        self._own_loop = loop is None
        self._loop = loop or BusLoop("finsecure-bus-source")
        self._close_bus = close_bus
        self._inbox: queue.Queue[Message | object] = queue.Queue()
        self._task: asyncio.Task[None] | None = None
        self._credit: asyncio.Semaphore | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._consumed: list[Message] = []
        self._consumed_base = 0
        self._closed = False

    # -- reading -----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None:
            self._credit = self._loop.run(_make_semaphore(self.prefetch))
            self._task = self._loop.spawn(self._pump())

    async def _pump(self) -> None:
        assert self._credit is not None  # noqa: S101 - set by _start before the task exists
        try:
            messages = self.bus.subscribe(self.subject_filter, self.durable, ack_wait_s=self.ack_wait_s)
            # aclosing: on cancellation the subscription ends now, giving back what it holds unacknowledged.
            async with contextlib.aclosing(messages):
                async for message in messages:
                    await self._credit.acquire()
                    self._inbox.put(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
        finally:
            self._inbox.put(_END)

    def chunks(self) -> Iterator[SourceChunk]:
        """Yield one chunk per message until :meth:`close`, the idle timeout, or the bus ends."""
        self._start()
        last_message = time.monotonic()
        while not self._closed:
            self._maybe_commit(force=False)
            wait_s = self.idle_timeout_s
            if self.commit_to is not None:
                wait_s = self.commit_every_s if wait_s is None else min(wait_s, self.commit_every_s)
            try:
                item = self._inbox.get(timeout=wait_s)
            except queue.Empty:
                idle = (
                    self.idle_timeout_s is not None and time.monotonic() - last_message >= self.idle_timeout_s
                )
                if idle:
                    self._maybe_commit(force=True)
                    return
                continue
            if item is _END:
                self._maybe_commit(force=True)
                if self._error is not None:
                    raise BusError(f"reading {self.subject_filter!r} failed: {self._error}") from self._error
                return
            assert isinstance(item, Message)  # noqa: S101 - the inbox only holds messages and _END
            credit = self._credit
            assert credit is not None  # noqa: S101
            self._loop.loop.call_soon_threadsafe(credit.release)
            yield self._to_chunk(item)
            # The caller asked for the next chunk, so it has handed this one to the pipeline.
            with self._lock:
                self._consumed.append(item)
            last_message = time.monotonic()

    def _maybe_commit(self, *, force: bool) -> None:
        """With ``commit_to``: flush the pipeline and acknowledge what it has taken, when due."""
        if self.commit_to is None:
            return
        with self._lock:
            waiting = len(self._consumed)
        if not waiting:
            self._last_commit = time.monotonic()
            return
        due = (
            waiting >= self.commit_every_messages
            or time.monotonic() - self._last_commit >= self.commit_every_s
        )
        if force or due:
            mark = self.mark()
            self.commit_to.flush(timeout=self.timeout_s)
            self.ack_through(mark)
            self._last_commit = time.monotonic()

    def _to_chunk(self, message: Message) -> SourceChunk:
        try:
            batch = decode_batch(message.data)
        except CodecError as exc:
            domain_header = message.headers.get("Finsecure-Domain", "")
            domain = Domain(domain_header) if domain_header in Domain.__members__ else None
            rejects = dead_letters(
                source=self.source_id,
                reasons=[f"cannot read bus message {message.subject}#{message.seq}: {exc}"],
                offsets=[message.seq],
                raws=[None],
                domain=None if domain is None else domain.value,
            )
            return SourceChunk(
                domain=domain or Domain.network, frame=pl.DataFrame(), rejects=rejects, offset_end=message.seq
            )
        return SourceChunk(domain=batch.domain, frame=batch.frame, offset_end=message.seq)

    # -- acknowledging -----------------------------------------------------------------------

    def mark(self) -> int:
        """A position covering every message consumed so far, for :meth:`ack_through`."""
        with self._lock:
            return self._consumed_base + len(self._consumed)

    def ack_through(self, mark: int) -> int:
        """Acknowledge every message consumed before ``mark``; returns how many were acknowledged.

        Call it only once the results of those messages are durable (e.g. after ``pipeline.flush()``).
        """
        with self._lock:
            count = max(0, min(mark - self._consumed_base, len(self._consumed)))
            to_ack = self._consumed[:count]
            del self._consumed[:count]
            self._consumed_base += count
        if to_ack:
            self._loop.run(_ack_all(to_ack), self.timeout_s)
        return len(to_ack)

    def close(self) -> None:
        """Stop reading. Messages not acknowledged are delivered again (to this durable) later."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._task is not None:
                self._loop.run(_cancel(self._task), self.timeout_s)
            if self._close_bus:
                self._loop.run(self.bus.close(), self.timeout_s)
        finally:
            if self._own_loop:
                self._loop.close()


async def _make_semaphore(value: int) -> asyncio.Semaphore:
    return asyncio.Semaphore(value)


async def _ack_all(messages: Sequence[Message]) -> None:
    await asyncio.gather(*(message.ack() for message in messages))


async def _create_task(coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
    return asyncio.get_running_loop().create_task(coro)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
