"""Who may call what: one expected status per route of the API and per kind of caller.

Every ``/api`` route must have a row in :data:`MATRIX`, and every row must name a route that exists:
adding a route without deciding who may call it fails :func:`test_matrix__covers_every_route`.
Each row also says how to build a request that *succeeds* for an allowed caller, so that a refusal
can only come from access control and never from a bad body or an unknown id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from starlette.routing import BaseRoute

from finsecure.alert.models import Alert
from finsecure.api import create_app
from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import Role, User
from finsecure.auth.schemas import ApiKeyCreate, Scope
from finsecure.core.deps import AppContext, get_db
from finsecure.core.enums import Severity
from finsecure.incident.models import Incident, IncidentAlert
from finsecure.platform import Platform
from tests.conftest import TEST_PASSWORD, login, make_settings

ANONYMOUS, VIEWER, ANALYST, ADMIN, API_KEY = "anonymous", "viewer", "analyst", "admin", "api_key"
#: The kinds of caller, in the order of the columns of MATRIX.
CALLERS = (ANONYMOUS, VIEWER, ANALYST, ADMIN, API_KEY)

#: (method, path template) -> expected status for (no credentials, viewer, analyst, admin, valid API key).
#: People use bearer tokens; an API key (all scopes) is a machine and is no substitute for a person.
MATRIX: dict[tuple[str, str], tuple[int, int, int, int, int]] = {
    #                                      anonymous viewer analyst admin api_key
    ("GET", "/api/health"):                  (200,    200,   200,    200,  200),
    ("POST", "/api/auth/token"):             (200,    200,   200,    200,  200),
    ("POST", "/api/auth/refresh"):           (200,    200,   200,    200,  200),
    ("POST", "/api/auth/logout"):            (401,    204,   204,    204,  401),
    ("GET", "/api/auth/me"):                 (401,    200,   200,    200,  401),
    ("POST", "/api/auth/password"):          (401,    204,   204,    204,  401),
    ("GET", "/api/auth/key"):                (401,    401,   401,    401,  200),
    ("GET", "/api/users"):                   (401,    403,   403,    200,  401),
    ("POST", "/api/users"):                  (401,    403,   403,    201,  401),
    ("GET", "/api/users/{user_id}"):         (401,    403,   403,    200,  401),
    ("PATCH", "/api/users/{user_id}"):       (401,    403,   403,    200,  401),
    ("GET", "/api/apikeys"):                 (401,    403,   403,    200,  401),
    ("POST", "/api/apikeys"):                (401,    403,   403,    201,  401),
    ("DELETE", "/api/apikeys/{api_key_id}"): (401,    403,   403,    200,  401),
    ("GET", "/api/audit"):                   (401,    403,   403,    200,  401),
    ("GET", "/api/events/search"):           (401,    200,   200,    200,  401),
    ("POST", "/api/ingest/{domain}"):        (401,    401,   401,    401,  200),
    ("GET", "/api/alerts"):                  (401,    200,   200,    200,  401),
    ("GET", "/api/alerts/{alert_id}"):       (401,    200,   200,    200,  401),
    ("PATCH", "/api/alerts/{alert_id}"):     (401,    403,   200,    200,  401),
    ("GET", "/api/incidents"):               (401,    200,   200,    200,  401),
    ("GET", "/api/incidents/{incident_id}"): (401,    200,   200,    200,  401),
    ("PATCH", "/api/incidents/{incident_id}"): (401,  403,   200,    200,  401),
}  # fmt: skip


def _flat_routes(app: FastAPI) -> list[tuple[BaseRoute, str, set[str]]]:
    """(route, full path, methods) of every route, looking inside included routers."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI keeps included routers as a tree
    except ImportError:  # pragma: no cover - older FastAPI copies included routes onto the app
        return [(r, getattr(r, "path", ""), set(getattr(r, "methods", None) or ())) for r in app.routes]
    return [(c.original_route, c.path or "", set(c.methods or ())) for c in iter_route_contexts(app.routes)]


def collect_operations(app: FastAPI) -> dict[tuple[str, str], APIRoute]:
    """(method, path template) -> route, for every API route of ``app``.

    The OpenAPI document and the docs page are not API routes; anything else under ``/api`` that is
    not an :class:`APIRoute` (a mount, a plain Starlette route) fails here, as it would escape the matrix.
    """
    operations: dict[tuple[str, str], APIRoute] = {}
    for route, path, methods in _flat_routes(app):
        if not path.startswith("/api"):
            continue
        if isinstance(route, APIRoute):
            for method in methods:
                operations[method, path] = route
        else:
            assert path in {app.openapi_url, app.docs_url}, f"{path} is under /api but not an APIRoute"
    return operations


@pytest.fixture(scope="module")
def api_operations() -> Iterator[dict[tuple[str, str], APIRoute]]:
    app = create_app(make_settings())
    try:
        yield collect_operations(app)
    finally:
        app.state.context.engine.dispose()


def test_collect_operations__sees_a_newly_added_route() -> None:
    app = create_app(make_settings())
    try:
        router = APIRouter(prefix="/newthing")
        router.add_api_route("/{thing_id}", lambda thing_id: {}, methods=["PUT"])
        app.include_router(router, prefix="/api")
        assert ("PUT", "/api/newthing/{thing_id}") in collect_operations(app).keys() - MATRIX.keys()
    finally:
        app.state.context.engine.dispose()


def test_matrix__covers_every_route(api_operations: dict[tuple[str, str], APIRoute]) -> None:
    assert ("GET", "/api/health") in api_operations  # the route walk itself works
    missing = sorted(api_operations.keys() - MATRIX.keys())
    stale = sorted(MATRIX.keys() - api_operations.keys())
    assert not missing, f"routes without an access-control row in MATRIX: {missing}"
    assert not stale, f"MATRIX rows for routes that no longer exist: {stale}"
    assert MATRIX.keys() == REQUESTS.keys()


def test_matrix__success_codes_match_the_routes(api_operations: dict[tuple[str, str], APIRoute]) -> None:
    assert api_operations
    for (method, path), route in api_operations.items():
        successes = {s for s in MATRIX[method, path] if s < 300}
        assert successes == {route.status_code or 200}, (method, path)


def test_matrix__no_credentials_never_succeed_on_protected_routes() -> None:
    # a sanity check of the table itself: whatever refuses a viewer also refuses a stranger
    for key, row in MATRIX.items():
        anonymous, viewer = row[0], row[1]
        if viewer >= 400:
            assert anonymous >= 400, key


# --- callers and requests --------------------------------------------------------------------------


@dataclass
class Caller:
    """A kind of caller: its headers, and for a person the user and their tokens."""

    kind: str
    headers: dict[str, str] = field(default_factory=dict)
    user: User | None = None
    tokens: dict[str, str] | None = None


@dataclass
class Env:
    client: TestClient
    db_session: Session
    make_user: Callable[..., User]
    names: Any = field(default_factory=lambda: count(1))

    def fresh_user(self, role: Role = Role.viewer) -> User:
        return self.make_user(role, username=f"throwaway{next(self.names)}")

    def fresh_tokens(self) -> dict[str, str]:
        """A signed-in session of a fresh user, for callers that have none of their own."""
        return login(self.client, self.fresh_user().username)

    def fresh_alert_id(self) -> int:
        now = dt.datetime.now(dt.UTC)
        alert = Alert(
            alert_key=f"matrix-{next(self.names)}", rule_id="matrix", title="Matrix alert",
            severity=Severity.high, domain="payment", entity_type="card_id", entity_id="card-matrix",
            event_ids=["e1"], explanation={"text": "matrix"}, first_seen=now, last_seen=now,
        )  # fmt: skip
        self.db_session.add(alert)
        self.db_session.commit()
        return alert.id

    def fresh_incident_id(self) -> int:
        now = dt.datetime.now(dt.UTC)
        incident = Incident(
            title="Matrix incident", severity=Severity.high, domains=["payment"], labels=[], evidence={},
            first_seen=now, last_seen=now,
        )  # fmt: skip
        self.db_session.add(incident)
        self.db_session.flush()
        self.db_session.add(IncidentAlert(incident_id=incident.id, alert_id=self.fresh_alert_id()))
        self.db_session.commit()
        return incident.id

    def fresh_api_key_id(self) -> int:
        api_key, _ = auth_service.create_api_key(
            db_session=self.db_session,
            key_in=ApiKeyCreate(name="throwaway", scopes=[Scope.read]),
            owner_id=None,
            actor=Actor(label="test"),
        )
        return api_key.id


@dataclass
class Request:
    url: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _sign_in(env: Env, caller: Caller) -> Request:
    username = caller.user.username if caller.user else env.fresh_user().username
    return Request("/api/auth/token", {"data": {"username": username, "password": TEST_PASSWORD}})


def _own_refresh_token(env: Env, caller: Caller) -> dict[str, Any]:
    tokens = caller.tokens or env.fresh_tokens()
    return {"json": {"refresh_token": tokens["refresh_token"]}}


#: How to build a request that an allowed caller gets the success code for.
REQUESTS: dict[tuple[str, str], Callable[[Env, Caller], Request]] = {
    ("GET", "/api/health"): lambda env, c: Request("/api/health"),
    ("POST", "/api/auth/token"): _sign_in,
    ("POST", "/api/auth/refresh"): lambda env, c: Request("/api/auth/refresh", _own_refresh_token(env, c)),
    ("POST", "/api/auth/logout"): lambda env, c: Request("/api/auth/logout", _own_refresh_token(env, c)),
    ("GET", "/api/auth/me"): lambda env, c: Request("/api/auth/me"),
    ("POST", "/api/auth/password"): lambda env, c: Request(
        "/api/auth/password",
        {"json": {"current_password": TEST_PASSWORD, "new_password": "a-different-long-password"}},
    ),
    ("GET", "/api/auth/key"): lambda env, c: Request("/api/auth/key"),
    ("GET", "/api/users"): lambda env, c: Request("/api/users", {"params": {"page": 1, "size": 10}}),
    ("POST", "/api/users"): lambda env, c: Request(
        "/api/users", {"json": {"username": f"created-by-{c.kind}", "password": "a-long-enough-password"}}
    ),
    ("GET", "/api/users/{user_id}"): lambda env, c: Request(f"/api/users/{env.fresh_user().id}"),
    ("PATCH", "/api/users/{user_id}"): lambda env, c: Request(
        f"/api/users/{env.fresh_user().id}", {"json": {"full_name": "Changed", "role": "analyst"}}
    ),
    ("GET", "/api/apikeys"): lambda env, c: Request("/api/apikeys"),
    ("POST", "/api/apikeys"): lambda env, c: Request(
        "/api/apikeys", {"json": {"name": "k", "scopes": ["read"]}}
    ),
    ("DELETE", "/api/apikeys/{api_key_id}"): lambda env, c: Request(f"/api/apikeys/{env.fresh_api_key_id()}"),
    ("GET", "/api/audit"): lambda env, c: Request("/api/audit", {"params": {"action": "user.create"}}),
    ("GET", "/api/events/search"): lambda env, c: Request(
        "/api/events/search", {"params": {"domain": "payment"}}
    ),
    ("POST", "/api/ingest/{domain}"): lambda env, c: Request(
        "/api/ingest/auth",
        {
            "content": b'{"event_id": "m1", "ts": "2026-11-24T10:00:00Z", "source": "matrix"}',
            "headers": {"Content-Type": "application/x-ndjson"},
        },
    ),
    ("GET", "/api/alerts"): lambda env, c: Request("/api/alerts", {"params": {"severity": "high"}}),
    ("GET", "/api/alerts/{alert_id}"): lambda env, c: Request(f"/api/alerts/{env.fresh_alert_id()}"),
    ("PATCH", "/api/alerts/{alert_id}"): lambda env, c: Request(
        f"/api/alerts/{env.fresh_alert_id()}", {"json": {"status": "acknowledged"}}
    ),
    ("GET", "/api/incidents"): lambda env, c: Request("/api/incidents", {"params": {"status": "open"}}),
    ("GET", "/api/incidents/{incident_id}"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}"
    ),
    ("PATCH", "/api/incidents/{incident_id}"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}", {"json": {"status": "investigating"}}
    ),
}


def make_caller(kind: str, env: Env) -> Caller:
    if kind == ANONYMOUS:
        return Caller(kind)
    if kind == API_KEY:
        _, raw = auth_service.create_api_key(
            db_session=env.db_session,
            key_in=ApiKeyCreate(name="matrix", scopes=list(Scope)),
            owner_id=None,
            actor=Actor(label="test"),
        )
        return Caller(kind, headers={"X-API-Key": raw})
    user = env.make_user(Role(kind), username=f"matrix-{kind}")
    tokens = login(env.client, user.username)
    return Caller(
        kind, headers={"Authorization": f"Bearer {tokens['access_token']}"}, user=user, tokens=tokens
    )


CASES = [
    pytest.param(method, path, kind, expected[i], id=f"{method} {path} {kind}")
    for (method, path), expected in MATRIX.items()
    for i, kind in enumerate(CALLERS)
]


@pytest.fixture
def app(context: AppContext, db_session: Session, tmp_path: Path) -> Iterator[FastAPI]:
    """The usual test app plus a running pipeline (no steps, lake in a temp dir) so ingestion can succeed."""
    settings = context.settings.model_copy(update={"data_dir": tmp_path, "demo_stream": False})
    platform = Platform(settings, context.session_factory, steps=[]).start()
    application = create_app(context=replace(context, settings=settings, platform=platform))
    application.dependency_overrides[get_db] = lambda: db_session
    try:
        yield application
    finally:
        platform.stop()


@pytest.mark.parametrize(("method", "path", "kind", "expected"), CASES)
def test_route_access(
    client: TestClient,
    db_session: Session,
    make_user: Callable[..., User],
    method: str,
    path: str,
    kind: str,
    expected: int,
) -> None:
    env = Env(client=client, db_session=db_session, make_user=make_user)
    caller = make_caller(kind, env)
    request = REQUESTS[method, path](env, caller)
    headers = {**request.kwargs.pop("headers", {}), **caller.headers}
    response = client.request(method, request.url, headers=headers, **request.kwargs)

    assert response.status_code == expected, response.text
    if expected >= 400:
        body = response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "details"}
        # no credentials for the scheme the route needs -> 401; the wrong role -> 403
        assert body["error"]["code"] == {401: "unauthorized", 403: "role_required"}[expected]
        if expected == 401:
            assert response.headers["WWW-Authenticate"] in {"Bearer", "ApiKey"}
    elif expected == 204:
        assert response.content == b""
    else:
        assert isinstance(response.json(), dict)
