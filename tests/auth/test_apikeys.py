"""API keys: creation (shown once, stored hashed), authentication, revocation, expiry and scopes."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Annotated, Any

import httpx2 as httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.audit.models import AuditEntry
from finsecure.auth.deps import IngestKey, RequireScope
from finsecure.auth.models import ApiKey, Role
from finsecure.auth.schemas import Scope
from finsecure.core.database import utcnow

AdminHeaders = dict[str, str]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture
def admin_headers(auth_headers: Callable[[Role], dict[str, str]]) -> AdminHeaders:
    return auth_headers(Role.admin)


@pytest.fixture
def create_key(client: TestClient, admin_headers: AdminHeaders) -> Callable[..., dict[str, Any]]:
    """Factory: create a key through the API and return the response body (with the raw key)."""

    def factory(scopes: tuple[str, ...] = ("ingest",), **extra: Any) -> dict[str, Any]:
        body = {"name": "collector", "scopes": list(scopes), **extra}
        response = client.post("/api/apikeys", json=body, headers=admin_headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    return factory


def describe(client: TestClient, key: str) -> httpx.Response:
    return client.get("/api/auth/key", headers={"X-API-Key": key})


# --- create ----------------------------------------------------------------------------------------


def test_create_api_key__key_shown_once_and_stored_hashed(
    client: TestClient, admin_headers: AdminHeaders, db_session: Session
) -> None:
    response = client.post(
        "/api/apikeys", json={"name": "edge-collector", "scopes": ["ingest", "read"]}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    raw: str = body["key"]
    assert raw.startswith("fsk_")
    _, prefix, secret = raw.split("_", 2)
    assert body["prefix"] == prefix
    assert len(prefix) == 12
    assert len(secret) >= 32
    assert body["name"] == "edge-collector"
    assert body["scopes"] == ["ingest", "read"]
    assert body["revoked_at"] is None
    assert body["last_used_at"] is None
    created_at = dt.datetime.fromisoformat(body["created_at"])
    expires_at = dt.datetime.fromisoformat(body["expires_at"])
    assert expires_at - created_at == dt.timedelta(days=90)  # the default lifetime

    row = db_session.get(ApiKey, body["id"])
    assert row is not None
    assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    for column in ApiKey.__table__.columns:
        value = str(getattr(row, column.key))
        assert raw not in value, column.key
        assert secret not in value, column.key

    # never shown again: neither by the list nor by the key itself
    listed = client.get("/api/apikeys", headers=admin_headers).json()
    assert listed["total"] == 1
    assert "key" not in listed["items"][0]
    assert "key_hash" not in listed["items"][0]
    assert "key" not in describe(client, raw).json()


def test_create_api_key__owner_is_the_admin(
    client: TestClient, admin_headers: AdminHeaders, create_key: Callable[..., dict[str, Any]]
) -> None:
    me = client.get("/api/auth/me", headers=admin_headers).json()
    assert create_key()["owner_id"] == me["id"]


def test_create_api_key__without_expiry(
    create_key: Callable[..., dict[str, Any]], client: TestClient
) -> None:
    created = create_key(expires_in_days=None)
    assert created["expires_at"] is None
    assert describe(client, created["key"]).status_code == 200


def test_create_api_key__duplicate_scopes_are_merged(create_key: Callable[..., dict[str, Any]]) -> None:
    assert create_key(scopes=("read", "read"))["scopes"] == ["read"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "k", "scopes": ["admin"]}, "scopes"),
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k"}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "k" * 65, "scopes": ["read"]}, "name"),
        ({"name": "k", "scopes": ["read"], "expires_in_days": 0}, "expires_in_days"),
        ({"name": "k", "scopes": ["read"], "expires_in_days": 3651}, "expires_in_days"),
        ({"name": "k", "scopes": ["read"], "owner_id": 1}, "owner_id"),
    ],
    ids=[
        "unknown-scope",
        "no-scope",
        "missing-scopes",
        "empty-name",
        "long-name",
        "zero-days",
        "too-long",
        "extra",
    ],
)
def test_create_api_key__validation(
    client: TestClient, admin_headers: AdminHeaders, db_session: Session, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/apikeys", json=body, headers=admin_headers)
    error = assert_error(response, 422, "validation_error")
    assert field in {d["location"][1] for d in error["details"]}
    assert db_session.scalars(select(ApiKey)).all() == []


def test_create_api_key__audit_entry(
    create_key: Callable[..., dict[str, Any]],
    client: TestClient,
    admin_headers: AdminHeaders,
    db_session: Session,
) -> None:
    created = create_key(scopes=("read",))
    me = client.get("/api/auth/me", headers=admin_headers).json()
    (entry,) = db_session.scalars(select(AuditEntry).where(AuditEntry.action == "apikey.create")).all()
    assert (entry.target_type, entry.target_id) == ("api_key", str(created["id"]))
    assert (entry.actor, entry.actor_user_id) == (me["username"], me["id"])
    assert entry.before is None
    assert entry.after is not None
    assert {k: v for k, v in entry.after.items() if k != "expires_at"} == {
        "name": "collector",
        "prefix": created["prefix"],
        "scopes": ["read"],
        "revoked_at": None,
    }
    assert dt.datetime.fromisoformat(entry.after["expires_at"]) == dt.datetime.fromisoformat(
        created["expires_at"]
    )
    assert created["key"] not in str(entry.after)


# --- list ------------------------------------------------------------------------------------------


def test_list_api_keys__pagination(
    client: TestClient, admin_headers: AdminHeaders, create_key: Callable[..., dict[str, Any]]
) -> None:
    ids = [create_key()["id"] for _ in range(3)]
    page = client.get("/api/apikeys", params={"page": 2, "size": 2}, headers=admin_headers).json()
    assert (page["total"], page["page"], page["size"]) == (3, 2, 2)
    assert [k["id"] for k in page["items"]] == ids[2:]


# --- authenticate ----------------------------------------------------------------------------------


def test_describe_api_key__valid_key(
    client: TestClient, create_key: Callable[..., dict[str, Any]], db_session: Session
) -> None:
    created = create_key(scopes=("read",))
    response = describe(client, created["key"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["name"], body["prefix"], body["scopes"]) == (
        created["id"],
        "collector",
        created["prefix"],
        ["read"],
    )
    assert body["last_used_at"] is not None
    row = db_session.get(ApiKey, created["id"])
    assert row is not None
    assert row.last_used_at is not None


def test_describe_api_key__missing_header(client: TestClient) -> None:
    response = client.get("/api/auth/key")
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "ApiKey"


def test_describe_api_key__bearer_token_is_not_a_key(client: TestClient, admin_headers: AdminHeaders) -> None:
    assert_error(client.get("/api/auth/key", headers=admin_headers), 401, "unauthorized")


def test_describe_api_key__revoked(
    client: TestClient,
    admin_headers: AdminHeaders,
    create_key: Callable[..., dict[str, Any]],
    db_session: Session,
) -> None:
    created = create_key()
    assert describe(client, created["key"]).status_code == 200
    response = client.delete(f"/api/apikeys/{created['id']}", headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None
    response = describe(client, created["key"])
    assert_error(response, 401, "invalid_api_key")
    assert response.headers["WWW-Authenticate"] == "ApiKey"


def test_describe_api_key__expired(
    client: TestClient, create_key: Callable[..., dict[str, Any]], db_session: Session
) -> None:
    created = create_key()
    row = db_session.get(ApiKey, created["id"])
    assert row is not None
    row.expires_at = utcnow() - dt.timedelta(seconds=1)
    db_session.commit()
    assert_error(describe(client, created["key"]), 401, "invalid_api_key")
    row.expires_at = utcnow() + dt.timedelta(minutes=5)
    db_session.commit()
    assert describe(client, created["key"]).status_code == 200


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: "garbage",
        lambda k: "fsk_short",
        lambda k: k.replace("fsk_", "xyz_", 1),
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # right prefix, wrong secret
        lambda k: "fsk_" + "0" * 12 + k[16:],  # unknown prefix, right secret
        lambda k: k.split("_", 2)[0] + "_" + k.split("_", 2)[1] + "_" + "x" * 10,  # secret too short
        lambda k: k + "x",
    ],
    ids=["garbage", "short", "wrong-tag", "wrong-secret", "unknown-prefix", "short-secret", "appended"],
)
def test_describe_api_key__malformed_or_wrong(
    client: TestClient, create_key: Callable[..., dict[str, Any]], mangle: Callable[[str], str]
) -> None:
    created = create_key()
    bad = mangle(created["key"])
    assert bad != created["key"]
    assert_error(describe(client, bad), 401, "invalid_api_key")


# --- revoke ----------------------------------------------------------------------------------------


def test_revoke_api_key__audit_entry_and_idempotence(
    client: TestClient,
    admin_headers: AdminHeaders,
    create_key: Callable[..., dict[str, Any]],
    db_session: Session,
) -> None:
    created = create_key()
    first = client.delete(f"/api/apikeys/{created['id']}", headers=admin_headers)
    assert first.status_code == 200
    second = client.delete(f"/api/apikeys/{created['id']}", headers=admin_headers)
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first.json()["revoked_at"]

    (entry,) = db_session.scalars(select(AuditEntry).where(AuditEntry.action == "apikey.revoke")).all()
    assert (entry.target_type, entry.target_id) == ("api_key", str(created["id"]))
    assert entry.before is not None
    assert entry.after is not None
    assert entry.before["revoked_at"] is None
    assert entry.after["revoked_at"] is not None
    assert {k: v for k, v in entry.before.items() if k != "revoked_at"} == {
        k: v for k, v in entry.after.items() if k != "revoked_at"
    }


def test_revoke_api_key__unknown_id(client: TestClient, admin_headers: AdminHeaders) -> None:
    error = assert_error(client.delete("/api/apikeys/424242", headers=admin_headers), 404, "not_found")
    assert error["message"] == "No API key with id 424242"


# --- scopes ----------------------------------------------------------------------------------------


ReadKey = Annotated[ApiKey, Depends(RequireScope(Scope.read))]


@pytest.fixture
def scoped_client(app: FastAPI, client: TestClient) -> TestClient:
    """The client, with two test-only routes guarded by scopes mounted on its app."""
    router = APIRouter(prefix="/scoped-test")

    @router.post("/ingest")
    def ingest(api_key: IngestKey) -> dict[str, Any]:
        return {"key_id": api_key.id}

    @router.get("/read")
    def read(api_key: ReadKey) -> dict[str, Any]:
        return {"key_id": api_key.id}

    app.include_router(router, prefix="/api")
    return client


@pytest.mark.parametrize(
    ("scopes", "ingest_status", "read_status"),
    [(("read",), 403, 200), (("ingest",), 200, 403), (("ingest", "read"), 200, 200)],
    ids=["read-only", "ingest-only", "both"],
)
def test_require_scope__enforced(
    scoped_client: TestClient,
    create_key: Callable[..., dict[str, Any]],
    scopes: tuple[str, ...],
    ingest_status: int,
    read_status: int,
) -> None:
    created = create_key(scopes=scopes)
    headers = {"X-API-Key": created["key"]}
    for method, path, expected in (("POST", "ingest", ingest_status), ("GET", "read", read_status)):
        response = scoped_client.request(method, f"/api/scoped-test/{path}", headers=headers)
        if expected == 200:
            assert response.status_code == 200, response.text
            assert response.json() == {"key_id": created["id"]}
        else:
            error = assert_error(response, 403, "scope_required")
            assert repr("ingest" if path == "ingest" else "read") in error["message"]


def test_require_scope__no_key(scoped_client: TestClient, admin_headers: AdminHeaders) -> None:
    assert_error(scoped_client.post("/api/scoped-test/ingest"), 401, "unauthorized")
    # a person's bearer token is no substitute for a machine key
    assert_error(scoped_client.post("/api/scoped-test/ingest", headers=admin_headers), 401, "unauthorized")


def test_require_scope__revoked_ingest_key(
    scoped_client: TestClient, admin_headers: AdminHeaders, create_key: Callable[..., dict[str, Any]]
) -> None:
    created = create_key(scopes=("ingest",))
    headers = {"X-API-Key": created["key"]}
    assert scoped_client.post("/api/scoped-test/ingest", headers=headers).status_code == 200
    scoped_client.delete(f"/api/apikeys/{created['id']}", headers=admin_headers)
    assert_error(scoped_client.post("/api/scoped-test/ingest", headers=headers), 401, "invalid_api_key")
