"""Shared state in the REAL Redis on 127.0.0.1:6379 (``FINSECURE_TEST_REDIS_URL``): login limits shared by
two API processes, and live updates published in one process reaching the other's subscribers.

Without Redis the tests skip on a developer's machine and FAIL in CI (``CI=true``) or with
``FINSECURE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from finsecure.api import create_app
from finsecure.auth.models import Role, User
from finsecure.core.deps import AppContext, get_db
from finsecure.core.ratelimit import InMemoryRateLimiter
from finsecure.core.shared import (
    RedisBroadcaster,
    RedisRateLimiter,
    connect_redis,
    make_broadcaster,
    make_rate_limiter,
)
from finsecure.web.hub import InMemoryBroadcaster
from tests.conftest import TEST_PASSWORD, make_settings, services_required

REDIS_URL = os.environ.get("FINSECURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = connect_redis(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        message = f"Redis at {REDIS_URL} does not answer: {exc}"
        if services_required():
            pytest.fail(message + " (required: CI=true or FINSECURE_REQUIRE_SERVICES=1; run `make services`)")
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test only; its keys are deleted afterwards."""
    value = f"finsecure-test:{secrets.token_hex(6)}:"
    yield value
    keys = list(redis_client.scan_iter(match=value + "*"))
    if keys:
        redis_client.delete(*keys)


def test_make_rate_limiter__in_process_by_default_redis_when_configured(redis_client: redis.Redis) -> None:
    assert isinstance(make_rate_limiter(make_settings()), InMemoryRateLimiter)
    assert isinstance(make_rate_limiter(make_settings(redis_url=REDIS_URL)), RedisRateLimiter)
    assert isinstance(make_broadcaster(make_settings()), InMemoryBroadcaster)


def test_redis_rate_limiter__counts_in_a_sliding_window(redis_client: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, prefix=prefix)
    assert [limiter.hit("alice", 60) for _ in range(3)] == [1, 2, 3]
    assert limiter.count("alice", 60) == 3
    assert limiter.count("bob", 60) == 0
    assert 59 < limiter.retry_after("alice", 60) <= 60
    assert limiter.retry_after("bob", 60) == 0
    assert 0 < redis_client.pttl(prefix + "alice") <= 60_000  # keys expire with their window
    limiter.reset("alice")
    assert limiter.count("alice", 60) == 0


def test_redis_rate_limiter__old_hits_leave_the_window(redis_client: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, prefix=prefix)
    limiter.hit("carol", 0.2)
    limiter.hit("carol", 0.2)
    assert limiter.count("carol", 0.2) == 2
    asyncio.run(asyncio.sleep(0.25))
    assert limiter.count("carol", 0.2) == 0
    assert limiter.hit("carol", 0.2) == 1


def test_redis_rate_limiter__atomic_under_concurrent_hits(redis_client: redis.Redis, prefix: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    limiter = RedisRateLimiter(connect_redis(REDIS_URL), prefix=prefix)
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: limiter.hit("dave", 60), range(200)))
    assert sorted(counts) == list(range(1, 201))  # every hit saw a distinct count: no lost update


def _second_app(context: AppContext, db_session: Session, limiter: RedisRateLimiter) -> FastAPI:
    app = create_app(context=dataclasses.replace(context, login_limiter=limiter))
    app.dependency_overrides[get_db] = lambda: db_session
    return app


def test_two_api_processes__share_one_login_limit(
    context: AppContext,
    db_session: Session,
    make_user: Callable[..., User],
    redis_client: redis.Redis,
    prefix: str,
) -> None:
    user = make_user(Role.viewer)
    # Two apps, each with its own Redis connection: what two processes behind a load balancer have.
    apps = [
        _second_app(context, db_session, RedisRateLimiter(connect_redis(REDIS_URL), prefix=prefix))
        for _ in "ab"
    ]
    limit = context.settings.login_max_failures_per_user
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        for attempt in range(limit):
            client = first if attempt % 2 == 0 else second
            wrong = client.post("/api/auth/token", data={"username": user.username, "password": "nope-nope"})
            assert wrong.status_code == 401
        for client in (first, second):
            throttled = client.post(
                "/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD}
            )
            assert throttled.status_code == 429, throttled.text
            assert int(throttled.headers["Retry-After"]) >= 1


def test_redis_broadcaster__reaches_the_other_process(redis_client: redis.Redis, prefix: str) -> None:
    one = RedisBroadcaster(connect_redis(REDIS_URL), prefix=prefix)
    two = RedisBroadcaster(connect_redis(REDIS_URL), prefix=prefix)

    async def scenario() -> tuple[dict[str, object], dict[str, object], int]:
        here = one.subscribe({"alerts"})
        there = two.subscribe({"alerts"})
        other = two.subscribe({"kpi"})
        await asyncio.sleep(0.3)  # both listeners are subscribed before anything is published
        one.publish("alerts", {"title": "Card used 2,300 km from home"})
        got_here = await asyncio.wait_for(here.get(), 5)
        got_there = await asyncio.wait_for(there.get(), 5)
        return got_here, got_there, other.pending()

    try:
        got_here, got_there, other_pending = asyncio.run(scenario())
    finally:
        one.close()
        two.close()
    expected = {"channel": "alerts", "data": {"title": "Card used 2,300 km from home"}}
    assert got_here == expected
    assert got_there == expected
    assert other_pending == 0
