"""The API's behaviour on bad input: one error body, the right status, never a 500, hardening headers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from finsecure.api import build_context, create_app
from finsecure.auth.models import Role
from finsecure.core.deps import get_db
from tests.conftest import make_settings

JSON = {"content-type": "application/json"}
LIMIT = 2048
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

AppFactory = Callable[..., FastAPI]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The response has ``status`` and the standard error body with ``code``; returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def assert_security_headers(response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.fixture
def make_app(db_engine: Engine, db_session: Session) -> AppFactory:
    """Factory: an app on the test database with settings overrides."""

    def factory(**overrides: Any) -> FastAPI:
        settings = make_settings(
            database_url=db_engine.url.render_as_string(hide_password=False), **overrides
        )
        application = create_app(context=build_context(settings, engine=db_engine))
        application.dependency_overrides[get_db] = lambda: db_session
        return application

    return factory


@pytest.fixture
def small_client(make_app: AppFactory) -> Iterator[TestClient]:
    with TestClient(make_app(max_request_bytes=LIMIT), raise_server_exceptions=False) as test_client:
        yield test_client


# --- malformed and invalid bodies -------------------------------------------------------------------


def test_malformed_json__400(client: TestClient) -> None:
    response = client.post("/api/auth/refresh", content=b'{"refresh_token": ', headers=JSON)
    error = assert_error(response, 400, "malformed_json")
    assert error["details"]
    assert error["details"][0]["type"] == "json_invalid"
    assert error["details"][0]["location"][0] == "body"
    assert_security_headers(response)


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b'{"refresh_token": "x",}', b"\xff\xfe", b"nul\x00"])
def test_malformed_json__variants_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/api/auth/refresh", content=raw, headers=JSON)
    assert_error(response, 400, "malformed_json")


def test_validation_error__wrong_type(client: TestClient) -> None:
    response = client.post("/api/auth/refresh", json={"refresh_token": 12345})
    error = assert_error(response, 422, "validation_error")
    assert [d["location"] for d in error["details"]] == [["body", "refresh_token"]]
    assert error["details"][0]["type"] == "string_type"
    assert error["details"][0]["message"]


def test_validation_error__missing_field(client: TestClient) -> None:
    response = client.post("/api/auth/refresh", json={})
    error = assert_error(response, 422, "validation_error")
    assert error["details"] == [
        {"location": ["body", "refresh_token"], "message": "Field required", "type": "missing"}
    ]


def test_validation_error__empty_body(client: TestClient) -> None:
    response = client.post("/api/auth/refresh", content=b"", headers=JSON)
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["location"][0] == "body"


@pytest.mark.parametrize("payload", [[], "token", 42, None, [{"refresh_token": "x"}]])
def test_validation_error__body_not_an_object(client: TestClient, payload: Any) -> None:
    response = client.post("/api/auth/refresh", json=payload)
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["location"][0] == "body"


def test_validation_error__unknown_extra_field(client: TestClient) -> None:
    response = client.post("/api/auth/refresh", json={"refresh_token": "abc", "is_admin": True})
    error = assert_error(response, 422, "validation_error")
    assert [d["location"] for d in error["details"]] == [["body", "is_admin"]]
    assert error["details"][0]["type"] == "extra_forbidden"


def test_validation_error__too_long(client: TestClient) -> None:
    response = client.post("/api/auth/refresh", json={"refresh_token": "x" * 513})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["type"] == "string_too_long"


def test_validation_error__echoes_no_input(client: TestClient) -> None:
    secret = "my-very-secret-value-that-must-not-echo"
    response = client.post("/api/auth/refresh", json={"refresh_token": "x" * 600, "password": secret})
    assert_error(response, 422, "validation_error")
    assert secret not in response.text


def test_validation_error__on_users_create(
    client: TestClient, auth_headers: Callable[[Role], dict[str, str]]
) -> None:
    response = client.post(
        "/api/users",
        json={"username": "ab", "role": "superuser", "extra": 1},
        headers=auth_headers(Role.admin),
    )
    error = assert_error(response, 422, "validation_error")
    locations = {tuple(d["location"]) for d in error["details"]}
    assert {("body", "username"), ("body", "role"), ("body", "extra")} <= locations


def test_wrong_content_type__not_500(client: TestClient) -> None:
    response = client.post(
        "/api/auth/refresh", content=b'{"refresh_token": "abc"}', headers={"content-type": "text/plain"}
    )
    assert response.status_code in (400, 401, 415, 422)
    assert "error" in response.json()


# --- body size --------------------------------------------------------------------------------------


def test_body_size__content_length_over_limit_413(small_client: TestClient) -> None:
    response = small_client.post("/api/auth/refresh", content=b"x" * (LIMIT + 1), headers=JSON)
    error = assert_error(response, 413, "payload_too_large")
    assert str(LIMIT) in error["message"]
    assert_security_headers(response)


def test_body_size__at_limit_passes_through(small_client: TestClient) -> None:
    prefix, suffix = b'{"refresh_token": "', b'"}'
    body = prefix + b"a" * (LIMIT - len(prefix) - len(suffix)) + suffix
    assert len(body) == LIMIT
    response = small_client.post("/api/auth/refresh", content=body, headers=JSON)
    assert_error(response, 422, "validation_error")  # too long a token, but not too large a body


def test_body_size__form_over_limit_413(small_client: TestClient) -> None:
    response = small_client.post("/api/auth/token", data={"username": "u" * LIMIT, "password": "p"})
    assert_error(response, 413, "payload_too_large")


def _chunks(total: int, size: int = 512) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


def test_body_size__chunked_over_limit_413(small_client: TestClient) -> None:
    response = small_client.post("/api/auth/refresh", content=_chunks(LIMIT * 4), headers=JSON)
    error = assert_error(response, 413, "payload_too_large")
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert str(LIMIT) in error["message"]
    assert_security_headers(response)


def test_body_size__chunked_form_over_limit_413(small_client: TestClient) -> None:
    response = small_client.post(
        "/api/auth/token",
        content=_chunks(LIMIT * 4),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 413, "payload_too_large")


def test_body_size__chunked_under_limit_passes_through(small_client: TestClient) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"refresh_token": '
        yield b'"not-a-real-token"}'

    response = small_client.post("/api/auth/refresh", content=body(), headers=JSON)
    assert_error(response, 401, "invalid_refresh_token")  # the body was read and parsed in full


def test_body_size__non_numeric_content_length_400(small_client: TestClient) -> None:
    response = small_client.post(
        "/api/auth/refresh", content=b"{}", headers={**JSON, "content-length": "abc"}
    )
    error = assert_error(response, 400, "bad_request")
    assert "Content-Length" in error["message"]


# --- routing errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/nope", "/api/", "/api/users/1/../../etc/passwd", "/api/%00"])
def test_unknown_route__404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert_error(response, 404, "not_found")
    assert_security_headers(response)


def test_wrong_method__405(client: TestClient) -> None:
    response = client.delete("/api/health")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


def test_wrong_method__405_on_post_route(client: TestClient) -> None:
    response = client.get("/api/auth/refresh")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_unauthenticated__401_standard_body(client: TestClient) -> None:
    response = client.get("/api/users")
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


# --- unexpected errors ------------------------------------------------------------------------------


def _boom_router() -> APIRouter:
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 at db.internal:5432 (psycopg.OperationalError)")

    @router.post("/boom")
    def boom_post(payload: dict[str, Any]) -> None:
        raise KeyError(f"secret-{payload}")

    return router


@pytest.mark.parametrize("base_url", ["http://testserver", "https://testserver"])
def test_unexpected_error__500_leaks_nothing(
    app: FastAPI, caplog: pytest.LogCaptureFixture, base_url: str
) -> None:
    app.include_router(_boom_router(), prefix="/api/test")
    with TestClient(app, raise_server_exceptions=False, base_url=base_url) as test_client:
        response = test_client.get("/api/test/boom")
    error = assert_error(response, 500, "internal_error")
    assert error["details"] is None
    for leak in ("hunter2", "password", "db.internal", "5432", "RuntimeError", "psycopg", "Traceback"):
        assert leak not in response.text
    assert_security_headers(response)
    assert ("strict-transport-security" in response.headers) is (base_url.startswith("https"))
    assert any("unhandled error on GET /api/test/boom" in r.getMessage() for r in caplog.records)


def test_unexpected_error__500_after_reading_body(app: FastAPI) -> None:
    app.include_router(_boom_router(), prefix="/api/test")
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.post("/api/test/boom", json={"k": "classified"})
    assert_error(response, 500, "internal_error")
    assert "classified" not in response.text


# --- security headers and CORS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/health"), ("GET", "/api/users"), ("POST", "/api/auth/refresh")]
)
def test_security_headers__on_every_response(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json={})
    assert_security_headers(response)
    assert "strict-transport-security" not in response.headers


def test_security_headers__hsts_only_over_https(app: FastAPI) -> None:
    with TestClient(app, raise_server_exceptions=False, base_url="https://testserver") as tls_client:
        response = tls_client.get("/api/health")
        not_found = tls_client.get("/api/nope")
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")
    assert not_found.headers["strict-transport-security"].startswith("max-age=31536000")
    assert_security_headers(response)


def test_security_headers__hsts_on_413_over_https(make_app: AppFactory) -> None:
    app = make_app(max_request_bytes=LIMIT)
    with TestClient(app, raise_server_exceptions=False, base_url="https://testserver") as tls_client:
        response = tls_client.post("/api/auth/refresh", content=b"x" * (LIMIT + 1), headers=JSON)
    assert_error(response, 413, "payload_too_large")
    assert "strict-transport-security" in response.headers


def test_security_headers__not_duplicated(client: TestClient) -> None:
    response = client.get("/api/health")
    for name in SECURITY_HEADERS:
        assert len(response.headers.get_list(name)) == 1


def test_cors__off_by_default(client: TestClient) -> None:
    origin = {"origin": "https://evil.example"}
    simple = client.get("/api/health", headers=origin)
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers
    preflight = client.options("/api/health", headers={**origin, "access-control-request-method": "GET"})
    assert preflight.status_code != 200
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-methods" not in preflight.headers


def test_cors__on_when_origins_configured(make_app: AppFactory) -> None:
    app = make_app(cors_origins=["https://app.example"])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        preflight = test_client.options(
            "/api/auth/refresh",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        simple = test_client.get("/api/health", headers={"origin": "https://app.example"})
        other = test_client.get("/api/health", headers={"origin": "https://evil.example"})
        other_preflight = test_client.options(
            "/api/health", headers={"origin": "https://evil.example", "access-control-request-method": "GET"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert simple.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
    assert other_preflight.headers.get("access-control-allow-origin") != "https://evil.example"
    assert "access-control-allow-credentials" not in simple.headers


# --- OpenAPI ----------------------------------------------------------------------------------------


def test_openapi__served_with_security_schemes(client: TestClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["title"] == "FinSecure Nexus"
    schemes = spec["components"]["securitySchemes"]
    by_type = {s["type"]: s for s in schemes.values()}
    assert by_type["oauth2"]["flows"]["password"]["tokenUrl"] == "/api/auth/token"
    assert by_type["apiKey"]["in"] == "header"
    assert by_type["apiKey"]["name"] == "X-API-Key"
    assert "/api/health" in spec["paths"]
    assert "/api/auth/token" in spec["paths"]
    # Protected operations declare their security requirement.
    assert spec["paths"]["/api/users"]["get"]["security"]


def test_openapi__docs_served_and_old_paths_absent(client: TestClient) -> None:
    assert client.get("/api/docs").status_code == 200
    assert_error(client.get("/openapi.json"), 404, "not_found")
    assert_error(client.get("/redoc"), 404, "not_found")


# --- hostile input never answers 500 ----------------------------------------------------------------


HOSTILE_QUERIES = [
    "?page=" + "1" * 31,
    "?page=0",
    "?page=-1",
    "?page=1e3",
    "?page=abc",
    "?size=0",
    "?size=100000",
    "?size=" + "9" * 40,
    "?page=%00",
    "?size=1&size=2&size=x",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_hostile_input__paging_queries_are_422(
    client: TestClient, auth_headers: Callable[[Role], dict[str, str]], query: str
) -> None:
    headers = auth_headers(Role.admin)
    for path in ("/api/users", "/api/apikeys", "/api/audit"):
        response = client.get(path + query, headers=headers)
        error = assert_error(response, 422, "validation_error")
        assert error["details"][0]["location"][0] == "query"


@pytest.mark.parametrize(
    "query",
    [
        "?actor_user_id=" + "9" * 30,
        "?actor_user_id=-5",
        "?since=not-a-date",
        "?since=9999-99-99",
        "?action=" + "a" * 500,
        "?target_id=%00",
        "?since=2026-01-01T00:00:00",
        "?until=2026-01-01T00:00:00%2B05:30",
    ],
)
def test_hostile_input__audit_filters_never_500(
    client: TestClient,
    auth_headers: Callable[[Role], dict[str, str]],
    query: str,
) -> None:
    response = client.get("/api/audit" + query, headers=auth_headers(Role.admin))
    assert response.status_code in (200, 400, 422), response.text
    assert response.json()


@pytest.mark.parametrize("user_id", ["abc", "1.5", "-1", "0", "9" * 30, "%00", "1%20OR%201=1", "99999999999"])
@pytest.mark.parametrize(
    ("method", "template"),
    [("GET", "/api/users/{}"), ("PATCH", "/api/users/{}"), ("DELETE", "/api/apikeys/{}")],
)
def test_hostile_input__path_ids_never_500(
    client: TestClient,
    auth_headers: Callable[[Role], dict[str, str]],
    request: pytest.FixtureRequest,
    db_engine: Engine,
    method: str,
    template: str,
    user_id: str,
) -> None:
    body = {"full_name": "x"} if method == "PATCH" else None
    response = client.request(method, template.format(user_id), json=body, headers=auth_headers(Role.admin))
    assert response.status_code in (400, 404, 422), response.text
    assert "error" in response.json()


def test_hostile_input__non_numeric_path_id_is_422(
    client: TestClient, auth_headers: Callable[[Role], dict[str, str]]
) -> None:
    response = client.get("/api/users/abc", headers=auth_headers(Role.admin))
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["location"] == ["path", "user_id"]


@pytest.mark.parametrize(
    "username",
    [
        "ad\x00min",
        "\x00",
        "ünïcødé-用户",
        "😀" * 16,
        "a" * 65,
        "ü" * 64,
        "' OR '1'='1' --",
        "admin\r\nX-Injected: 1",
        " ",
        "\u202eevil",
    ],
    ids=[
        "nul-inside",
        "nul-only",
        "unicode",
        "emoji",
        "too-long",
        "unicode-64",
        "sql",
        "crlf",
        "blank",
        "rtl-override",
    ],
)
def test_hostile_input__sign_in_usernames_never_500(client: TestClient, username: str) -> None:
    response = client.post("/api/auth/token", data={"username": username, "password": "wrong-password-123"})
    assert response.status_code in (400, 401, 422), response.text
    assert "error" in response.json()


def test_hostile_input__sign_in_invalid_utf8_never_500(client: TestClient) -> None:
    response = client.post(
        "/api/auth/token",
        content=b"username=%FF%FE%00&password=%C3%28",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code in (400, 401, 422), response.text
    assert "error" in response.json()


def test_hostile_input__nul_in_json_text_is_422(
    client: TestClient, auth_headers: Callable[[Role], dict[str, str]]
) -> None:
    headers = auth_headers(Role.admin)
    response = client.post(
        "/api/users", json={"username": "nul_name", "full_name": "a\u0000b"}, headers=headers
    )
    error = assert_error(response, 422, "validation_error")
    assert [d["location"] for d in error["details"]] == [["body", "full_name"]]
    response = client.post("/api/apikeys", json={"name": "key\u0000", "scopes": ["read"]}, headers=headers)
    error = assert_error(response, 422, "validation_error")
    assert [d["location"] for d in error["details"]] == [["body", "name"]]
    response = client.post("/api/auth/refresh", json={"refresh_token": "\u0000"})
    assert_error(response, 422, "validation_error")
    # The same requests without the NUL go through.
    response = client.post("/api/users", json={"username": "nul_name", "full_name": "ab"}, headers=headers)
    assert response.status_code == 201, response.text


def test_hostile_input__sign_in_nul_in_password_never_500(client: TestClient) -> None:
    response = client.post("/api/auth/token", data={"username": "nobody", "password": "pass\x00word-123"})
    assert response.status_code in (400, 401, 422), response.text


def test_hostile_input__bearer_garbage_is_401(client: TestClient) -> None:
    for value in (
        "Bearer ",
        "Bearer \x7f",
        "Bearer " + "a" * 10_000,
        "Basic YWRtaW46YWRtaW4=",
        "Bearer a.b.c",
    ):
        response = client.get("/api/auth/me", headers={"authorization": value})
        assert response.status_code == 401, (value[:20], response.text)
        assert "error" in response.json()


def test_hostile_input__api_key_garbage_is_401(client: TestClient) -> None:
    for value in ("x", "fsk_" + "z" * 12 + "_" + "a" * 40, "fsk_" + "0" * 12 + "_" + "a" * 5000):
        response = client.get("/api/auth/key", headers={"x-api-key": value})
        assert response.status_code == 401, response.text
        assert "error" in response.json()
