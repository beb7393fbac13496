"""The embedded bus: JetStream's semantics inside one process, with no server.

One stream holds every subject, in publish order. Durable consumers remember what they have
acknowledged; messages delivered but not acknowledged are delivered again once ``ack_wait_s`` passes or
as soon as the iterator that held them is closed. A message is forgotten once every durable consumer
has acknowledged it (or never wanted it). A durable exists from the first time an iterator on it is
advanced; one created later starts from the oldest message still held, so start consumers first.

The stream is bounded: when it holds ``max_messages`` (or ``max_bytes``) that consumers still need,
``publish`` waits up to ``publish_timeout_s`` for acknowledgements and then raises
:class:`~finsecure.bus.base.BusFull` instead of dropping anything.

It is thread-safe and works across event loops: a sink publishing from one loop thread wakes a
consumer iterating on another.

Example
-------
>>> import asyncio
>>> async def demo() -> list[tuple[str, int, bool]]:
...     bus = InProcessBus()
...     await bus.publish("events.auth.0", b"a", msg_id="x")
...     dup = await bus.publish("events.auth.0", b"a", msg_id="x")
...     seen = []
...     async for message in bus.subscribe("events.>", durable="workers"):
...         await message.ack()
...         seen.append((message.subject, message.seq, dup.duplicate))
...         break
...     await bus.close()
...     return seen
>>> asyncio.run(demo())
[('events.auth.0', 1, True)]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from functools import partial

from finsecure.bus.base import (
    MSG_ID_HEADER,
    Bus,
    BusClosed,
    BusError,
    BusFull,
    Message,
    PublishAck,
    subject_matches,
)

__all__ = ["InProcessBus"]

_MAX_DEDUP_IDS = 1_000_000


@dataclass(slots=True)
class _Stored:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class _Pending:
    owner: int
    """Token of the iterator holding the message."""
    deadline: float
    """Monotonic time after which it is delivered again; 0 = now."""


@dataclass(slots=True)
class _Consumer:
    name: str
    subject_filter: str
    ack_wait_s: float
    next_seq: int
    pending: dict[int, _Pending] = field(default_factory=dict)
    deliveries: dict[int, int] = field(default_factory=dict)

    def done_with(self, stored: _Stored) -> bool:
        """Acknowledged already, or never of interest to this consumer."""
        if stored.seq in self.pending:
            return False
        return stored.seq < self.next_seq or not subject_matches(self.subject_filter, stored.subject)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.pending.values()), default=None)


class InProcessBus(Bus):
    """An in-memory bus with durable consumers, explicit acks, redelivery and dedup (see module docs).

    Parameters
    ----------
    max_messages, max_bytes
        Bounds of the stream (messages not yet acknowledged by every durable consumer).
    ack_wait_s
        Default redelivery delay for messages a consumer does not acknowledge.
    duplicate_window_s
        How long a message id is remembered for deduplication.
    max_ack_pending
        Per durable, at most this many delivered-but-unacknowledged messages (flow control).
    max_payload
        Largest accepted message in bytes (``None``: no limit).
    publish_timeout_s
        How long ``publish`` waits for room in a full stream before raising ``BusFull``.
    """

    def __init__(
        self,
        *,
        max_messages: int = 100_000,
        max_bytes: int = 1 << 30,
        ack_wait_s: float = 30.0,
        duplicate_window_s: float = 120.0,
        max_ack_pending: int = 1000,
        max_payload: int | None = None,
        publish_timeout_s: float = 30.0,
        stream: str = "FINSECURE",
    ) -> None:
        self.stream = stream
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.ack_wait_s = ack_wait_s
        self.duplicate_window_s = duplicate_window_s
        self.max_ack_pending = max_ack_pending
        self.publish_timeout_s = publish_timeout_s
        self._max_payload = max_payload
        self._lock = threading.Lock()
        self._messages: dict[int, _Stored] = {}
        self._first_seq = 1
        self._last_seq = 0
        self._bytes = 0
        self._dedup: dict[str, int] = {}
        self._dedup_expiry: collections.deque[tuple[float, str]] = collections.deque()
        self._consumers: dict[str, _Consumer] = {}
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._tokens = itertools.count(1)
        self._closed = False

    @property
    def max_payload(self) -> int | None:
        """Largest accepted message in bytes (``None``: no limit)."""
        return self._max_payload

    @property
    def local(self) -> bool:
        """Always true: messages stay in this process."""
        return True

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __len__(self) -> int:
        """Messages currently held."""
        with self._lock:
            return len(self._messages)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        msg_id: str | None = None,
    ) -> PublishAck:
        """Store a message (see :meth:`Bus.publish`); waits while the stream is full."""
        if not subject or any(not part or part in ("*", ">") for part in subject.split(".")):
            raise BusError(
                f"cannot publish to {subject!r}: a subject is dot-separated names without wildcards"
            )
        if self._max_payload is not None and len(payload) > self._max_payload:
            raise BusError(f"message of {len(payload)} bytes is over the bus limit of {self._max_payload}")
        stored_headers = dict(headers or {})
        msg_id = msg_id or stored_headers.get(MSG_ID_HEADER)
        if msg_id:
            stored_headers[MSG_ID_HEADER] = msg_id
        deadline = time.monotonic() + self.publish_timeout_s
        while True:
            with self._lock:
                if self._closed:
                    raise BusClosed("the bus is closed")
                now = time.monotonic()
                self._expire_dedup(now)
                if msg_id and msg_id in self._dedup:
                    return PublishAck(seq=self._dedup[msg_id], duplicate=True, stream=self.stream)
                self._trim()
                if len(self._messages) < self.max_messages and self._bytes + len(payload) <= self.max_bytes:
                    self._last_seq += 1
                    seq = self._last_seq
                    self._messages[seq] = _Stored(seq, subject, bytes(payload), stored_headers)
                    self._bytes += len(payload)
                    if msg_id:
                        self._dedup[msg_id] = seq
                        self._dedup_expiry.append((now + self.duplicate_window_s, msg_id))
                    waiters = self._take_waiters()
                    result = PublishAck(seq=seq, stream=self.stream)
                    break
                room = self._register_waiter()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drop_waiter(room)
                raise BusFull(
                    f"the bus holds {self.max_messages} message(s) that consumers have not acknowledged "
                    f"for {self.publish_timeout_s} s"
                )
            await self._wait(room, remaining)
        _wake(waiters)
        return result

    def _expire_dedup(self, now: float) -> None:
        expiry = self._dedup_expiry
        while expiry and (expiry[0][0] <= now or len(expiry) > _MAX_DEDUP_IDS):
            _, old = expiry.popleft()
            self._dedup.pop(old, None)

    def _trim(self) -> None:
        """Forget leading messages no durable consumer still needs (nothing while there are none)."""
        if not self._consumers:
            return
        consumers = self._consumers.values()
        while self._first_seq <= self._last_seq:
            stored = self._messages.get(self._first_seq)
            if stored is not None and not all(consumer.done_with(stored) for consumer in consumers):
                return
            if stored is not None:
                del self._messages[self._first_seq]
                self._bytes -= len(stored.data)
            self._first_seq += 1

    # -- consuming -----------------------------------------------------------------------------

    async def subscribe(
        self, subject_filter: str, durable: str, *, ack_wait_s: float | None = None
    ) -> AsyncGenerator[Message, None]:
        """Iterate over the durable consumer's messages (see :meth:`Bus.subscribe`)."""
        token = next(self._tokens)
        with self._lock:
            if self._closed:
                raise BusClosed("the bus is closed")
            consumer = self._consumers.get(durable)
            if consumer is None:
                consumer = _Consumer(
                    name=durable,
                    subject_filter=subject_filter,
                    ack_wait_s=self.ack_wait_s if ack_wait_s is None else ack_wait_s,
                    next_seq=self._first_seq,
                )
                self._consumers[durable] = consumer
            elif consumer.subject_filter != subject_filter:
                raise BusError(
                    f"durable consumer {durable!r} already reads {consumer.subject_filter!r}, "
                    f"not {subject_filter!r}; use another name"
                )
        try:
            while True:
                wait_s: float | None = None
                with self._lock:
                    if self.closed:  # (re-read on every turn: another thread may close the bus)
                        return
                    message = self._next_for(consumer, token)
                    if message is None:
                        wakeup = self._register_waiter()
                        next_deadline = consumer.next_deadline()
                        if next_deadline is not None:
                            wait_s = max(0.0, next_deadline - time.monotonic())
                if message is not None:
                    yield message
                    continue
                await self._wait(wakeup, wait_s)
        finally:
            with self._lock:
                for pending in consumer.pending.values():
                    if pending.owner == token:
                        pending.deadline = 0.0
                waiters = self._take_waiters()
            _wake(waiters)

    def _next_for(self, consumer: _Consumer, token: int) -> Message | None:
        now = time.monotonic()
        due = [seq for seq, pending in consumer.pending.items() if pending.deadline <= now]
        if due:
            seq = min(due)
        else:
            if len(consumer.pending) >= self.max_ack_pending:
                return None
            seq = self._first_seq if consumer.next_seq < self._first_seq else consumer.next_seq
            while seq <= self._last_seq:
                stored = self._messages.get(seq)
                if stored is not None and subject_matches(consumer.subject_filter, stored.subject):
                    break
                seq += 1
            consumer.next_seq = seq + 1 if seq <= self._last_seq else self._last_seq + 1
            if seq > self._last_seq:
                return None
        stored = self._messages[seq]
        consumer.pending[seq] = _Pending(owner=token, deadline=now + consumer.ack_wait_s)
        deliveries = consumer.deliveries[seq] = consumer.deliveries.get(seq, 0) + 1
        return Message(
            subject=stored.subject,
            data=stored.data,
            seq=seq,
            headers=stored.headers,
            num_delivered=deliveries,
            ack=partial(self._ack, consumer, seq),
            nak=partial(self._nak, consumer, seq),
        )

    async def _ack(self, consumer: _Consumer, seq: int) -> None:
        with self._lock:
            if consumer.pending.pop(seq, None) is None:
                return  # already acknowledged
            consumer.deliveries.pop(seq, None)
            self._trim()
            waiters = self._take_waiters()
        _wake(waiters)

    async def _nak(self, consumer: _Consumer, seq: int) -> None:
        with self._lock:
            pending = consumer.pending.get(seq)
            if pending is None:
                return
            pending.deadline = 0.0
            waiters = self._take_waiters()
        _wake(waiters)

    # -- waking across threads and loops -------------------------------------------------------

    def _register_waiter(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop, future))
        return future

    def _drop_waiter(self, future: asyncio.Future[None]) -> None:
        with self._lock:
            self._waiters = [(loop, f) for loop, f in self._waiters if f is not future]

    def _take_waiters(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    async def _wait(self, future: asyncio.Future[None], timeout: float | None) -> None:
        # Capped so a consumer also notices ack deadlines and closing without a wake-up.
        await asyncio.wait({future}, timeout=1.0 if timeout is None else min(timeout, 1.0))
        if not future.done():
            self._drop_waiter(future)

    async def close(self) -> None:
        """Close the bus: publishing fails and iterators end."""
        with self._lock:
            self._closed = True
            waiters = self._take_waiters()
        _wake(waiters)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits on it any more
            loop.call_soon_threadsafe(_resolve, future)
