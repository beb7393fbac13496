"""Live fan-out to dashboard connections: the :class:`Broadcaster` interface and its in-process version.

The pipeline publishes from its own threads and must never wait for a browser. Each subscriber therefore
owns a small bounded queue: :meth:`Broadcaster.publish` appends to it and returns at once, and a
subscriber whose queue is full is marked *dropped* (its connection is then closed with "too slow", and
the page reconnects and reloads) instead of slowing the publisher down or growing without limit.

Example
-------
>>> import asyncio
>>> hub = InMemoryBroadcaster()
>>> async def demo() -> dict[str, object]:
...     sub = hub.subscribe({"kpi"}, queue_size=4)
...     hub.publish("kpi", {"events_per_s": 12})
...     return await sub.get()
>>> asyncio.run(demo())
{'channel': 'kpi', 'data': {'events_per_s': 12}}
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_QUEUE_SIZE", "Broadcaster", "InMemoryBroadcaster", "SlowSubscriber", "Subscriber"]

#: Messages a connection may fall behind by before it is dropped.
DEFAULT_QUEUE_SIZE = 256

Message = dict[str, Any]


class SlowSubscriber(Exception):
    """The subscriber fell more than its queue size behind and was dropped."""


class Subscriber:
    """One connection's bounded inbox, filled from any thread and read on its event loop.

    Parameters
    ----------
    channels
        The channels it receives (changeable with :meth:`set_channels`).
    queue_size
        How many undelivered messages it may hold; one more drops it.
    loop
        The event loop that reads it (default: the running loop).
    """

    def __init__(
        self,
        channels: Iterable[str],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.channels: frozenset[str] = frozenset(channels)
        self.queue_size = queue_size
        self.dropped = False
        self.delivered = 0
        self._loop = loop or asyncio.get_running_loop()
        self._items: deque[Message] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._gone = asyncio.Event()

    def set_channels(self, channels: Iterable[str]) -> None:
        self.channels = frozenset(channels)

    def offer(self, message: Message) -> bool:
        """Queue ``message`` without ever waiting; ``False`` (and dropped) when the queue is full."""
        with self._lock:
            if self.dropped:
                return False
            if len(self._items) >= self.queue_size:
                self.dropped = True
                self._items.clear()
                wake = True
            else:
                wake = not self._items
                self._items.append(message)
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: the connection is gone
                self.dropped = True
        return not self.dropped

    def _wake(self) -> None:
        self._ready.set()
        if self.dropped:
            self._gone.set()

    async def wait_dropped(self) -> None:
        """Return once the subscriber has been dropped (to cut a send that is stuck)."""
        await self._gone.wait()

    def pending(self) -> int:
        with self._lock:
            return len(self._items)

    async def get(self) -> Message:
        """The next message, waiting for one.

        Raises
        ------
        SlowSubscriber
            Once the subscriber has been dropped.
        """
        while True:
            with self._lock:
                if self.dropped:
                    raise SlowSubscriber(f"fell more than {self.queue_size} messages behind")
                if self._items:
                    self.delivered += 1
                    return self._items.popleft()
                self._ready.clear()
            await self._ready.wait()


class Broadcaster(ABC):
    """Publish/subscribe between the data plane and live connections.

    ``publish`` may be called from any thread and must return without waiting for subscribers. An
    implementation over Redis pub/sub (several API processes) subscribes to the same channel names.
    """

    @abstractmethod
    def publish(self, channel: str, data: Mapping[str, Any]) -> int:
        """Send ``data`` to every subscriber of ``channel``; returns how many got it."""

    @abstractmethod
    def subscribe(self, channels: Iterable[str], *, queue_size: int = DEFAULT_QUEUE_SIZE) -> Subscriber:
        """A new subscriber on the running event loop."""

    @abstractmethod
    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber`` (unknown subscribers are ignored)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections to an external server, if any."""


class InMemoryBroadcaster(Broadcaster):
    """Fan-out inside one process."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self.published = 0
        self.dropped = 0

    def publish(self, channel: str, data: Mapping[str, Any]) -> int:
        message: Message = {"channel": channel, "data": dict(data)}
        with self._lock:
            targets = [s for s in self._subscribers if channel in s.channels]
        delivered = 0
        for subscriber in targets:
            if subscriber.offer(message):
                delivered += 1
            else:
                self.unsubscribe(subscriber)
        self.published += 1
        return delivered

    def subscribe(self, channels: Iterable[str], *, queue_size: int = DEFAULT_QUEUE_SIZE) -> Subscriber:
        subscriber = Subscriber(channels, queue_size=queue_size)
        with self._lock:
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.discard(subscriber)
                if subscriber.dropped:
                    self.dropped += 1

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)
