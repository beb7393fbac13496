"""Unknown query parameters are refused with 422 on every API operation (docs/decisions/0003)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from finsecure.auth.models import Role


def test_reject_unknown_query_params__mistyped_filter_is_422(
    client: TestClient, auth_headers: Callable[[Role], dict[str, str]]
) -> None:
    headers = auth_headers(Role.viewer)
    assert client.get("/api/alerts?severity=critical", headers=headers).status_code == 200
    response = client.get("/api/alerts?severty=critical", headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unknown_query_parameter"
    assert "'severty'" in error["message"]
    assert error["details"]["unknown"] == ["severty"]
    assert "severity" in error["details"]["allowed"]


def test_reject_unknown_query_params__dependencies_params_are_known(
    client: TestClient, auth_headers: Callable[[Role], dict[str, str]]
) -> None:
    # page/size come from the shared Page dependency, not from the route function itself
    response = client.get("/api/alerts?page=1&size=5", headers=auth_headers(Role.viewer))
    assert response.status_code == 200, response.text


def test_reject_unknown_query_params__empty_name_and_no_params_operation(client: TestClient) -> None:
    assert client.get("/api/health").status_code == 200
    response = client.get("/api/health?=")
    assert response.status_code == 422
    assert response.json()["error"]["details"]["unknown"] == [""]


def test_reject_unknown_query_params__lists_at_most_ten(client: TestClient) -> None:
    query = "&".join(f"x{i}=1" for i in range(50))
    details = client.get(f"/api/health?{query}").json()["error"]["details"]
    assert len(details["unknown"]) == 10


def test_reject_unknown_query_params__documented_on_every_operation(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    missing = [
        f"{method.upper()} {path}"
        for path, item in paths.items()
        for method, operation in item.items()
        if "422" not in operation["responses"]
    ]
    assert missing == []
