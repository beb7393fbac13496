"""GET /api/events/search: events from the lake for any signed-in person, bad filters refused plainly."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from finsecure.auth.models import Role
from finsecure.core.settings import Settings
from finsecure.lake.writer import LakeWriter
from tests.conftest import make_settings
from tests.lake import T0, canonical_frame

Headers = Callable[[Role], dict[str, str]]
URL = "/api/events/search"


@pytest.fixture
def settings(db_engine: Engine, tmp_path: Path) -> Settings:
    """The shared test settings, with the lake in this test's own directory."""
    return make_settings(database_url=db_engine.url.render_as_string(hide_password=False), data_dir=tmp_path)


@pytest.fixture
def lake(settings: Settings) -> Path:
    """12 payments an hour apart from May 1 22:00 UTC, the last 6 scored, and 3 logins."""
    root = settings.data_dir / "lake"
    payments = canonical_frame(
        "payment", 12, step=dt.timedelta(hours=1), amount=[float(i) for i in range(12)]
    )
    with LakeWriter(root) as writer:
        writer.write("payment", payments.head(6))
        writer.write(
            "payment", payments.tail(6).with_columns(score=pl.Series([0.1, 0.2, 0.5, 0.6, 0.9, None]))
        )
        writer.write("auth", canonical_frame("auth", 3, prefix="login", action="login"))
    return root


def get(client: TestClient, headers: dict[str, str], **params: Any) -> httpx.Response:
    return client.get(URL, params=params, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


def test_search__viewer_gets_a_page_newest_first(
    client: TestClient, auth_headers: Headers, lake: Path
) -> None:
    response = get(client, auth_headers(Role.viewer), domain="payment", size=5)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "total", "page", "size", "has_more"}
    assert (body["total"], body["page"], body["size"], body["has_more"]) == (12, 1, 5, True)
    assert [e["event_id"] for e in body["items"]] == ["e11", "e10", "e9", "e8", "e7"]
    newest = body["items"][0]
    assert newest["ts"] == "2024-05-02T09:00:00Z"
    assert newest["domain"] == "payment"
    assert newest["amount"] == 11.0
    assert newest["score"] is None


def test_search__filters_pages_and_order(client: TestClient, auth_headers: Headers, lake: Path) -> None:
    headers = auth_headers(Role.analyst)
    scored = get(client, headers, domain="payment", min_score=0.5, order="asc").json()
    assert [e["event_id"] for e in scored["items"]] == ["e8", "e9", "e10"]

    window = get(
        client,
        headers,
        domain="payment",
        since=(T0 + dt.timedelta(hours=2)).isoformat(),
        until="2024-05-02T04:00:00+00:00",
        user_id="u0",
    ).json()
    assert [e["event_id"] for e in window["items"]] == ["e3"]  # e2..e5 are in range; u0 has e3
    assert window["total"] == 1

    page2 = get(client, headers, domain="payment", page=2, size=5, order="asc").json()
    assert [e["event_id"] for e in page2["items"]] == ["e5", "e6", "e7", "e8", "e9"]
    assert (page2["total"], page2["has_more"]) == (12, True)

    logins = get(client, headers, domain="auth", text="LOGIN1").json()
    assert [e["event_id"] for e in logins["items"]] == ["login1"]


def test_search__an_empty_lake_answers_no_events(client: TestClient, auth_headers: Headers) -> None:
    response = get(client, auth_headers(Role.viewer), domain="cloud")
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "total": 0, "page": 1, "size": 50, "has_more": False}


def test_search__needs_a_signed_in_person(client: TestClient, lake: Path) -> None:
    error = assert_error(client.get(URL, params={"domain": "payment"}), 401, "unauthorized")
    assert "Sign in" in error["message"]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 422, "validation_error"),
        ({"domain": "wire"}, 422, "validation_error"),
        ({"domain": "payment", "since": "yesterday"}, 422, "validation_error"),
        ({"domain": "payment", "size": 501}, 422, "validation_error"),
        ({"domain": "payment", "page": 0}, 422, "validation_error"),
        ({"domain": "payment", "order": "sideways"}, 422, "validation_error"),
        ({"domain": "payment", "user_id": "x" * 129}, 422, "validation_error"),
        ({"domain": "payment", "text": ""}, 422, "validation_error"),
        ({"domain": "payment", "min_score": "nan"}, 400, "invalid_filter"),
        ({"domain": "payment", "min_score": "inf"}, 400, "invalid_filter"),
        (
            {"domain": "payment", "since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"},
            400,
            "invalid_filter",
        ),
    ],
)
def test_search__bad_filters_are_refused(
    client: TestClient, auth_headers: Headers, lake: Path, params: dict[str, Any], status: int, code: str
) -> None:
    assert_error(get(client, auth_headers(Role.viewer), **params), status, code)


def test_search__an_unreadable_lake_is_unavailable_not_a_crash(
    client: TestClient, auth_headers: Headers, settings: Settings
) -> None:
    directory = settings.data_dir / "lake" / "domain=network" / "date=2024-05-01"
    directory.mkdir(parents=True)
    (directory / "part-0000000000000-000000-deadbeef.parquet").write_bytes(b"garbage")

    error = assert_error(get(client, auth_headers(Role.viewer), domain="network"), 503, "search_unavailable")
    assert "could not be read" in error["message"]
    assert "garbage" not in error["message"]
