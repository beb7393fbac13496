from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from finsecure.api import create_app
from finsecure.auth.models import Role, User
from finsecure.core.deps import AppContext, get_db
from finsecure.graph.store import GraphStore
from finsecure.platform import Platform
from tests.conftest import login
from tests.graph.helpers import frame

Headers = Callable[[Role], dict[str, str]]


@pytest.fixture
def app(context: AppContext, db_session: Session, tmp_path: Path) -> Iterator[FastAPI]:
    """The test app with a running platform (no steps), whose graph the tests fill directly."""
    settings = context.settings.model_copy(update={"data_dir": tmp_path, "demo_stream": False})
    platform = Platform(settings, context.session_factory, steps=[])
    platform.graph_sink.session_factory = (
        None  # the tests' graphs stay in memory (the DB half is tested apart)
    )
    platform.start()
    application = create_app(context=replace(context, settings=settings, platform=platform))
    application.dependency_overrides[get_db] = lambda: db_session
    try:
        yield application
    finally:
        platform.stop()


def _graph(client: TestClient) -> GraphStore:
    store: GraphStore = client.app.state.context.platform.graph  # type: ignore[attr-defined]
    return store


def _fill(store: GraphStore) -> None:
    """A ring of five customers on two shared devices, 40 cards at one terminal, and a quiet household."""
    auth = [{"user_id": f"r{i}", "device_id": f"ring{(i + k) % 2}"} for i in range(5) for k in range(2)]
    auth += [{"user_id": f"r{i}", "src_ip": "198.51.100.7"} for i in range(5)]
    auth += [{"user_id": f"home{h}", "device_id": f"hd{h}"} for h in range(20)]
    store.update("auth", frame(auth))
    store.update(
        "payment", frame([{"card_id": f"c{i}", "terminal_id": "t1", "amount": 10.0} for i in range(40)])
    )
    store.set_flags(["user_id:r0"], blocked=True, bad=True)


def test_read_entity__neighbourhood_payload(client: TestClient, auth_headers: Headers) -> None:
    _fill(_graph(client))
    response = client.get("/api/graph/entity/device_id/ring0", headers=auth_headers(Role.viewer))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"nodes", "edges", "communities", "nodes_omitted"}
    ids = [n["id"] for n in body["nodes"]]
    assert ids[0] == "device_id:ring0"
    assert set(ids) == {f"user_id:r{i}" for i in range(5)} | {
        "device_id:ring0",
        "device_id:ring1",
        "ip:198.51.100.7",
    }
    assert body["nodes_omitted"] == 0
    r0 = next(n for n in body["nodes"] if n["id"] == "user_id:r0")
    assert r0 == {
        "id": "user_id:r0", "type": "user_id", "key": "r0", "label": "customer r0", "risk": 1.0,
        "community": r0["community"], "blocked": True,
    }  # fmt: skip
    assert isinstance(r0["community"], int)
    edge = body["edges"][0]
    assert set(edge) == {"source", "target", "relation", "count", "amount", "first_seen", "last_seen"}
    assert {e["relation"] for e in body["edges"]} == {"used_device", "used_ip"}
    assert all(e["source"] in ids and e["target"] in ids for e in body["edges"])
    ring = next(c for c in body["communities"] if c["id"] == r0["community"])
    assert ring["risk"] > 0.5
    assert "address 198.51.100.7 is used by 5 different customers" in ring["reasons"]


def test_read_entity__caps_nodes_aliases_ip_types_and_refuses_unknowns(
    client: TestClient, auth_headers: Headers
) -> None:
    _fill(_graph(client))
    headers = auth_headers(Role.viewer)
    capped = client.get("/api/graph/entity/terminal_id/t1", params={"max_nodes": 10}, headers=headers).json()
    assert (len(capped["nodes"]), capped["nodes_omitted"]) == (10, 31)
    assert (
        client.get("/api/graph/entity/terminal_id/t1", params={"max_nodes": 301}, headers=headers).status_code
        == 422
    )
    via_src_ip = client.get("/api/graph/entity/src_ip/198.51.100.7", params={"hops": 1}, headers=headers)
    assert via_src_ip.status_code == 200
    assert len(via_src_ip.json()["nodes"]) == 6
    local = client.get("/api/graph/entity/user_id/home3", params={"local": True}, headers=headers).json()
    assert [c["size"] for c in local["communities"]] == [2]
    missing = client.get("/api/graph/entity/card_id/nobody", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert client.get("/api/graph/entity/planet/x", headers=headers).status_code == 422


def test_list_communities__riskiest_rings_with_members(client: TestClient, auth_headers: Headers) -> None:
    _fill(_graph(client))
    headers = auth_headers(Role.viewer)
    body = client.get("/api/graph/communities", params={"min_risk": 0.5}, headers=headers).json()
    assert body["communities"]
    top = body["communities"][0]
    assert top["risk"] >= 0.5
    assert any("different customers" in r for r in top["reasons"])
    assert "user_id:r0" in {n["id"] for n in body["nodes"]}
    assert all(c["risk"] >= 0.5 for c in body["communities"])
    assert client.get("/api/graph/communities", params={"min_risk": 1.0}, headers=headers).json() == {
        "nodes": [], "edges": [], "communities": [], "nodes_omitted": 0,
    }  # fmt: skip


def test_read_path__explains_links_in_both_query_styles(client: TestClient, auth_headers: Headers) -> None:
    _fill(_graph(client))
    headers = auth_headers(Role.viewer)
    body = client.get(
        "/api/graph/path", params={"from": "user_id:r1", "to": "user_id:r2"}, headers=headers
    ).json()
    assert body["found"] is True
    assert [n["id"] for n in body["nodes"]][::2] == ["user_id:r1", "user_id:r2"]
    assert body["explanation"].startswith("Customer r1 ")
    assert body["explanation"].count(";") == 1  # two links, through a shared device or the shared address
    same = client.get(
        "/api/graph/path",
        params={"from_type": "user_id", "from_id": "r1", "to_type": "user_id", "to_id": "r2"},
        headers=headers,
    ).json()
    assert same == body
    apart = client.get(
        "/api/graph/path", params={"from": "user_id:r1", "to": "card_id:c1"}, headers=headers
    ).json()
    assert apart["found"] is False
    assert (
        apart["explanation"] == "No link was seen between customer r1 and card c1 in the graph's time window."
    )
    assert client.get("/api/graph/path", params={"from": "user_id:r1"}, headers=headers).status_code == 422
    assert (
        client.get(
            "/api/graph/path", params={"from": "user_id:r1", "to": "card_id:zz"}, headers=headers
        ).status_code
        == 404
    )


def test_read_entity__without_a_data_plane_is_unavailable(
    context: AppContext, db_session: Session, make_user: Callable[..., User]
) -> None:
    app = create_app(context=context)
    app.dependency_overrides[get_db] = lambda: db_session
    with TestClient(app, raise_server_exceptions=False) as client:
        user = make_user(Role.viewer)
        token = login(client, user.username)["access_token"]
        response = client.get("/api/graph/communities", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503


def test_built__same_model_as_validation_gives() -> None:
    import datetime as dt

    from finsecure.graph.schemas import GraphEdge, GraphNode
    from finsecure.graph.service import _built

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    edge = {"source": "card_id:c", "target": "terminal_id:t", "relation": "used_at", "count": 2}
    edge |= {"amount": 3.5, "first_seen": t, "last_seen": t}
    node = {"id": "card_id:c", "type": "card_id", "key": "c", "label": "card c", "risk": 0.5}
    node |= {"community": None, "blocked": False}
    for model, values in ((GraphEdge, edge), (GraphNode, node)):
        built = _built(model, **values)
        validated = model.model_validate(values)
        assert built == validated
        assert built.model_dump_json() == validated.model_dump_json()
        assert built.model_fields_set == validated.model_fields_set
