"""The bus on NATS JetStream, for scale-out: many ingest and worker processes, one durable stream.

On first use the bus connects, then creates the stream (``FINSECURE`` over ``events.>`` on file storage
by default) or adds missing subjects to it. Publishing waits for JetStream's acknowledgement and sends a
``Nats-Msg-Id`` so that a retried publish is stored once. Consumers are durable pull consumers with
explicit acknowledgement; a message is acknowledged (synchronously, so the server has recorded it) only
when the caller says its results are durable. The client reconnects on its own when the server
restarts; publishing and fetching retry through the gap.

A connection belongs to the event loop it was opened on: use one ``NatsBus`` per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from functools import partial

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from finsecure.bus.base import MSG_ID_HEADER, Bus, BusClosed, BusError, Message, PublishAck

__all__ = ["NatsBus"]

logger = logging.getLogger(__name__)

# Errors that mean "the server is not reachable right now" (e.g. restarting): retry, do not give up.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


async def _nothing() -> None:
    """The acknowledgement of a core NATS message: there is nothing to acknowledge."""


class NatsBus(Bus):
    """A :class:`~finsecure.bus.base.Bus` on NATS JetStream.

    Parameters
    ----------
    url
        ``nats://host:port`` (several, comma-separated, for a cluster).
    stream, subjects, storage
        The JetStream stream to create or extend; ``storage`` is ``"file"`` or ``"memory"``.
    duplicate_window_s
        How long the server remembers a ``Nats-Msg-Id``.
    max_bytes
        Stream size limit (``None``: the server's); when reached, publishing is refused, never silently
        dropped, because the stream discards new messages rather than old ones.
    ack_wait_s, max_ack_pending
        Consumer settings used when a durable is created.
    fetch_batch, fetch_timeout_s
        How many messages one pull asks for, and how long it waits.
    retry_s
        How long publish, fetch and ack keep retrying while the server is unreachable.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str = "FINSECURE",
        subjects: Sequence[str] = ("events.>",),
        storage: str = "file",
        duplicate_window_s: float = 120.0,
        max_bytes: int | None = None,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 1000,
        fetch_batch: int = 16,
        fetch_timeout_s: float = 1.0,
        request_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        reconnect_wait_s: float = 0.25,
        retry_s: float = 30.0,
        name: str = "finsecure",
    ) -> None:
        if storage not in ("file", "memory"):
            raise ValueError("storage must be 'file' or 'memory'")
        self.url = url
        self.stream = stream
        self.subjects = tuple(subjects)
        self.storage = StorageType.FILE if storage == "file" else StorageType.MEMORY
        self.duplicate_window_s = duplicate_window_s
        self.max_bytes = max_bytes
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.fetch_batch = fetch_batch
        self.fetch_timeout_s = fetch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_wait_s = reconnect_wait_s
        self.retry_s = retry_s
        self.name = name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._closed = False

    @property
    def max_payload(self) -> int | None:
        """The server's message size limit once connected (NATS' default is 1 MiB)."""
        return self._nc.max_payload if self._nc is not None and self._nc.is_connected else 1024 * 1024

    async def connect(self) -> JetStreamContext:
        """Connect (once) and make sure the stream exists; returns the JetStream context."""
        if self._closed:
            raise BusClosed("the bus is closed")
        if self._js is not None:
            return self._js
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if (ready := self._context()) is not None:  # another task connected while this one waited
                return ready
            # A bounded number of first attempts (nats-py would otherwise retry forever when the server
            # is absent), then unlimited reconnects for the life of the connection.
            attempts = max(1, int(self.connect_timeout_s / self.reconnect_wait_s))
            try:
                nc = await nats.connect(
                    servers=[server.strip() for server in self.url.split(",")],
                    name=self.name,
                    connect_timeout=max(1, round(self.connect_timeout_s)),
                    reconnect_time_wait=self.reconnect_wait_s,
                    max_reconnect_attempts=attempts,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
            except (nats.errors.Error, OSError) as exc:
                raise BusError(f"cannot reach NATS at {self.url}: {exc or type(exc).__name__}") from None
            nc.options["max_reconnect_attempts"] = -1
            js = nc.jetstream(timeout=self.request_timeout_s)
            try:
                await self._ensure_stream(js)
            except BaseException:
                await nc.close()
                raise
            self._nc, self._js = nc, js
            return js

    def _context(self) -> JetStreamContext | None:
        return self._js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=list(self.subjects),
                    storage=self.storage,
                    duplicate_window=self.duplicate_window_s,
                    max_bytes=self.max_bytes,
                    discard=DiscardPolicy.NEW,
                )
            )
            return
        except nats.js.errors.APIError as exc:
            raise BusError(
                f"NATS at {self.url} refused JetStream requests (is it started with -js?): {exc}"
            ) from None
        current = list(info.config.subjects or [])
        missing = [subject for subject in self.subjects if subject not in current]
        if missing:
            info.config.subjects = current + missing
            await js.update_stream(info.config)

    async def _on_error(self, exc: Exception) -> None:
        # Connection errors repeat every reconnect attempt while a server is away: keep them quiet.
        level = logging.DEBUG if isinstance(exc, (OSError, nats.errors.Error)) else logging.WARNING
        logger.log(level, "NATS %s: %s", self.url, exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            logger.warning("NATS %s: disconnected; reconnecting", self.url)

    async def _on_reconnected(self) -> None:
        logger.info("NATS %s: reconnected", self.url)

    async def _retry_pause(self, deadline: float, what: str, exc: BaseException) -> None:
        if self._closed:
            raise BusClosed("the bus is closed") from None
        if time.monotonic() >= deadline:
            raise BusError(f"{what} failed: NATS at {self.url} did not answer for {self.retry_s} s ({exc!r})")
        await asyncio.sleep(self.reconnect_wait_s)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        msg_id: str | None = None,
    ) -> PublishAck:
        """Publish and wait for JetStream's acknowledgement (retrying through reconnects).

        Retries are safe when the message has a dedup id: the server stores it once.
        """
        js = await self.connect()
        sent_headers = dict(headers or {})
        if msg_id:
            sent_headers[MSG_ID_HEADER] = msg_id
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                ack = await js.publish(
                    subject,
                    payload,
                    timeout=self.request_timeout_s,
                    stream=self.stream,
                    headers=sent_headers or None,
                )
            except nats.errors.MaxPayloadError:
                raise BusError(
                    f"message of {len(payload)} bytes is over the NATS limit of {self.max_payload}"
                ) from None
            except _TRANSIENT as exc:
                await self._retry_pause(deadline, f"publishing to {subject}", exc)
                continue
            except nats.errors.ConnectionClosedError:
                raise BusClosed("the NATS connection is closed") from None
            except nats.js.errors.APIError as exc:
                raise BusError(f"NATS refused a message on {subject}: {exc}") from None
            return PublishAck(seq=ack.seq, duplicate=bool(ack.duplicate), stream=ack.stream)

    # -- notifications (core NATS: not stored, at most once) -----------------------------------------

    async def notify(self, subject: str, payload: bytes) -> None:
        """Publish on core NATS, outside the stream: nothing is stored and no acknowledgement is awaited.

        For live notices whose truth lives elsewhere (e.g. the database). The client only buffers the
        message (also while it reconnects, up to its pending limit); subscribers that are away miss it.

        Raises
        ------
        BusError
            When the client cannot take it (buffer full while the server is away, too large, closed).
        """
        await self.connect()
        nc = self._nc
        if nc is None:
            raise BusClosed("the bus is closed")
        try:
            await nc.publish(subject, payload)
        except nats.errors.Error as exc:
            raise BusError(f"notice on {subject} not sent: {exc or type(exc).__name__}") from None

    async def listen(self, subject_filter: str, *, queue: str = "") -> AsyncGenerator[Message, None]:
        """Subscribe to core NATS messages on ``subject_filter`` (wildcards allowed); returns once the
        server has the subscription, with the messages from then on (until closed or ``aclose()``).

        With ``queue``, each message goes to one member of that queue group instead of to every
        listener. The client subscribes again on its own after a reconnect; what was sent meanwhile is
        missed. Acknowledging a yielded message does nothing.
        """
        await self.connect()
        nc = self._nc
        if nc is None:
            raise BusClosed("the bus is closed")
        subscription = await nc.subscribe(subject_filter, queue=queue)
        try:
            await nc.flush(timeout=max(1, round(self.request_timeout_s)))
        except BaseException:
            with contextlib.suppress(nats.errors.Error, ValueError, OSError):
                await subscription.unsubscribe()
            raise
        return self._notices(subscription)

    @staticmethod
    async def _notices(subscription: Subscription) -> AsyncGenerator[Message, None]:
        try:
            async for raw in subscription.messages:
                yield Message(
                    subject=raw.subject,
                    data=raw.data,
                    seq=0,
                    headers=dict(raw.headers or {}),
                    ack=_nothing,
                    nak=_nothing,
                )
        finally:
            with contextlib.suppress(nats.errors.Error, ValueError, OSError):
                await subscription.unsubscribe()

    # -- consuming -----------------------------------------------------------------------------

    async def subscribe(
        self, subject_filter: str, durable: str, *, ack_wait_s: float | None = None
    ) -> AsyncGenerator[Message, None]:
        """Pull from a durable consumer (created on first use); see :meth:`Bus.subscribe`."""
        js = await self.connect()
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s if ack_wait_s is None else ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=subject_filter,
        )
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                subscription = await js.pull_subscribe(
                    subject_filter, durable=durable, stream=self.stream, config=config
                )
                break
            except _TRANSIENT as exc:
                await self._retry_pause(deadline, f"subscribing to {subject_filter}", exc)
        unacked: dict[int, Msg] = {}
        try:
            while not self._closed:
                try:
                    fetched = await subscription.fetch(self.fetch_batch, timeout=self.fetch_timeout_s)
                except nats.errors.TimeoutError:
                    continue  # nothing new (or the server is away): ask again
                except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                    return
                except _TRANSIENT as exc:
                    logger.debug("NATS fetch on %s: %r; retrying", subject_filter, exc)
                    await asyncio.sleep(self.reconnect_wait_s)
                    continue
                for raw in fetched:
                    meta = raw.metadata
                    unacked[meta.sequence.stream] = raw
                for raw in fetched:
                    meta = raw.metadata
                    yield Message(
                        subject=raw.subject,
                        data=raw.data,
                        seq=meta.sequence.stream,
                        headers=dict(raw.headers or {}),
                        num_delivered=meta.num_delivered,
                        ack=partial(self._ack, raw, meta.sequence.stream, unacked),
                        nak=partial(self._nak, raw, meta.sequence.stream, unacked),
                    )
        finally:
            # Give back what this iterator fetched but nobody acknowledged, for immediate redelivery.
            for raw in list(unacked.values()):
                try:
                    await raw.nak()
                except nats.errors.MsgAlreadyAckdError:
                    continue
                except (nats.errors.Error, OSError):
                    break  # the connection is gone: the server redelivers after ack_wait anyway
            with contextlib.suppress(nats.errors.Error, ValueError, OSError):
                await subscription.unsubscribe()

    async def _ack(self, raw: Msg, seq: int, unacked: dict[int, Msg]) -> None:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                await raw.ack_sync(timeout=self.request_timeout_s)
            except nats.errors.MsgAlreadyAckdError:
                pass
            except _TRANSIENT as exc:
                await self._retry_pause(deadline, f"acknowledging message {seq}", exc)
                continue
            except nats.errors.ConnectionClosedError:
                raise BusClosed("the NATS connection is closed") from None
            unacked.pop(seq, None)
            return

    async def _nak(self, raw: Msg, seq: int, unacked: dict[int, Msg]) -> None:
        with contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await raw.nak()
        unacked.pop(seq, None)

    async def close(self) -> None:
        """Drain nothing, just close the connection (unacknowledged messages are redelivered later)."""
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()
