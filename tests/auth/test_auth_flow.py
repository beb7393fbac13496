"""Sign-in, access tokens, refresh-token rotation, logout, one-time passwords and login throttling."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from finsecure.api import build_context, create_app
from finsecure.audit.models import AuditEntry
from finsecure.auth import service as auth_service
from finsecure.auth.models import RefreshToken, Role, User
from finsecure.core.database import utcnow
from finsecure.core.deps import get_db
from finsecure.core.errors import Unauthorized
from finsecure.core.security import hash_secret
from finsecure.core.settings import Settings
from tests.conftest import TEST_JWT_SECRET, TEST_PASSWORD, login, make_settings

NEW_PASSWORD = "a-brand-new-long-passphrase"
OTHER_SECRET = "another-secret-" + "y" * 40
MakeUser = Callable[..., User]


# --- helpers ---------------------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response has ``status`` and the uniform error body (with ``code`` when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def craft_token(
    user_id: int,
    *,
    secret: str = TEST_JWT_SECRET,
    exp_delta_s: int = 600,
    algorithm: str = "HS256",
    **overrides: Any,
) -> str:
    """An access token built by hand, like the app would, with any claim overridden."""
    now = int(utcnow().timestamp())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "role": "admin",
        "type": "access",
        "iss": "finsecure",
        "iat": now - 5,
        "exp": now + exp_delta_s,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return jwt.encode(claims, secret if algorithm != "none" else None, algorithm=algorithm)


@pytest.fixture
def make_client(db_engine: Engine, db_session: Session) -> Iterator[Callable[..., TestClient]]:
    """Factory: a client for an app built with ``make_settings(**overrides)`` on the test database."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        settings: Settings = make_settings(
            database_url=db_engine.url.render_as_string(hide_password=False), **overrides
        )
        application: FastAPI = create_app(context=build_context(settings, engine=db_engine))
        application.dependency_overrides[get_db] = lambda: db_session
        test_client = TestClient(application, raise_server_exceptions=False)
        test_client.__enter__()
        clients.append(test_client)
        return test_client

    yield factory
    for test_client in clients:
        test_client.__exit__(None, None, None)


def audit_entries(db_session: Session, action: str) -> list[AuditEntry]:
    return list(
        db_session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
    )


def family_tokens(db_session: Session, raw: str) -> list[RefreshToken]:
    """Every refresh token of the family that ``raw`` belongs to, freshly read."""
    token = db_session.scalar(select(RefreshToken).where(RefreshToken.token_hash == hash_secret(raw)))
    assert token is not None
    query = select(RefreshToken).where(RefreshToken.family == token.family).order_by(RefreshToken.id)
    return list(db_session.scalars(query.execution_options(populate_existing=True)))


def refresh(client: TestClient, raw: str) -> httpx.Response:
    return client.post("/api/auth/refresh", json={"refresh_token": raw})


# --- sign-in ---------------------------------------------------------------------------------------


def test_sign_in__success_returns_token_pair(
    client: TestClient, make_user: MakeUser, settings: Settings
) -> None:
    user = make_user(Role.analyst)
    response = client.post("/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "refresh_expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_s
    assert body["refresh_expires_in"] == settings.refresh_token_ttl_s
    claims = jwt.decode(body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"], issuer="finsecure")
    assert claims["sub"] == str(user.id)
    assert claims["role"] == "analyst"
    assert claims["type"] == "access"
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_s
    assert body["refresh_token"] != body["access_token"]


def test_sign_in__username_is_case_insensitive(client: TestClient, make_user: MakeUser) -> None:
    make_user(Role.viewer, username="CaseUser")
    assert login(client, "caseuser")["access_token"]


def test_sign_in__only_refresh_token_hash_is_stored(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    tokens = login(client, user.username)
    rows = list(db_session.scalars(select(RefreshToken).where(RefreshToken.user_id == user.id)))
    assert len(rows) == 1
    assert rows[0].token_hash == hash_secret(tokens["refresh_token"])
    assert tokens["refresh_token"] not in rows[0].token_hash


def test_sign_in__wrong_password(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    response = client.post(
        "/api/auth/token", data={"username": user.username, "password": "wrong-password-1"}
    )
    assert_error(response, 401, "bad_credentials")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_sign_in__unknown_user(client: TestClient) -> None:
    response = client.post("/api/auth/token", data={"username": "nobody-here", "password": TEST_PASSWORD})
    error = assert_error(response, 401, "bad_credentials")
    assert error["message"] == "Wrong username or password"  # the same message as a wrong password


def test_sign_in__disabled_user_with_right_password(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    user.disabled = True
    db_session.commit()
    response = client.post("/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD})
    assert_error(response, 401, "bad_credentials")
    (entry,) = audit_entries(db_session, "auth.login_failed")
    assert entry.after == {"reason": "disabled"}


def test_sign_in__missing_fields(client: TestClient) -> None:
    response = client.post("/api/auth/token", data={"username": "someone"})
    error = assert_error(response, 422, "validation_error")
    assert any(d["location"][-1] == "password" for d in error["details"])


def test_sign_in__overlong_username(client: TestClient) -> None:
    response = client.post("/api/auth/token", data={"username": "u" * 65, "password": TEST_PASSWORD})
    assert_error(response, 400, "bad_credentials_format")


def test_sign_in__audit_entries(client: TestClient, make_user: MakeUser, db_session: Session) -> None:
    user = make_user()
    client.post("/api/auth/token", data={"username": user.username, "password": "wrong-password-1"})
    client.post("/api/auth/token", data={"username": "ghost-user", "password": "wrong-password-1"})
    login(client, user.username)

    failed = audit_entries(db_session, "auth.login_failed")
    assert [(e.actor, e.target_id, e.after) for e in failed] == [
        (f"anonymous:{user.username}", str(user.id), {"reason": "bad_credentials"}),
        ("anonymous:ghost-user", None, {"reason": "bad_credentials"}),
    ]
    assert all(e.actor_user_id is None and e.ip == "testclient" for e in failed)
    (ok,) = audit_entries(db_session, "auth.login")
    assert (ok.actor, ok.actor_user_id, ok.target_type, ok.target_id) == (
        user.username,
        user.id,
        "user",
        str(user.id),
    )
    db_session.refresh(user)
    assert user.last_login_at is not None


# --- access tokens ---------------------------------------------------------------------------------


def test_me__returns_signed_in_user(client: TestClient, make_user: MakeUser) -> None:
    user = make_user(Role.analyst)
    response = client.get("/api/auth/me", headers=bearer(login(client, user.username)["access_token"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == user.id
    assert body["username"] == user.username
    assert body["role"] == "analyst"
    assert body["disabled"] is False
    assert body["must_change_password"] is False
    assert "password_hash" not in body
    assert "password" not in body


def test_me__crafted_valid_token_is_accepted(client: TestClient, make_user: MakeUser) -> None:
    # guards the tests below: the same token with only one thing changed is refused
    user = make_user()
    response = client.get("/api/auth/me", headers=bearer(craft_token(user.id)))
    assert response.status_code == 200, response.text


def test_me__no_token(client: TestClient) -> None:
    response = client.get("/api/auth/me")
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_me__expired_token(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    token = craft_token(user.id, exp_delta_s=-60, iat=int(utcnow().timestamp()) - 1000)
    error = assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")
    assert "expired" in error["message"]


def test_me__forged_token(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    token = craft_token(user.id, secret=OTHER_SECRET)
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


def test_me__alg_none_token(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    token = craft_token(user.id, algorithm="none")
    assert token.endswith(".")  # no signature at all
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


def test_me__other_algorithm_token(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    token = craft_token(user.id, algorithm="HS384")
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize("token_type", ["refresh", "other", None])
def test_me__token_of_wrong_type(client: TestClient, make_user: MakeUser, token_type: str | None) -> None:
    user = make_user()
    token = craft_token(user.id, type=token_type)
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


def test_me__wrong_issuer(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    token = craft_token(user.id, iss="someone-else")
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize("missing", ["exp", "sub", "jti", "iss"])
def test_me__token_missing_claim(client: TestClient, make_user: MakeUser, missing: str) -> None:
    user = make_user()
    now = int(utcnow().timestamp())
    claims: dict[str, Any] = {
        "sub": str(user.id),
        "type": "access",
        "iss": "finsecure",
        "iat": now,
        "exp": now + 600,
        "jti": "x",
    }
    del claims[missing]
    token = jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


def test_me__token_for_unknown_user(client: TestClient) -> None:
    token = craft_token(987_654)
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "account_disabled")


def test_me__token_with_non_numeric_subject(client: TestClient) -> None:
    token = craft_token(1, sub="admin")
    assert_error(client.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "Bearer", "eyJhbGciOiJIUzI1NiJ9.e30."])
def test_me__garbage_token(client: TestClient, garbage: str) -> None:
    assert_error(client.get("/api/auth/me", headers=bearer(garbage)), 401, "invalid_token")


def test_me__token_in_wrong_scheme(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    token = login(client, user.username)["access_token"]
    response = client.get("/api/auth/me", headers={"Authorization": f"Basic {token}"})
    assert_error(response, 401, "unauthorized")


def test_me__signing_secret_rotation(
    client: TestClient, make_user: MakeUser, make_client: Callable[..., TestClient]
) -> None:
    user = make_user()
    old_token = login(client, user.username)["access_token"]  # signed with TEST_JWT_SECRET

    rotating = make_client(jwt_secret=OTHER_SECRET, jwt_previous_secrets=(TEST_JWT_SECRET,))
    response = rotating.get("/api/auth/me", headers=bearer(old_token))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == user.id
    new_token = login(rotating, user.username)["access_token"]
    assert jwt.decode(new_token, OTHER_SECRET, algorithms=["HS256"], issuer="finsecure")["sub"] == str(
        user.id
    )
    # an app that still has the old secret as its current one does not know the new secret
    assert_error(client.get("/api/auth/me", headers=bearer(new_token)), 401, "invalid_token")

    rotated = make_client(jwt_secret=OTHER_SECRET)
    assert_error(rotated.get("/api/auth/me", headers=bearer(old_token)), 401, "invalid_token")
    assert rotated.get("/api/auth/me", headers=bearer(new_token)).status_code == 200


def test_me__expired_token_signed_with_previous_secret(
    make_user: MakeUser, make_client: Callable[..., TestClient]
) -> None:
    user = make_user()
    rotating = make_client(jwt_secret=OTHER_SECRET, jwt_previous_secrets=(TEST_JWT_SECRET,))
    token = craft_token(user.id, exp_delta_s=-60, iat=int(utcnow().timestamp()) - 1000)
    error = assert_error(rotating.get("/api/auth/me", headers=bearer(token)), 401, "invalid_token")
    assert "expired" in error["message"]


# --- refresh tokens --------------------------------------------------------------------------------


def test_refresh__rotation_returns_new_pair(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    first = login(client, user.username)
    response = refresh(client, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert client.get("/api/auth/me", headers=bearer(second["access_token"])).status_code == 200

    old, new = family_tokens(db_session, first["refresh_token"])
    assert old.used_at is not None
    assert old.revoked_at is None
    assert new.token_hash == hash_secret(second["refresh_token"])
    assert new.used_at is None
    assert new.revoked_at is None


def test_refresh__old_token_cannot_be_used_again(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    first = login(client, user.username)
    assert refresh(client, first["refresh_token"]).status_code == 200
    assert_error(refresh(client, first["refresh_token"]), 401, "refresh_token_reused")


def test_refresh__reuse_revokes_whole_family(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    first = login(client, user.username)
    other_session = login(client, user.username)  # a separate sign-in: another family
    second = refresh(client, first["refresh_token"]).json()
    third = refresh(client, second["refresh_token"]).json()

    assert_error(refresh(client, first["refresh_token"]), 401, "refresh_token_reused")

    tokens = family_tokens(db_session, first["refresh_token"])
    assert len(tokens) == 3
    assert all(t.revoked_at is not None for t in tokens)
    # the newest token of the family, never used, is dead too
    assert refresh(client, third["refresh_token"]).status_code == 401
    # the other sign-in is untouched
    assert refresh(client, other_session["refresh_token"]).status_code == 200

    (entry,) = audit_entries(db_session, "auth.refresh_reuse")
    assert entry.target_id == str(user.id)
    assert entry.after == {"family": tokens[0].family}
    assert entry.actor == "system:token-guard"


def test_refresh__revoked_token_is_not_reported_as_reuse(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    tokens = login(client, user.username)
    headers = bearer(tokens["access_token"])
    assert (
        client.post(
            "/api/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=headers
        ).status_code
        == 204
    )
    assert_error(refresh(client, tokens["refresh_token"]), 401, "refresh_token_revoked")
    assert audit_entries(db_session, "auth.refresh_reuse") == []


def test_refresh__unknown_token(client: TestClient) -> None:
    assert_error(refresh(client, "not-a-token-we-issued"), 401, "invalid_refresh_token")


def test_refresh__empty_token(client: TestClient) -> None:
    assert_error(refresh(client, ""), 422, "validation_error")


def test_refresh__expired_token(client: TestClient, make_user: MakeUser, db_session: Session) -> None:
    user = make_user()
    tokens = login(client, user.username)
    (row,) = family_tokens(db_session, tokens["refresh_token"])
    row.expires_at = utcnow() - dt.timedelta(seconds=1)
    db_session.commit()
    assert_error(refresh(client, tokens["refresh_token"]), 401, "refresh_token_expired")


def test_refresh__access_token_is_not_a_refresh_token(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    tokens = login(client, user.username)
    assert_error(refresh(client, tokens["access_token"]), 401, "invalid_refresh_token")


def test_rotate_refresh_token__concurrent_use_is_reuse(
    client: TestClient, make_user: MakeUser, db_session: Session, settings: Settings
) -> None:
    # Another request used the token between our read and our write: our copy of the row is stale.
    user = make_user()
    tokens = login(client, user.username)
    (row,) = family_tokens(db_session, tokens["refresh_token"])
    db_session.execute(
        sql_update(RefreshToken)
        .where(RefreshToken.id == row.id)
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    assert row.used_at is None  # what a concurrent reader would still see

    with pytest.raises(Unauthorized) as excinfo:
        auth_service.rotate_refresh_token(
            db_session=db_session, settings=settings, raw=tokens["refresh_token"], ip="10.0.0.1"
        )
    assert excinfo.value.code == "refresh_token_reused"
    assert all(t.revoked_at is not None for t in family_tokens(db_session, tokens["refresh_token"]))
    assert len(audit_entries(db_session, "auth.refresh_reuse")) == 1


# --- logout ----------------------------------------------------------------------------------------


def test_logout__revokes_the_family(client: TestClient, make_user: MakeUser, db_session: Session) -> None:
    user = make_user()
    first = login(client, user.username)
    second = refresh(client, first["refresh_token"]).json()
    other_session = login(client, user.username)

    response = client.post(
        "/api/auth/logout",
        json={"refresh_token": second["refresh_token"]},
        headers=bearer(second["access_token"]),
    )
    assert response.status_code == 204
    assert response.content == b""
    assert refresh(client, second["refresh_token"]).status_code == 401
    assert all(t.revoked_at is not None for t in family_tokens(db_session, first["refresh_token"]))
    assert refresh(client, other_session["refresh_token"]).status_code == 200
    (entry,) = audit_entries(db_session, "auth.logout")
    assert (entry.actor_user_id, entry.target_id) == (user.id, str(user.id))


def test_logout__someone_elses_token(client: TestClient, make_user: MakeUser) -> None:
    alice, bob = make_user(), make_user()
    alice_tokens, bob_tokens = login(client, alice.username), login(client, bob.username)
    response = client.post(
        "/api/auth/logout",
        json={"refresh_token": bob_tokens["refresh_token"]},
        headers=bearer(alice_tokens["access_token"]),
    )
    assert_error(response, 400, "invalid_refresh_token")
    assert refresh(client, bob_tokens["refresh_token"]).status_code == 200


def test_logout__needs_access_token(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    tokens = login(client, user.username)
    response = client.post("/api/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert_error(response, 401, "unauthorized")
    assert refresh(client, tokens["refresh_token"]).status_code == 200


# --- disabled users --------------------------------------------------------------------------------


def test_disabled_user__tokens_stop_working(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    tokens = login(client, user.username)
    admin = make_user(Role.admin)
    admin_headers = bearer(login(client, admin.username)["access_token"])
    response = client.patch(f"/api/users/{user.id}", json={"disabled": True}, headers=admin_headers)
    assert response.status_code == 200, response.text

    assert_error(client.get("/api/auth/me", headers=bearer(tokens["access_token"])), 401, "account_disabled")
    assert refresh(client, tokens["refresh_token"]).status_code == 401
    response = client.post("/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD})
    assert_error(response, 401, "bad_credentials")


def test_disabled_user__refresh_refused_even_with_live_token(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    # disabled behind the API's back: the refresh token itself was never revoked
    user = make_user()
    tokens = login(client, user.username)
    user.disabled = True
    db_session.commit()
    assert_error(refresh(client, tokens["refresh_token"]), 401, "account_disabled")
    assert_error(client.get("/api/auth/me", headers=bearer(tokens["access_token"])), 401, "account_disabled")


# --- one-time passwords and password changes -------------------------------------------------------


def _create_with_one_time_password(client: TestClient, make_user: MakeUser, role: Role) -> tuple[str, str]:
    admin = make_user(Role.admin)
    headers = bearer(login(client, admin.username)["access_token"])
    response = client.post(
        "/api/users", json={"username": f"otp-{role.value}", "role": role.value}, headers=headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["must_change_password"] is True
    one_time: str = body["one_time_password"]
    assert len(one_time) == 20
    assert one_time.isalnum()
    return body["username"], one_time


def test_change_password__one_time_password_flow(client: TestClient, make_user: MakeUser) -> None:
    username, one_time = _create_with_one_time_password(client, make_user, Role.admin)
    tokens = login(client, username, one_time)
    headers = bearer(tokens["access_token"])

    me = client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["must_change_password"] is True
    assert_error(client.get("/api/users", headers=headers), 403, "password_change_required")
    assert_error(client.get("/api/audit", headers=headers), 403, "password_change_required")

    response = client.post(
        "/api/auth/password",
        json={"current_password": one_time, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert response.status_code == 204, response.text

    assert client.get("/api/users", headers=headers).status_code == 200
    assert client.get("/api/auth/me", headers=headers).json()["must_change_password"] is False
    assert_error(refresh(client, tokens["refresh_token"]), 401)
    response = client.post("/api/auth/token", data={"username": username, "password": one_time})
    assert_error(response, 401, "bad_credentials")
    assert login(client, username, NEW_PASSWORD)["access_token"]


def test_change_password__pending_user_can_log_out(client: TestClient, make_user: MakeUser) -> None:
    username, one_time = _create_with_one_time_password(client, make_user, Role.viewer)
    tokens = login(client, username, one_time)
    response = client.post(
        "/api/auth/logout",
        json={"refresh_token": tokens["refresh_token"]},
        headers=bearer(tokens["access_token"]),
    )
    assert response.status_code == 204


def test_change_password__wrong_current_password(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    headers = bearer(login(client, user.username)["access_token"])
    response = client.post(
        "/api/auth/password",
        json={"current_password": "not-the-password", "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert_error(response, 400, "wrong_password")
    assert login(client, user.username)  # unchanged


def test_change_password__new_password_too_short(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    headers = bearer(login(client, user.username)["access_token"])
    response = client.post(
        "/api/auth/password",
        json={"current_password": TEST_PASSWORD, "new_password": "short"},
        headers=headers,
    )
    error = assert_error(response, 422, "validation_error")
    assert any(d["location"][-1] == "new_password" for d in error["details"])


def test_change_password__same_as_current(client: TestClient, make_user: MakeUser) -> None:
    user = make_user()
    headers = bearer(login(client, user.username)["access_token"])
    response = client.post(
        "/api/auth/password",
        json={"current_password": TEST_PASSWORD, "new_password": TEST_PASSWORD},
        headers=headers,
    )
    assert_error(response, 422, "validation_error")


def test_change_password__same_as_username(client: TestClient, make_user: MakeUser) -> None:
    user = make_user(username="long-enough-username")
    headers = bearer(login(client, user.username)["access_token"])
    response = client.post(
        "/api/auth/password",
        json={"current_password": TEST_PASSWORD, "new_password": "Long-Enough-Username"},
        headers=headers,
    )
    assert_error(response, 400, "weak_password")


def test_change_password__revokes_refresh_tokens(
    client: TestClient, make_user: MakeUser, db_session: Session
) -> None:
    user = make_user()
    first, second = login(client, user.username), login(client, user.username)
    response = client.post(
        "/api/auth/password",
        json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(first["access_token"]),
    )
    assert response.status_code == 204
    assert refresh(client, first["refresh_token"]).status_code == 401
    assert refresh(client, second["refresh_token"]).status_code == 401
    (entry,) = audit_entries(db_session, "user.password_change")
    assert (entry.actor_user_id, entry.target_id, entry.before, entry.after) == (
        user.id,
        str(user.id),
        None,
        None,
    )


def test_change_password__needs_access_token(client: TestClient) -> None:
    response = client.post(
        "/api/auth/password", json={"current_password": TEST_PASSWORD, "new_password": NEW_PASSWORD}
    )
    assert_error(response, 401, "unauthorized")


# --- login throttling ------------------------------------------------------------------------------


def _fail(client: TestClient, username: str) -> httpx.Response:
    return client.post("/api/auth/token", data={"username": username, "password": "wrong-password-1"})


def test_sign_in__throttled_per_user(client: TestClient, make_user: MakeUser, settings: Settings) -> None:
    victim, bystander = make_user(), make_user()
    for _ in range(settings.login_max_failures_per_user):
        assert_error(_fail(client, victim.username), 401, "bad_credentials")

    response = client.post("/api/auth/token", data={"username": victim.username, "password": TEST_PASSWORD})
    assert_error(response, 429, "login_throttled")
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= settings.login_failure_window_s + 1
    # the name is matched without regard to case
    response = client.post(
        "/api/auth/token", data={"username": victim.username.upper(), "password": TEST_PASSWORD}
    )
    assert_error(response, 429, "login_throttled")
    assert login(client, bystander.username)["access_token"]


def test_sign_in__throttled_attempts_are_not_audited(
    make_user: MakeUser, make_client: Callable[..., TestClient], db_session: Session
) -> None:
    client = make_client(login_max_failures_per_user=2)
    user = make_user()
    _fail(client, user.username)
    _fail(client, user.username)
    assert_error(_fail(client, user.username), 429, "login_throttled")
    assert len(audit_entries(db_session, "auth.login_failed")) == 2


def test_sign_in__throttled_per_ip(make_user: MakeUser, make_client: Callable[..., TestClient]) -> None:
    client = make_client(login_max_failures_per_user=10, login_max_failures_per_ip=3)
    user = make_user()
    for i in range(3):
        assert_error(_fail(client, f"sprayed-{i}"), 401, "bad_credentials")
    response = client.post("/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD})
    assert_error(response, 429, "login_throttled")
    assert int(response.headers["Retry-After"]) >= 1


def test_sign_in__success_resets_user_counter(
    make_user: MakeUser, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(login_max_failures_per_user=3, login_max_failures_per_ip=100)
    user = make_user()
    for _ in range(2):
        _fail(client, user.username)
    assert login(client, user.username)
    for _ in range(2):
        assert_error(_fail(client, user.username), 401, "bad_credentials")
    assert login(client, user.username)  # 4 failures in the window, but only 2 since the success
    _fail(client, user.username)
    _fail(client, user.username)
    _fail(client, user.username)
    assert_error(_fail(client, user.username), 429, "login_throttled")


def test_sign_in__window_expiry_lifts_throttle(
    make_user: MakeUser, make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(login_max_failures_per_user=1, login_failure_window_s=60)
    limiter = client.app.state.context.login_limiter  # type: ignore[attr-defined]
    now = [1000.0]
    monkeypatch.setattr(limiter, "_clock", lambda: now[0])
    user = make_user()
    _fail(client, user.username)
    response = client.post("/api/auth/token", data={"username": user.username, "password": TEST_PASSWORD})
    assert_error(response, 429, "login_throttled")
    assert response.headers["Retry-After"] == "61"
    now[0] += 61
    assert login(client, user.username)
