"""POST /api/ingest/{domain} with a running pipeline: accepted rows reach the sinks, bad rows become dead
letters with reasons, and hostile bodies get clear 4xx answers."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from finsecure.api import build_context, create_app
from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.schemas import ApiKeyCreate, Scope
from finsecure.ingest.models import DeadLetter
from finsecure.pipeline.testing import TestingSink
from finsecure.platform import Platform
from tests.conftest import make_settings


def payment(i: int, **overrides: Any) -> dict[str, Any]:
    event = {
        "event_id": f"pay-{i}",
        "ts": "2026-11-24T10:00:00+00:00",
        "source": "bank-gateway",
        "card_id": f"card_{i % 7}",
        "merchant_id": "m1",
        "amount": 12.5 + i,
        "currency": "EUR",
        "lat": 48.85,
        "lon": 2.35,
    }
    event.update(overrides)
    return event


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


@pytest.fixture
def sink() -> TestingSink:
    return TestingSink()


@pytest.fixture
def platform_client(db_engine: Engine, tmp_path: Path, sink: TestingSink) -> Iterator[TestClient]:
    """An app with a running pipeline. Requests use real, committing sessions (not the rolled-back test
    transaction): the pipeline writes dead letters on its own connection, which SQLite would otherwise
    block behind the test's open write transaction."""
    settings = make_settings(
        database_url=db_engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        demo_stream=False,
        ingest_max_decompressed_bytes=64 * 1024,
        max_request_bytes=32 * 1024,
    )
    context = build_context(settings, engine=db_engine)
    platform = Platform(settings, context.session_factory, steps=[], extra_sinks=[sink])
    context = build_context(settings, engine=db_engine, platform=platform)
    app = create_app(context=context)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def ingest_key(db_engine: Engine) -> Callable[..., dict[str, str]]:
    def factory(scopes: tuple[Scope, ...] = (Scope.ingest,)) -> dict[str, str]:
        with Session(db_engine, expire_on_commit=False) as session:
            _, raw = auth_service.create_api_key(
                db_session=session,
                key_in=ApiKeyCreate(name="gateway", scopes=list(scopes)),
                owner_id=None,
                actor=Actor(label="test"),
            )
        return {"X-API-Key": raw, "Content-Type": "application/x-ndjson"}

    return factory


def _flush(client: TestClient) -> None:
    platform = client.app.state.context.platform  # type: ignore[attr-defined]
    platform.pipeline.flush(timeout=10)


def test_ingest__good_and_bad_records_in_one_body(
    platform_client: TestClient,
    ingest_key: Callable[..., dict[str, str]],
    sink: TestingSink,
    db_engine: Engine,
) -> None:
    events = [payment(0), payment(1, lat=91.0), payment(2), payment(3, amount="lots")]
    body = ndjson(events) + b"{not json\n"
    response = platform_client.post("/api/ingest/payment", content=body, headers=ingest_key())
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["accepted"] == 2
    assert result["rejected"] == 3
    assert [r["offset"] for r in result["rejects"]] == [1, 3, 4]
    assert "lat" in result["rejects"][0]["reason"]
    assert "JSON" in result["rejects"][2]["reason"]
    _flush(platform_client)
    kept = [eid for b in sink.batches for eid in b.frame["event_id"].to_list()]
    assert sorted(kept) == ["pay-0", "pay-2"]
    assert all(b.domain == "payment" for b in sink.batches)
    source = next(b.source for b in sink.batches)
    with Session(db_engine) as session:
        count = session.scalar(
            select(func.count()).select_from(DeadLetter).where(DeadLetter.source == source)
        )
    assert count == 3


def test_ingest__json_array_and_gzip(
    platform_client: TestClient, ingest_key: Callable[..., dict[str, str]], sink: TestingSink
) -> None:
    headers = {**ingest_key(), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    body = gzip.compress(json.dumps([payment(10), payment(11)]).encode())
    response = platform_client.post("/api/ingest/payment", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    _flush(platform_client)
    assert sum(len(b) for b in sink.batches) == 2


def test_ingest__record_of_another_domain_is_rejected(
    platform_client: TestClient, ingest_key: Callable[..., dict[str, str]]
) -> None:
    body = ndjson([payment(20), payment(21, domain="auth")])
    response = platform_client.post("/api/ingest/payment", content=body, headers=ingest_key())
    assert response.status_code == 200
    assert response.json()["rejected"] == 1
    assert "payment" in response.json()["rejects"][0]["reason"]


def test_ingest__all_rejected_is_422_with_details(
    platform_client: TestClient, ingest_key: Callable[..., dict[str, str]]
) -> None:
    response = platform_client.post(
        "/api/ingest/payment", content=ndjson([payment(1, ts="yesterday")]), headers=ingest_key()
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "all_records_rejected"
    assert error["details"][0]["offset"] == 0


def test_ingest__zip_bomb_is_refused(
    platform_client: TestClient, ingest_key: Callable[..., dict[str, str]]
) -> None:
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))  # 10 MiB of spaces: ~10 KB compressed
    assert len(bomb) < 32 * 1024
    response = platform_client.post("/api/ingest/payment", content=bomb, headers=ingest_key())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "inflated_too_large"


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Content-Type": "text/csv"}, b"a,b\n", 415, "unsupported_media_type"),
        ({"Content-Encoding": "br"}, b"{}", 415, "unsupported_media_type"),
        ({"Content-Encoding": "gzip"}, b"\x1f\x8bnot really gzip", 400, "bad_gzip"),
        ({}, b"   \n", 400, "empty_body"),
        ({}, b"x" * 40_000, 413, "payload_too_large"),
    ],
    ids=["csv", "brotli", "broken-gzip", "empty", "too-large"],
)
def test_ingest__bad_bodies_get_clear_errors(
    platform_client: TestClient,
    ingest_key: Callable[..., dict[str, str]],
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    response = platform_client.post("/api/ingest/payment", content=body, headers={**ingest_key(), **headers})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_ingest__needs_the_ingest_scope(
    platform_client: TestClient, ingest_key: Callable[..., dict[str, str]]
) -> None:
    response = platform_client.post(
        "/api/ingest/payment", content=ndjson([payment(1)]), headers=ingest_key((Scope.read,))
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "scope_required"


def test_ingest__unknown_domain_is_422(
    platform_client: TestClient, ingest_key: Callable[..., dict[str, str]]
) -> None:
    response = platform_client.post("/api/ingest/dns", content=ndjson([payment(1)]), headers=ingest_key())
    assert response.status_code == 422
