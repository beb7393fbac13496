"""Who may call what: one expected status per route of the API and per kind of caller.

Every ``/api`` route must have a row in :data:`MATRIX`, and every row must name a route that exists:
adding a route without deciding who may call it fails :func:`test_matrix__covers_every_route`.
Each row also says how to build a request that *succeeds* for an allowed caller, so that a refusal
can only come from access control and never from a bad body or an unknown id.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Any

import polars as pl
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
    ("POST", "/api/incidents/bulk"):         (401,    403,   200,    200,  401),
    ("GET", "/api/incidents/{incident_id}/notes"): (401, 200, 200,   200,  401),
    ("POST", "/api/incidents/{incident_id}/notes"): (401, 403, 201,  201,  401),
    ("POST", "/api/incidents/{incident_id}/merge"): (401, 403, 200,  200,  401),
    ("POST", "/api/incidents/{incident_id}/split"): (401, 403, 201,  201,  401),
    ("GET", "/api/incidents/{incident_id}/timeline"): (401, 200, 200, 200, 401),
    ("GET", "/api/incidents/{incident_id}/export"): (401, 200, 200,  200,  401),
    ("GET", "/api/labels"):                  (401,    200,   200,    200,  401),
    ("GET", "/api/suppressions"):            (401,    403,   200,    200,  401),
    ("POST", "/api/suppressions"):           (401,    403,   201,    201,  401),
    ("GET", "/api/suppressions/suggestions"): (401,   403,   200,    200,  401),
    ("DELETE", "/api/suppressions/{suppression_id}"): (401, 403, 200, 200, 401),
    ("GET", "/api/alerts/{alert_id}/explanation"): (401, 200, 200,   200,  401),
    ("GET", "/api/actions"):                 (401,    200,   200,    200,  401),
    ("POST", "/api/actions"):                (401,    403,   201,    201,  401),
    ("GET", "/api/actions/{action_id}"):     (401,    200,   200,    200,  401),
    ("POST", "/api/actions/{action_id}/approve"): (401, 403, 200,    200,  401),
    ("POST", "/api/actions/{action_id}/cancel"): (401, 403,  200,    200,  401),
    ("GET", "/api/blocklist"):               (401,    200,   200,    200,  401),
    ("POST", "/api/blocklist"):              (401,    403,   201,    201,  401),
    ("DELETE", "/api/blocklist/{entry_id}"): (401,    403,   200,    200,  401),
    ("GET", "/api/enforcement/blocklist"):   (401,    401,   401,    401,  200),
    ("GET", "/api/playbooks"):               (401,    200,   200,    200,  401),
    ("POST", "/api/playbooks/reload"):       (401,    403,   403,    200,  401),
    ("GET", "/api/overview"):                (401,    200,   200,    200,  401),
    ("GET", "/api/map/points"):              (401,    200,   200,    200,  401),
    ("GET", "/api/graph/entity/{entity_type}/{entity_id}"): (401, 200, 200, 200, 401),
    ("GET", "/api/graph/communities"):       (401,    200,   200,    200,  401),
    ("GET", "/api/graph/path"):              (401,    200,   200,    200,  401),
    ("GET", "/api/rules"):                   (401,    200,   200,    200,  401),
    ("GET", "/api/rules/{rule_id}"):         (401,    200,   200,    200,  401),
    ("PATCH", "/api/rules/{rule_id}"):       (401,    403,   403,    200,  401),
    ("POST", "/api/rules/{rule_id}/test"):   (401,    403,   200,    200,  401),
    ("POST", "/api/rules/{rule_id}/backtest"): (401,  403,   200,    200,  401),
    ("GET", "/api/models"):                  (401,    200,   200,    200,  401),
    ("POST", "/api/models/{name}/{version}/promote"): (401, 403, 403, 200, 401),
    ("POST", "/api/models/{name}/rollback"): (401,    403,   403,    200,  401),
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


def _fresh_suppression_id(env: Env) -> int:
    from finsecure.alert import suppression as suppression_service
    from finsecure.alert.schemas import SuppressionCreate

    body = SuppressionCreate(rule_id=f"matrix-{next(env.names)}", reason="matrix suppression")
    return suppression_service.create(
        db_session=env.db_session, suppression_in=body, actor=Actor(label="t")
    ).id


def _incident_with_two_alerts(env: Env) -> tuple[int, int]:
    """An incident and the id of its second alert (which a split can move out)."""
    incident_id = env.fresh_incident_id()
    alert_id = env.fresh_alert_id()
    env.db_session.add(IncidentAlert(incident_id=incident_id, alert_id=alert_id))
    env.db_session.commit()
    return incident_id, alert_id


def _fresh_action_id(env: Env) -> int:
    """An action waiting for approval (so that approve and cancel both succeed on it)."""
    from finsecure.response import service as action_service

    action, _ = action_service.request_action(
        db_session=env.db_session, key=f"matrix-{next(env.names)}", action_type="block", target_type="entity",
        target_id="card_id:matrix", params={"entity_type": "card_id", "entity_id": "matrix", "dry_run": True},
        actor=Actor(label="t"), needs_approval=True,
    )  # fmt: skip
    env.db_session.commit()
    return action.id


def _fresh_block_id(env: Env) -> int:
    from finsecure.response import blocklist

    entry = blocklist.block(
        db_session=env.db_session, entity_type="card_id", entity_id=f"matrix-{next(env.names)}",
        reason="matrix", ttl=None, actor=Actor(label="t"),
    )  # fmt: skip
    env.db_session.commit()
    return entry.id


def _split(env: Env) -> Request:
    incident_id, alert_id = _incident_with_two_alerts(env)
    return Request(f"/api/incidents/{incident_id}/split", {"json": {"alert_ids": [alert_id]}})


def _graph_entities(env: Env) -> tuple[str, str]:
    """Two linked cards in the running platform's entity graph (a card shared one terminal with another)."""
    n = next(env.names)
    cards = (f"card-{n}a", f"card-{n}b")
    graph = env.client.app.state.context.platform.graph  # type: ignore[attr-defined]
    graph.update(
        "payment",
        pl.DataFrame(
            {"ts": [dt.datetime.now(dt.UTC)] * 2, "card_id": list(cards), "terminal_id": [f"term-{n}"] * 2}
        ),
    )
    return cards


def _graph_path(env: Env) -> Request:
    first, second = _graph_entities(env)
    return Request("/api/graph/path", {"params": {"from": f"card_id:{first}", "to": f"card_id:{second}"}})


def _shipped_rule_id() -> str:
    from finsecure.platform import default_rules

    return next(rule.id for rule in default_rules() if rule.samples_positive and rule.kind == "match")


@functools.lru_cache(maxsize=1)
def _tiny_tier() -> Any:
    """A fast tier fitted on a few hundred payments (once per test session), to register and promote."""
    from finsecure.ml.train import fit_tier
    from tests.ml.conftest import SMALL, featured_payments

    train, validation = featured_payments(600, 1), featured_payments(300, 2)
    return fit_tier(train, validation, "payment", kinds=("iforest",), params=SMALL)


def _registered_model(env: Env, versions: int, promote: int) -> str:
    """A model with ``versions`` versions, the first ``promote`` of them promoted in turn; its name."""
    from finsecure.ml import registry

    tier, name = _tiny_tier(), f"matrix_model_{next(env.names)}"
    data_dir = env.client.app.state.context.settings.data_dir  # type: ignore[attr-defined]
    for number in range(1, versions + 1):
        registry.register(
            db_session=env.db_session, data_dir=data_dir, name=name, model=tier.members["iforest"],
            design=tier.design, data_fingerprint=tier.fingerprint, metrics={}, threshold=0.5,
            dataset="matrix",
        )  # fmt: skip
        if number <= promote:
            registry.promote(db_session=env.db_session, name=name, version=number)
    env.db_session.commit()
    return name


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
    ("GET", "/api/incidents"): lambda env, c: Request("/api/incidents", {"params": {"status": "new"}}),
    ("GET", "/api/incidents/{incident_id}"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}"
    ),
    ("PATCH", "/api/incidents/{incident_id}"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}", {"json": {"status": "investigating"}}
    ),
    ("POST", "/api/incidents/bulk"): lambda env, c: Request(
        "/api/incidents/bulk", {"json": {"incident_ids": [env.fresh_incident_id()], "status": "triaged"}}
    ),
    ("GET", "/api/incidents/{incident_id}/notes"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}/notes"
    ),
    ("POST", "/api/incidents/{incident_id}/notes"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}/notes", {"json": {"text": "matrix note"}}
    ),
    ("POST", "/api/incidents/{incident_id}/merge"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}/merge",
        {"json": {"incident_ids": [env.fresh_incident_id()]}},
    ),
    ("POST", "/api/incidents/{incident_id}/split"): lambda env, c: _split(env),
    ("GET", "/api/incidents/{incident_id}/timeline"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}/timeline"
    ),
    ("GET", "/api/incidents/{incident_id}/export"): lambda env, c: Request(
        f"/api/incidents/{env.fresh_incident_id()}/export"
    ),
    ("GET", "/api/labels"): lambda env, c: Request("/api/labels", {"params": {"size": 10}}),
    ("GET", "/api/suppressions"): lambda env, c: Request("/api/suppressions"),
    ("POST", "/api/suppressions"): lambda env, c: Request(
        "/api/suppressions", {"json": {"rule_id": "matrix", "reason": "matrix suppression"}}
    ),
    ("GET", "/api/suppressions/suggestions"): lambda env, c: Request("/api/suppressions/suggestions"),
    ("DELETE", "/api/suppressions/{suppression_id}"): lambda env, c: Request(
        f"/api/suppressions/{_fresh_suppression_id(env)}"
    ),
    ("GET", "/api/alerts/{alert_id}/explanation"): lambda env, c: Request(
        f"/api/alerts/{env.fresh_alert_id()}/explanation"
    ),
    ("GET", "/api/actions"): lambda env, c: Request("/api/actions", {"params": {"status": "pending"}}),
    ("POST", "/api/actions"): lambda env, c: Request(
        "/api/actions",
        {"json": {"action_type": "block", "entity_type": "card_id", "entity_id": "matrix", "dry_run": True}},
    ),
    ("GET", "/api/actions/{action_id}"): lambda env, c: Request(f"/api/actions/{_fresh_action_id(env)}"),
    ("POST", "/api/actions/{action_id}/approve"): lambda env, c: Request(
        f"/api/actions/{_fresh_action_id(env)}/approve"
    ),
    ("POST", "/api/actions/{action_id}/cancel"): lambda env, c: Request(
        f"/api/actions/{_fresh_action_id(env)}/cancel"
    ),
    ("GET", "/api/blocklist"): lambda env, c: Request(
        "/api/blocklist", {"params": {"entity_type": "card_id"}}
    ),
    ("POST", "/api/blocklist"): lambda env, c: Request(
        "/api/blocklist",
        {"json": {"entity_type": "card_id", "entity_id": f"matrix-{c.kind}", "reason": "matrix block"}},
    ),
    ("DELETE", "/api/blocklist/{entry_id}"): lambda env, c: Request(f"/api/blocklist/{_fresh_block_id(env)}"),
    ("GET", "/api/enforcement/blocklist"): lambda env, c: Request("/api/enforcement/blocklist"),
    ("GET", "/api/playbooks"): lambda env, c: Request("/api/playbooks"),
    ("POST", "/api/playbooks/reload"): lambda env, c: Request("/api/playbooks/reload"),
    ("GET", "/api/overview"): lambda env, c: Request("/api/overview"),
    ("GET", "/api/map/points"): lambda env, c: Request("/api/map/points", {"params": {"limit": 10}}),
    ("GET", "/api/graph/entity/{entity_type}/{entity_id}"): lambda env, c: Request(
        f"/api/graph/entity/card_id/{_graph_entities(env)[0]}", {"params": {"hops": 2}}
    ),
    ("GET", "/api/graph/communities"): lambda env, c: Request(
        "/api/graph/communities", {"params": {"min_risk": 0}}
    ),
    ("GET", "/api/graph/path"): lambda env, c: _graph_path(env),
    ("GET", "/api/rules"): lambda env, c: Request("/api/rules", {"params": {"domain": "payment"}}),
    ("GET", "/api/rules/{rule_id}"): lambda env, c: Request(f"/api/rules/{_shipped_rule_id()}"),
    ("PATCH", "/api/rules/{rule_id}"): lambda env, c: Request(
        f"/api/rules/{_shipped_rule_id()}", {"json": {"enabled": True}}
    ),
    ("POST", "/api/rules/{rule_id}/test"): lambda env, c: Request(f"/api/rules/{_shipped_rule_id()}/test"),
    ("POST", "/api/rules/{rule_id}/backtest"): lambda env, c: Request(
        f"/api/rules/{_shipped_rule_id()}/backtest",
        {"json": {"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T06:00:00Z"}},
    ),
    ("GET", "/api/models"): lambda env, c: Request("/api/models"),
    ("POST", "/api/models/{name}/{version}/promote"): lambda env, c: Request(
        f"/api/models/{_registered_model(env, 1, 0)}/1/promote"
    ),
    ("POST", "/api/models/{name}/rollback"): lambda env, c: Request(
        f"/api/models/{_registered_model(env, 2, 2)}/rollback"
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
        # the test's own transaction holds SQLite's write lock until it rolls back: persisting the graph
        # at stop would only wait out the busy timeout (the graph's persistence has its own tests)
        platform.graph_sink.session_factory = None
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
