"""``GET /metrics`` and request ids, through the real application."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from finsecure.api import create_app
from finsecure.core.logging import JsonFormatter, correlation_id
from finsecure.core.settings import Settings
from tests.conftest import make_settings


def test_metrics__prometheus_text_outside_the_api(settings: Settings) -> None:
    # Its own app and connections: the rolled-back test transaction would lock SQLite for the alert count.
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            response = client.get("/metrics")
            paths = client.get("/api/openapi.json").json()["paths"]
    finally:
        app.state.context.engine.dispose()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE finsecure_alerts gauge" in response.text
    assert "finsecure_database_up 1.0" in response.text
    assert "/metrics" not in paths


@pytest.fixture
def guarded_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_token": make_settings(metrics_token="s3cret").metrics_token})


def test_metrics__token_is_required_when_set(guarded_settings: Settings) -> None:
    app = create_app(guarded_settings)
    try:
        with TestClient(app) as client:
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            assert "finsecure_alerts" in ok.text
    finally:
        app.state.context.engine.dispose()


def test_request_id__echoed_when_sane_generated_otherwise(client: TestClient) -> None:
    given = client.get("/api/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    hostile = client.get("/api/health", headers={"X-Request-ID": "a b\tc" * 30})
    generated = hostile.headers["x-request-id"]
    assert len(generated) == 32
    assert generated.isalnum()


def test_json_formatter__carries_the_correlation_id() -> None:
    record = logging.LogRecord("finsecure.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    token = correlation_id.set("req-42")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        correlation_id.reset(token)
    assert line["message"] == "hello world"
    assert line["correlation_id"] == "req-42"
    assert "correlation_id" not in json.loads(JsonFormatter().format(record))
