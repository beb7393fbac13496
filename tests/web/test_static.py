"""The dashboard at /: files, the single-page fallback, and the API's own 404/405 left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from finsecure.web.static import NO_BUILD_PAGE


@pytest.fixture
def dist(tmp_path: Path, web_app: FastAPI) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>FinSecure</title><div id=root></div>")
    (tmp_path / "assets" / "app-1234.js").write_text("console.log('hi')")
    web_app.state.dashboard_dir = tmp_path
    return tmp_path


def test_dashboard__serves_index_and_assets(web_client: TestClient, dist: Path) -> None:
    index = web_client.get("/")
    assert index.status_code == 200
    assert "<div id=root>" in index.text
    assert index.headers["content-security-policy"].startswith("default-src 'self'")
    asset = web_client.get("/assets/app-1234.js")
    assert asset.status_code == 200
    assert "immutable" in asset.headers["cache-control"]


def test_dashboard__page_paths_fall_back_to_index(web_client: TestClient, dist: Path) -> None:
    response = web_client.get("/incidents/12")
    assert response.status_code == 200
    assert "<div id=root>" in response.text


def test_dashboard__missing_files_and_api_paths_stay_404(web_client: TestClient, dist: Path) -> None:
    for path in ("/assets/gone.js", "/favicon.png", "/redoc", "/mapping"):
        response = web_client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    api = web_client.get("/api/nothing-here")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
    assert web_client.get("/api/auth/refresh").status_code == 405


def test_dashboard__no_escape_from_the_build(web_client: TestClient, dist: Path) -> None:
    (dist.parent / "secret.txt").write_text("no")
    for path in ("/assets/../../secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt"):
        response = web_client.get(path)
        assert response.status_code == 404, path
        assert response.text != "no"


def test_dashboard__without_a_build_says_how_to_make_one(
    web_client: TestClient, web_app: FastAPI, tmp_path: Path
) -> None:
    web_app.state.dashboard_dir = tmp_path / "missing"
    response = web_client.get("/")
    assert response.status_code == 200
    assert response.text == NO_BUILD_PAGE
