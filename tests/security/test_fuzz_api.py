"""Schemathesis against the app's own OpenAPI document, once per kind of caller and database backend.

For every operation and every caller (nobody, viewer, analyst, admin, an API key with every scope):
no 5xx, status codes / content types / bodies as documented, invalid input refused with a 4xx, and every
error body shaped ``{"error": {"code", "message", "details"}}``.

Bounded and repeatable: ``max_examples`` per operation and caller (``FINSECURE_FUZZ_EXAMPLES``, default
15), derandomised, no example database. ``FINSECURE_FUZZ_CASES=10000`` instead sets a total, spread evenly
over operations x callers x databases (``make fuzz``). With ``FINSECURE_FUZZ_REPORT=<path>`` the run writes
how many cases it sent and what came back (a flat JSON object).

Why no example can lock the fuzzer out: each test (operation x caller) signs in as its own fresh caller
(a new user signed in through the service, so the sign-in throttle never interferes, or a new API key),
and every example of an operation that can take access away (PATCH a user, DELETE a key, change the
password, sign out: :data:`DESTRUCTIVE`) runs as a *brand-new* caller made in the example itself.
Whatever such an example does to its own account, the next example starts from scratch. Operations on
``{user_id}`` / ``{api_key_id}`` also aim, half of the time, at a real row made for the example (a
"victim"), so updates and revocations really run instead of always answering 404.

The app runs with committing sessions on a throwaway database per backend (not the rolled-back test
transaction): the running pipeline writes dead letters on its own connection, which SQLite would block.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import math
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from finsecure.api import build_context, create_app
from finsecure.audit.service import Actor
from finsecure.auth import service as auth_service
from finsecure.auth.models import Role
from finsecure.auth.schemas import ApiKeyCreate, Scope, UserCreate
from finsecure.core import migrate
from finsecure.core.database import create_db_engine
from finsecure.core.deps import AppContext
from finsecure.platform import Platform
from tests.conftest import BACKENDS, TEST_PASSWORD, TempPostgres, make_settings

NOBODY, VIEWER, ANALYST, ADMIN, API_KEY = "nobody", "viewer", "analyst", "admin", "api_key"
CALLERS = (NOBODY, VIEWER, ANALYST, ADMIN, API_KEY)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
#: Operations that can take away their caller's access (disable/demote a user, revoke a key, change the
#: password, sign out): every example of these runs as a brand-new caller.
DESTRUCTIVE = {
    ("PATCH", "/api/users/{user_id}"),
    ("DELETE", "/api/apikeys/{api_key_id}"),
    ("POST", "/api/auth/password"),
    ("POST", "/api/auth/logout"),
}
#: Path parameters that name a row, and how to make a row for them.
VICTIM_PARAMS = {"user_id": "user", "api_key_id": "api_key"}


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every operation in the OpenAPI document, read once at collection."""
    app = create_app(make_settings())
    try:
        paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    finally:
        app.state.context.engine.dispose()
    return [(method.upper(), path) for path, item in paths.items() for method in item]


OPERATIONS = _operations()


def _max_examples() -> int:
    """Examples per test: ``FINSECURE_FUZZ_CASES`` spread over all tests, else ``FINSECURE_FUZZ_EXAMPLES``."""
    total = os.environ.get("FINSECURE_FUZZ_CASES")
    if total:
        return max(1, math.ceil(int(total) / (len(OPERATIONS) * len(CALLERS) * len(BACKENDS))))
    return int(os.environ.get("FINSECURE_FUZZ_EXAMPLES", "15"))


MAX_EXAMPLES = _max_examples()
#: What the run sent and got back, per backend and status ("sqlite 200", "pg 422"...), for the report.
SENT: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def fuzz_report() -> Iterator[None]:
    """With ``FINSECURE_FUZZ_REPORT``, write what the whole run sent and got back once it ends."""
    yield
    path = os.environ.get("FINSECURE_FUZZ_REPORT")
    if not path:
        return
    by_status: collections.Counter[str] = collections.Counter()
    for key, n in SENT.items():
        by_status[key.split()[1]] += n
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "operations": len(OPERATIONS),
        "callers": len(CALLERS),
        "max_examples_per_test": MAX_EXAMPLES,
        "cases": sum(SENT.values()),
        **{
            f"cases_{backend}": sum(n for k, n in SENT.items() if k.startswith(f"{backend} "))
            for backend in ("sqlite", "pg")
        },
        "server_errors": sum(n for k, n in by_status.items() if k.startswith("5")),
        **{f"status_{code}": n for code, n in sorted(by_status.items())},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


@dataclass
class Target:
    """The app under fuzzing, its client, schema and database."""

    client: TestClient
    context: AppContext
    schema: Any  # schemathesis.specs.openapi.schemas.OpenApiSchema
    backend: str = "sqlite"

    def session(self) -> Session:
        return Session(self.context.engine, expire_on_commit=False)

    def new_user(self, role: Role) -> tuple[int, dict[str, str]]:
        """A fresh user of ``role`` and their bearer header, signed in through the service (no throttle)."""
        with self.session() as session:
            user, _ = auth_service.create(
                db_session=session,
                passwords=self.context.passwords,
                user_in=UserCreate(username=f"fz-{secrets.token_hex(6)}", password=TEST_PASSWORD, role=role),
                actor=Actor(label="fuzz"),
            )
            tokens = auth_service.issue_tokens(db_session=session, settings=self.context.settings, user=user)
            session.commit()
            return user.id, {"Authorization": f"Bearer {tokens.access_token}"}

    def new_api_key(self) -> tuple[int, dict[str, str]]:
        with self.session() as session:
            api_key, raw = auth_service.create_api_key(
                db_session=session,
                key_in=ApiKeyCreate(name="fuzz", scopes=list(Scope)),
                owner_id=None,
                actor=Actor(label="fuzz"),
            )
            session.commit()
            return api_key.id, {"X-API-Key": raw}

    def caller_headers(self, kind: str) -> dict[str, str]:
        if kind == NOBODY:
            return {}
        if kind == API_KEY:
            return self.new_api_key()[1]
        return self.new_user(Role(kind))[1]

    def victim(self, kind: str) -> int:
        return self.new_user(Role.admin)[0] if kind == "user" else self.new_api_key()[0]


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A migrated throwaway database per backend, with real commits."""
    pg: TempPostgres | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    else:
        pg = TempPostgres.create("finsecure_fuzz")
        url = pg.url
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        if pg is not None:
            pg.drop()


@pytest.fixture(scope="module")
def target(fuzz_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The app with a running pipeline (no steps, lake in a temp dir) so ingestion can succeed."""
    data_dir: Path = tmp_path_factory.mktemp("lake")
    settings_ = make_settings(
        database_url=fuzz_engine.url.render_as_string(hide_password=False),
        data_dir=data_dir,
        demo_stream=False,
    )
    base = build_context(settings_, engine=fuzz_engine)
    platform = Platform(settings_, base.session_factory, steps=[])
    context = build_context(settings_, engine=fuzz_engine, platform=platform)
    app = create_app(context=context)
    with TestClient(app, raise_server_exceptions=False) as client:
        schema = schemathesis.openapi.from_dict(client.get("/api/openapi.json").json())
        backend = "sqlite" if fuzz_engine.dialect.name == "sqlite" else "pg"
        yield Target(client=client, context=context, schema=schema, backend=backend)


def _send(client: TestClient, case: Any, headers: dict[str, str]) -> Any:
    """Send a schemathesis case through the app's own test client (one lifespan, one running pipeline)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    data = kwargs.pop("data", None)
    if isinstance(data, str | bytes):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    kwargs.pop("timeout", None)
    kwargs.pop("allow_redirects", None)
    cookies = kwargs.pop("cookies", None)
    if cookies:
        kwargs["headers"] = {
            **kwargs.get("headers", {}),
            "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        }
    return client.request(**kwargs)


def assert_error_shape(response: Any) -> None:
    """Every error answer carries the one error body."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str), body
    assert body["error"]["code"], body
    assert isinstance(body["error"]["message"], str), body
    assert body["error"]["message"], body


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz__operation_as_caller(target: Target, method: str, path: str, caller: str) -> None:
    operation = target.schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )
    victims = [name for name in VICTIM_PARAMS if f"{{{name}}}" in path]
    shared_headers = target.caller_headers(caller)

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, aim_at_real_row=st.booleans())
    def run(case: Any, aim_at_real_row: bool) -> None:
        headers = target.caller_headers(caller) if (method, path) in DESTRUCTIVE else shared_headers
        if aim_at_real_row and victims and case.meta.generation.mode == GenerationMode.POSITIVE:
            for name in victims:
                case.path_parameters[name] = target.victim(VICTIM_PARAMS[name])
        response = _send(target.client, case, headers)
        SENT[f"{target.backend} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        assert_error_shape(response)

    run()
