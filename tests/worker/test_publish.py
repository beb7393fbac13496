"""With FINSECURE_BUS_URL set, HTTP ingest publishes to the bus (for the workers) instead of the local
pipeline, and answers only once the bus has stored the events."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from finsecure.api import build_context, create_app
from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.schemas import ApiKeyCreate, Scope
from finsecure.bus import make_bus
from finsecure.bus.codec import decode_batch
from finsecure.bus.memory import InProcessBus
from finsecure.pipeline.testing import TestingSink
from finsecure.platform import Platform
from finsecure.worker.publish import PUBLISHED_NS_HEADER
from tests.conftest import make_settings
from tests.test_ingest_api import ndjson, payment


@pytest.fixture
def bus_url() -> str:
    return f"memory://{secrets.token_hex(4)}"


@pytest.fixture
def bus_client(db_engine: Engine, tmp_path: Path, bus_url: str) -> Iterator[tuple[TestClient, TestingSink]]:
    settings = make_settings(
        database_url=db_engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        demo_stream=False,
        bus_url=bus_url,
        bus_partitions=2,
    )
    sink = TestingSink()
    context = build_context(settings, engine=db_engine)
    platform = Platform(settings, context.session_factory, steps=[], extra_sinks=[sink])
    app = create_app(context=build_context(settings, engine=db_engine, platform=platform))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, sink


def test_ingest__publishes_to_the_bus_when_configured(
    bus_client: tuple[TestClient, TestingSink], db_engine: Engine, bus_url: str
) -> None:
    client, local_sink = bus_client
    with Session(db_engine, expire_on_commit=False) as session:
        _, raw = auth_service.create_api_key(
            db_session=session,
            key_in=ApiKeyCreate(name="gateway", scopes=[Scope.ingest]),
            owner_id=None,
            actor=Actor(label="test"),
        )
    response = client.post(
        "/api/ingest/payment",
        content=ndjson([payment(i) for i in range(20)]),
        headers={"X-API-Key": raw, "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 20
    bus = make_bus(bus_url)
    assert isinstance(bus, InProcessBus)

    async def read_all() -> list[tuple[str, int, str]]:
        got: list[tuple[str, int, str]] = []
        messages = bus.subscribe("events.>", "test-reader")
        async for message in messages:
            got.append(
                (
                    message.subject,
                    decode_batch(message.data).frame.height,
                    message.headers[PUBLISHED_NS_HEADER],
                )
            )
            await message.ack()
            if sum(rows for _, rows, _ in got) >= 20:
                break
        await messages.aclose()
        return got

    got = asyncio.run(asyncio.wait_for(read_all(), 10))
    assert sum(rows for _, rows, _ in got) == 20
    assert {subject for subject, _, _ in got} <= {"events.payment.0", "events.payment.1"}
    client.app.state.context.platform.pipeline.flush(timeout=10)  # type: ignore[attr-defined]
    assert local_sink.batches == []  # nothing went through the API process's own pipeline
