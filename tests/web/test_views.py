"""GET /api/overview and GET /api/map/points on both databases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.api import create_app
from finsecure.auth.models import Role
from finsecure.core.deps import AppContext, get_db
from finsecure.core.enums import Severity
from finsecure.incident.models import Incident
from finsecure.lake.writer import LakeWriter
from tests.alert.factories import uid
from tests.lake import canonical_frame

Headers = Callable[[Role], dict[str, str]]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _alert(
    db_session: Session, *, severity: Severity, event_ids: list[str], domain: str = "payment"
) -> Alert:
    alert = Alert(
        alert_key=uid("key"), rule_id="r-web", title="Card used far from home", severity=severity,
        domain=domain, entity_type="card_id", entity_id="c1", event_ids=event_ids, explanation={},
        first_seen=NOW, last_seen=NOW,
    )  # fmt: skip
    db_session.add(alert)
    db_session.commit()
    return alert


def _incident(db_session: Session, *, severity: Severity, title: str) -> Incident:
    incident = Incident(
        title=title, severity=severity, domains=["payment"], labels=[], evidence={},
        first_seen=NOW, last_seen=NOW,
    )  # fmt: skip
    db_session.add(incident)
    db_session.commit()
    return incident


def test_overview__counts_recent_alerts_and_open_incidents(
    web_client: TestClient, auth_headers: Headers, db_session: Session
) -> None:
    before = web_client.get("/api/overview", headers=auth_headers(Role.viewer)).json()
    _alert(db_session, severity=Severity.critical, event_ids=["x1"])
    _alert(db_session, severity=Severity.low, event_ids=["x2"])
    serious = _incident(db_session, severity=Severity.critical, title=uid("Card ring"))
    _incident(db_session, severity=Severity.low, title=uid("Minor"))

    response = web_client.get("/api/overview", headers=auth_headers(Role.viewer))

    assert response.status_code == 200, response.text
    body = response.json()
    kpi, old = body["kpi"], before["kpi"]
    assert kpi["alerts_per_min"]["critical"] == old["alerts_per_min"]["critical"] + 1
    assert kpi["alerts_per_min"]["low"] == old["alerts_per_min"]["low"] + 1
    assert kpi["open_incidents"] == old["open_incidents"] + 2
    assert set(kpi["events_per_s"]) == {"network", "cloud", "auth", "payment"}
    assert kpi["pipeline_running"] is False  # an API-only process has no pipeline
    assert body["recent_incidents"][0]["id"] == serious.id
    assert all(i["severity"] in ("high", "critical") for i in body["recent_incidents"])
    assert isinstance(body["models"], list)


@pytest.fixture
def lake_app(web_context: AppContext, db_session: Session, tmp_path: Path) -> FastAPI:
    settings = web_context.settings.model_copy(update={"data_dir": tmp_path})
    application = create_app(context=replace(web_context, settings=settings))
    application.dependency_overrides[get_db] = lambda: db_session
    return application


def _write_lake(root: Path) -> None:
    """Card c0 paid in Paris, then 40 minutes later in New York (impossible); a login with no place."""
    start = NOW - dt.timedelta(minutes=50)
    payments = canonical_frame(
        "payment", 3, start=start, step=dt.timedelta(minutes=20), prefix=uid("p") + "-",
        lat=[48.86, 51.5, 40.71], lon=[2.35, -0.12, -74.0], country=["FR", "GB", "US"], amount=12.5,
    )  # fmt: skip
    payments = payments.with_columns(
        card_id=pl.lit("c0"),
        geo__impossible_travel=pl.Series([None, False, True], dtype=pl.Boolean),
        geo__distance_km=pl.Series([None, 344.0, 5570.0]),
        geo__speed_kmh=pl.Series([None, 1032.0, 8355.0]),
    )
    with LakeWriter(root) as writer:
        writer.write("payment", payments)
        writer.write("auth", canonical_frame("auth", 2, start=start, prefix=uid("a") + "-", action="login"))


def test_map_points__located_events_alerts_and_impossible_travel(
    lake_app: FastAPI, auth_headers: Headers, db_session: Session, tmp_path: Path
) -> None:
    _write_lake(tmp_path / "lake")
    with TestClient(lake_app) as client:
        events = client.get(
            "/api/events/search", params={"domain": "payment"}, headers=auth_headers(Role.viewer)
        ).json()["items"]
        newest = events[0]["event_id"]
        alert = _alert(db_session, severity=Severity.high, event_ids=[newest])
        since = (NOW - dt.timedelta(hours=2)).isoformat()
        response = client.get("/api/map/points", params={"since": since}, headers=auth_headers(Role.viewer))

    assert response.status_code == 200, response.text
    body = response.json()
    points = body["points"]
    assert len(points) == 3  # the logins have no coordinates
    first = points[0]  # the alert's event comes first
    assert (first["event_id"], first["alert_id"], first["severity"], first["risk"]) == (
        newest,
        alert.id,
        "high",
        1.0,
    )
    assert (first["lat"], first["lon"], first["country"]) == (40.71, -74.0, "US")
    assert [a["entity_id"] for a in body["arcs"]] == ["c0"]
    arc = body["arcs"][0]
    assert (arc["from_lat"], arc["from_lon"], arc["to_lat"], arc["to_lon"]) == (51.5, -0.12, 40.71, -74.0)
    assert arc["text"] == "Card used 5,570 km away 20 minutes after its previous use (8,355 km/h)"


def test_map_points__empty_lake_and_bad_limit(lake_app: FastAPI, auth_headers: Headers) -> None:
    headers = auth_headers(Role.viewer)
    with TestClient(lake_app) as client:
        assert client.get("/api/map/points", params={"limit": 0}, headers=headers).status_code == 422
        response = client.get("/api/map/points", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["points"] == []
    assert response.json()["arcs"] == []
