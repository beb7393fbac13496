"""User management (admins only) and the audit log it leaves behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from finsecure.audit.models import AuditEntry
from finsecure.auth.models import RefreshToken, Role, User
from tests.conftest import TEST_PASSWORD, login

MakeUser = Callable[..., User]
RESET_PASSWORD = "an-admin-chosen-password"


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


def error_fields(error: dict[str, Any]) -> set[str]:
    """The last element of each validation error's location: the offending field."""
    return {d["location"][-1] for d in error["details"]}


class Admin:
    """A signed-in admin: the user and the headers to act as them."""

    def __init__(self, user: User, headers: dict[str, str]) -> None:
        self.user = user
        self.headers = headers


@pytest.fixture
def admin(client: TestClient, make_user: MakeUser) -> Admin:
    user = make_user(Role.admin)
    return Admin(user, {"Authorization": f"Bearer {login(client, user.username)['access_token']}"})


def audit_for(db_session: Session, action: str, target_id: int) -> list[AuditEntry]:
    query = select(AuditEntry).where(AuditEntry.action == action, AuditEntry.target_id == str(target_id))
    return list(db_session.scalars(query.order_by(AuditEntry.id)))


# --- list ------------------------------------------------------------------------------------------


def test_list_users__pagination(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session
) -> None:
    for _ in range(4):
        make_user()
    total = db_session.scalar(select(func.count()).select_from(User))
    assert total == 5

    response = client.get("/api/users", params={"page": 2, "size": 2}, headers=admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total"], body["page"], body["size"]) == (5, 2, 2)
    all_ids = sorted(db_session.scalars(select(User.id)))
    assert [u["id"] for u in body["items"]] == all_ids[2:4]
    assert all("password_hash" not in u for u in body["items"])

    last = client.get("/api/users", params={"page": 3, "size": 2}, headers=admin.headers).json()
    assert [u["id"] for u in last["items"]] == all_ids[4:]
    beyond = client.get("/api/users", params={"page": 9, "size": 2}, headers=admin.headers).json()
    assert (beyond["items"], beyond["total"]) == ([], 5)
    default = client.get("/api/users", headers=admin.headers).json()
    assert (default["page"], default["size"], len(default["items"])) == (1, 50, 5)


@pytest.mark.parametrize("params", [{"page": 0}, {"size": 0}, {"size": 501}, {"page": "x"}])
def test_list_users__bad_pagination(client: TestClient, admin: Admin, params: dict[str, Any]) -> None:
    error = assert_error(
        client.get("/api/users", params=params, headers=admin.headers), 422, "validation_error"
    )
    assert error_fields(error) == set(params)


# --- create ----------------------------------------------------------------------------------------


def test_create_user__with_password(client: TestClient, admin: Admin, db_session: Session) -> None:
    body = {
        "username": "new.analyst",
        "password": "a-long-enough-password",
        "full_name": "New Analyst",
        "email": "analyst@example.com",
        "role": "analyst",
    }
    response = client.post("/api/users", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["username"] == "new.analyst"
    assert created["role"] == "analyst"
    assert created["email"] == "analyst@example.com"
    assert created["full_name"] == "New Analyst"
    assert created["disabled"] is False
    assert created["must_change_password"] is False
    assert created["one_time_password"] is None
    assert created["last_login_at"] is None
    assert "password" not in created
    assert "password_hash" not in created

    user = db_session.get(User, created["id"])
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert login(client, "new.analyst", "a-long-enough-password")

    (entry,) = audit_for(db_session, "user.create", created["id"])
    assert (entry.actor, entry.actor_user_id, entry.target_type) == (
        admin.user.username,
        admin.user.id,
        "user",
    )
    assert entry.before is None
    assert entry.after == {
        "username": "new.analyst",
        "full_name": "New Analyst",
        "email": "analyst@example.com",
        "role": "analyst",
        "disabled": False,
        "must_change_password": False,
    }
    assert "a-long-enough-password" not in str(entry.after)


def test_create_user__defaults_to_viewer_with_one_time_password(client: TestClient, admin: Admin) -> None:
    response = client.post("/api/users", json={"username": "fresh-viewer"}, headers=admin.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["role"] == "viewer"
    assert created["must_change_password"] is True
    assert isinstance(created["one_time_password"], str)
    assert len(created["one_time_password"]) == 20
    assert login(client, "fresh-viewer", created["one_time_password"])


@pytest.mark.parametrize("taken_as", ["Alice", "alice", "ALICE"])
def test_create_user__duplicate_username(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session, taken_as: str
) -> None:
    make_user(username="alice")
    response = client.post(
        "/api/users", json={"username": taken_as, "password": "a-long-enough-password"}, headers=admin.headers
    )
    assert_error(response, 409, "username_taken")
    assert (
        db_session.scalar(select(func.count()).select_from(User).where(func.lower(User.username) == "alice"))
        == 1
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "has space", "password": "a-long-enough-password"}, "username"),
        ({"username": "semi;colon", "password": "a-long-enough-password"}, "username"),
        ({"username": "ab", "password": "a-long-enough-password"}, "username"),
        ({"username": "u" * 65, "password": "a-long-enough-password"}, "username"),
        ({"username": "shortpass", "password": "elevenchars"}, "password"),
        ({"username": "someone", "password": "a-long-enough-password", "role": "root"}, "role"),
        ({"username": "someone", "password": "a-long-enough-password", "email": "not-an-email"}, "email"),
        ({"username": "someone", "password": "a-long-enough-password", "is_superuser": True}, "is_superuser"),
        ({"password": "a-long-enough-password"}, "username"),
    ],
    ids=[
        "space",
        "punctuation",
        "too-short",
        "too-long",
        "short-password",
        "role",
        "email",
        "extra",
        "missing",
    ],
)
def test_create_user__validation(
    client: TestClient, admin: Admin, db_session: Session, body: dict[str, Any], field: str
) -> None:
    before = db_session.scalar(select(func.count()).select_from(User))
    error = assert_error(client.post("/api/users", json=body, headers=admin.headers), 422, "validation_error")
    assert field in error_fields(error)
    assert all(d["location"][0] == "body" for d in error["details"])
    assert db_session.scalar(select(func.count()).select_from(User)) == before


def test_create_user__password_equal_to_username(client: TestClient, admin: Admin) -> None:
    body = {"username": "Long-Username-1", "password": "long-username-1"}
    error = assert_error(client.post("/api/users", json=body, headers=admin.headers), 422, "validation_error")
    assert "username" in error["details"][0]["message"]


def test_create_user__malformed_json(client: TestClient, admin: Admin) -> None:
    response = client.post(
        "/api/users", content=b'{"username": ', headers={**admin.headers, "Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")


# --- get -------------------------------------------------------------------------------------------


def test_get_user__found(client: TestClient, admin: Admin, make_user: MakeUser) -> None:
    user = make_user(Role.analyst)
    response = client.get(f"/api/users/{user.id}", headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["username"], body["role"]) == (user.id, user.username, "analyst")


def test_get_user__unknown_id(client: TestClient, admin: Admin) -> None:
    response = client.get("/api/users/999999", headers=admin.headers)
    error = assert_error(response, 404, "not_found")
    assert error == {"code": "not_found", "message": "No user with id 999999", "details": None}


def test_get_user__non_numeric_id(client: TestClient, admin: Admin) -> None:
    error = assert_error(client.get("/api/users/abc", headers=admin.headers), 422, "validation_error")
    assert error["details"][0]["location"] == ["path", "user_id"]


# --- update ----------------------------------------------------------------------------------------


def test_update_user__role(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user(Role.viewer)
    response = client.patch(f"/api/users/{user.id}", json={"role": "analyst"}, headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "analyst"
    db_session.refresh(user)
    assert user.role is Role.analyst

    (entry,) = audit_for(db_session, "user.update", user.id)
    assert (entry.actor, entry.actor_user_id, entry.ip) == (admin.user.username, admin.user.id, "testclient")
    assert entry.before is not None
    assert entry.after is not None
    assert (entry.before["role"], entry.after["role"]) == ("viewer", "analyst")
    assert {k: v for k, v in entry.before.items() if k != "role"} == {
        k: v for k, v in entry.after.items() if k != "role"
    }


def test_update_user__profile(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    response = client.patch(
        f"/api/users/{user.id}",
        json={"full_name": "Jo Doe", "email": "jo@example.com"},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert (response.json()["full_name"], response.json()["email"]) == ("Jo Doe", "jo@example.com")
    # null clears the e-mail address; a field left out stays as it was
    response = client.patch(f"/api/users/{user.id}", json={"email": None}, headers=admin.headers)
    assert (response.json()["full_name"], response.json()["email"]) == ("Jo Doe", None)
    entries = audit_for(db_session, "user.update", user.id)
    assert [(e.before["email"], e.after["email"]) for e in entries if e.before and e.after] == [
        (None, "jo@example.com"),
        ("jo@example.com", None),
    ]


def test_update_user__disable(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    tokens = login(client, user.username)
    response = client.patch(f"/api/users/{user.id}", json={"disabled": True}, headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True
    rows = db_session.scalars(
        select(RefreshToken).where(RefreshToken.user_id == user.id).execution_options(populate_existing=True)
    ).all()
    assert rows
    assert all(r.revoked_at is not None for r in rows)
    assert (
        client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    )
    (entry,) = audit_for(db_session, "user.update", user.id)
    assert entry.before is not None
    assert entry.after is not None
    assert (entry.before["disabled"], entry.after["disabled"]) == (False, True)

    response = client.patch(f"/api/users/{user.id}", json={"disabled": False}, headers=admin.headers)
    assert response.json()["disabled"] is False
    assert login(client, user.username)


def test_update_user__password_reset(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    old_hash = user.password_hash
    tokens = login(client, user.username)
    response = client.patch(f"/api/users/{user.id}", json={"password": RESET_PASSWORD}, headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["must_change_password"] is True
    db_session.refresh(user)
    assert user.password_hash != old_hash
    assert (
        client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    )

    (entry,) = audit_for(db_session, "user.update", user.id)
    assert entry.before is not None
    assert entry.after is not None
    assert entry.after["password"] == "reset"
    assert "password" not in entry.before
    assert (entry.before["must_change_password"], entry.after["must_change_password"]) == (False, True)
    assert RESET_PASSWORD not in str(entry.after)
    assert user.password_hash not in str(entry.after)

    response = client.post("/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD})
    assert_error(response, 401, "bad_credentials")
    new_headers = {"Authorization": f"Bearer {login(client, user.username, RESET_PASSWORD)['access_token']}"}
    assert client.get("/api/auth/me", headers=new_headers).json()["must_change_password"] is True


def test_update_user__unknown_id(client: TestClient, admin: Admin) -> None:
    response = client.patch("/api/users/999999", json={"role": "viewer"}, headers=admin.headers)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "superuser"}, "role"),
        ({"password": "short"}, "password"),
        ({"username": "renamed"}, "username"),
        ({"disabled": "maybe"}, "disabled"),
        ({"email": "nope"}, "email"),
    ],
    ids=["role", "password", "username-is-immutable", "disabled", "email"],
)
def test_update_user__validation(
    client: TestClient,
    admin: Admin,
    make_user: MakeUser,
    db_session: Session,
    body: dict[str, Any],
    field: str,
) -> None:
    user = make_user()
    error = assert_error(client.patch(f"/api/users/{user.id}", json=body, headers=admin.headers), 422)
    assert error["code"] == "validation_error"
    assert field in error_fields(error)
    assert audit_for(db_session, "user.update", user.id) == []


@pytest.mark.parametrize("change", [{"disabled": True}, {"role": "analyst"}, {"role": "viewer"}])
def test_update_user__last_admin_cannot_be_removed(
    client: TestClient, admin: Admin, db_session: Session, change: dict[str, Any]
) -> None:
    response = client.patch(f"/api/users/{admin.user.id}", json=change, headers=admin.headers)
    assert_error(response, 409, "last_admin")
    db_session.refresh(admin.user)
    assert (admin.user.role, admin.user.disabled) == (Role.admin, False)
    assert audit_for(db_session, "user.update", admin.user.id) == []


def test_update_user__last_admin_ignores_disabled_admins(
    client: TestClient, admin: Admin, make_user: MakeUser, db_session: Session
) -> None:
    other = make_user(Role.admin)
    other.disabled = True
    db_session.commit()
    response = client.patch(f"/api/users/{admin.user.id}", json={"disabled": True}, headers=admin.headers)
    assert_error(response, 409, "last_admin")


def test_update_user__last_admin_may_change_other_fields(client: TestClient, admin: Admin) -> None:
    for change in ({"full_name": "Still Admin"}, {"role": "admin"}, {"disabled": False}, {"role": None}):
        response = client.patch(f"/api/users/{admin.user.id}", json=change, headers=admin.headers)
        assert response.status_code == 200, (change, response.text)
        assert (response.json()["role"], response.json()["disabled"]) == ("admin", False)


def test_update_user__admin_can_be_demoted_when_another_exists(
    client: TestClient, admin: Admin, make_user: MakeUser
) -> None:
    other = make_user(Role.admin)
    response = client.patch(f"/api/users/{other.id}", json={"role": "analyst"}, headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "analyst"
    # now the caller is the last one
    response = client.patch(f"/api/users/{admin.user.id}", json={"role": "analyst"}, headers=admin.headers)
    assert_error(response, 409, "last_admin")


def test_update_user__demoted_admin_loses_access_at_once(
    client: TestClient, admin: Admin, make_user: MakeUser
) -> None:
    other = make_user(Role.admin)
    other_headers = {"Authorization": f"Bearer {login(client, other.username)['access_token']}"}
    assert client.get("/api/users", headers=other_headers).status_code == 200
    client.patch(f"/api/users/{other.id}", json={"role": "viewer"}, headers=admin.headers)
    # the access token still says "admin": the role is read from the database on every request
    assert_error(client.get("/api/users", headers=other_headers), 403, "role_required")


# --- audit log -------------------------------------------------------------------------------------


def test_list_audit__newest_first_with_filters(client: TestClient, admin: Admin) -> None:
    created = client.post(
        "/api/users",
        json={"username": "audited", "password": "a-long-enough-password"},
        headers=admin.headers,
    ).json()
    client.patch(f"/api/users/{created['id']}", json={"role": "analyst"}, headers=admin.headers)
    client.patch(f"/api/users/{created['id']}", json={"disabled": True}, headers=admin.headers)

    response = client.get("/api/audit", headers=admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [e["id"] for e in body["items"]]
    assert ids == sorted(ids, reverse=True)
    assert body["total"] == len(body["items"])
    assert {"user.create", "user.update", "auth.login"} <= {e["action"] for e in body["items"]}

    response = client.get(
        "/api/audit", params={"action": "user.update", "target_type": "user"}, headers=admin.headers
    )
    updates = response.json()
    assert updates["total"] == 2
    newest, oldest = updates["items"]
    assert newest["id"] > oldest["id"]
    assert (oldest["before"]["role"], oldest["after"]["role"]) == ("viewer", "analyst")
    assert (newest["before"]["disabled"], newest["after"]["disabled"]) == (False, True)
    for entry in updates["items"]:
        assert entry["action"] == "user.update"
        assert entry["target_type"] == "user"
        assert entry["target_id"] == str(created["id"])
        assert entry["actor"] == admin.user.username
        assert entry["actor_user_id"] == admin.user.id
        assert entry["ip"] == "testclient"

    page = client.get(
        "/api/audit", params={"action": "user.update", "size": 1, "page": 2}, headers=admin.headers
    ).json()
    assert (page["total"], page["page"], page["size"]) == (2, 2, 1)
    assert [e["id"] for e in page["items"]] == [oldest["id"]]

    by_target = client.get(
        "/api/audit", params={"target_id": str(created["id"])}, headers=admin.headers
    ).json()
    assert [e["action"] for e in by_target["items"]] == ["user.update", "user.update", "user.create"]
    none = client.get("/api/audit", params={"target_type": "api_key"}, headers=admin.headers).json()
    assert (none["items"], none["total"]) == ([], 0)


def test_list_audit__filter_by_actor_and_time(client: TestClient, admin: Admin, make_user: MakeUser) -> None:
    user = make_user()
    client.patch(f"/api/users/{user.id}", json={"full_name": "X"}, headers=admin.headers)
    mine = client.get("/api/audit", params={"actor_user_id": admin.user.id}, headers=admin.headers).json()
    assert mine["total"] >= 1
    assert all(e["actor_user_id"] == admin.user.id for e in mine["items"])

    # naive times are read as UTC
    for since in ("2000-01-01T00:00:00", "2000-01-01T00:00:00Z", "2000-01-01"):
        response = client.get("/api/audit", params={"since": since}, headers=admin.headers)
        assert response.status_code == 200, (since, response.text)
        assert response.json()["total"] >= 1
    future = client.get("/api/audit", params={"since": "2999-01-01T00:00:00+00:00"}, headers=admin.headers)
    assert future.json()["total"] == 0
    past = client.get("/api/audit", params={"until": "2000-01-01T00:00:00"}, headers=admin.headers)
    assert past.json()["total"] == 0


@pytest.mark.parametrize(
    "params",
    [{"actor_user_id": 0}, {"since": "yesterday"}, {"action": "a" * 65}],
    ids=["actor", "since", "action"],
)
def test_list_audit__validation(client: TestClient, admin: Admin, params: dict[str, Any]) -> None:
    error = assert_error(
        client.get("/api/audit", params=params, headers=admin.headers), 422, "validation_error"
    )
    assert error_fields(error) == set(params)
