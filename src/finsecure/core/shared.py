"""State that several API processes behind a load balancer must share, kept in Redis.

With ``FINSECURE_REDIS_URL`` set, login throttling counts failures across every process (an attacker
cannot multiply the limit by the number of processes) and live updates published in one process reach
the WebSocket clients of all of them. Without it the in-process implementations are used, behind the
same interfaces (:class:`~finsecure.core.ratelimit.RateLimiter`, :class:`~finsecure.web.hub.Broadcaster`).

Refresh tokens need nothing here: their rotation and revocation state lives in the database
(``refresh_tokens``), which every process already shares.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Final, cast

import redis

from finsecure.core.ratelimit import InMemoryRateLimiter, RateLimiter
from finsecure.core.settings import Settings
from finsecure.web.hub import Broadcaster, InMemoryBroadcaster

__all__ = ["RedisBroadcaster", "RedisRateLimiter", "connect_redis", "make_broadcaster", "make_rate_limiter"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "finsecure:"

# The server's clock, not the callers': processes on different machines agree on the window.
_NOW_US = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
"""

# KEYS[1] = the key; ARGV[1] = window in microseconds; ARGV[2] = a unique member. Returns the count.
_HIT = (
    _NOW_US
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return redis.call('ZCARD', KEYS[1])
"""
)

# Returns {count, microseconds until the oldest event leaves the window}.
_PEEK = (
    _NOW_US
    + """
local since = '(' .. (now - window)
local count = redis.call('ZCOUNT', KEYS[1], since, '+inf')
if count == 0 then return {0, 0} end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {count, tonumber(oldest[2]) + window - now}
"""
)


def connect_redis(url: str) -> redis.Redis:
    """A client for ``url`` with short timeouts (a login must not hang on a dead Redis)."""
    return redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30)


class RedisRateLimiter(RateLimiter):
    """A sliding-window counter in a Redis sorted set per key, updated atomically by a Lua script.

    Every process pointing at the same Redis (and ``prefix``) shares the counts.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX + "rl:") -> None:
        self.client = client
        self.prefix = prefix
        self._hit = client.register_script(_HIT)
        self._peek = client.register_script(_PEEK)

    def _peek_key(self, key: str, window_s: float) -> tuple[int, float]:
        count, wait_us = cast(list[int], self._peek(keys=[self.prefix + key], args=[int(window_s * 1e6)]))
        return int(count), max(0.0, int(wait_us) / 1e6)

    def hit(self, key: str, window_s: float) -> int:
        member = uuid.uuid4().hex
        return int(cast(int, self._hit(keys=[self.prefix + key], args=[int(window_s * 1e6), member])))

    def count(self, key: str, window_s: float) -> int:
        return self._peek_key(key, window_s)[0]

    def retry_after(self, key: str, window_s: float) -> float:
        return self._peek_key(key, window_s)[1]

    def reset(self, key: str) -> None:
        self.client.delete(self.prefix + key)


class RedisBroadcaster(InMemoryBroadcaster):
    """Fan-out across processes over Redis pub/sub; each process delivers to its own subscribers.

    :meth:`publish` never waits for the network: it queues the message (bounded; overflow is counted in
    :attr:`lost`) for a publisher thread. A listener thread receives every process's messages and hands
    them to this process's subscribers. Delivery is at most once, as suits live updates: a page that
    reconnects reloads its data from the API anyway.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX + "ws:", max_pending: int = 10_000
    ) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix
        self.lost = 0
        self.received = 0
        self._outbox: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe(prefix + "*")
        self._listener = threading.Thread(target=self._listen, name="finsecure-redis-listen", daemon=True)
        self._publisher = threading.Thread(target=self._publish_loop, name="finsecure-redis-pub", daemon=True)
        self._listener.start()
        self._publisher.start()

    def publish(self, channel: str, data: Mapping[str, Any]) -> int:
        """Queue ``data`` for every process's subscribers of ``channel``; returns 1, or 0 if it was lost."""
        try:
            self._outbox.put_nowait((channel, json.dumps(dict(data), default=str)))
        except queue.Full:
            self.lost += 1
            return 0
        return 1

    def _publish_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            channel, payload = item
            try:
                self.client.publish(self.prefix + channel, payload)
            except redis.RedisError as exc:
                self.lost += 1
                logger.warning("live update on %s not sent to Redis: %s", channel, exc)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.RedisError, ValueError, OSError) as exc:
                if self._stop.is_set():
                    return
                logger.warning("Redis live-update listener: %s; retrying", exc)
                self._stop.wait(0.5)
                continue
            if message is None or message.get("type") != "pmessage":
                continue
            raw_channel = message["channel"]
            channel = (raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel))[
                len(self.prefix) :
            ]
            try:
                data = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            self.received += 1
            super().publish(channel, data)

    def close(self) -> None:
        """Stop both threads (queued messages are sent first) and close the subscription."""
        if self._stop.is_set():
            return
        self._outbox.put(None)
        self._publisher.join(5)
        self._stop.set()
        self._listener.join(5)
        self._pubsub.close()


def make_rate_limiter(settings: Settings, client: redis.Redis | None = None) -> RateLimiter:
    """The login limiter: shared in Redis when ``redis_url`` is set, else in this process."""
    if not settings.redis_url and client is None:
        return InMemoryRateLimiter()
    return RedisRateLimiter(client or connect_redis(settings.redis_url))


def make_broadcaster(settings: Settings, client: redis.Redis | None = None) -> Broadcaster:
    """The live-update hub: across processes over Redis when ``redis_url`` is set, else in-process."""
    if not settings.redis_url and client is None:
        return InMemoryBroadcaster()
    return RedisBroadcaster(client or connect_redis(settings.redis_url))
