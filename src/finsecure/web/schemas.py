"""Bodies of the dashboard's overview and map endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import Field

from finsecure.core.schemas import ApiModel
from finsecure.incident.schemas import IncidentRead


class Kpi(ApiModel):
    """One moment of the platform, as the overview page shows it."""

    ts: dt.datetime
    events_per_s: dict[str, float] = Field(description="Events per second over the last sample, per domain")
    events_total: dict[str, int] = Field(description="Events processed since start, per domain")
    alerts_per_min: dict[str, int] = Field(description="Alerts raised in the last minute, per severity")
    open_incidents: int
    lag_p50_ms: float | None = Field(description="Median time from arrival to stored, recent batches")
    lag_p99_ms: float | None
    queue_depth: int
    queue_capacity: int
    dead_letters: int
    pipeline_running: bool


class ModelVersion(ApiModel):
    name: str
    version: str
    status: str | None = None
    created_at: dt.datetime | None = None


class Overview(ApiModel):
    kpi: Kpi
    series: list[Kpi] = Field(description="Recent samples, oldest first (empty without a live feed)")
    recent_incidents: list[IncidentRead] = Field(description="Latest high and critical incidents")
    models: list[ModelVersion]


class MapPoint(ApiModel):
    """A located event: where something happened, and how risky it looked."""

    event_id: str
    ts: dt.datetime
    domain: str
    lat: float
    lon: float
    country: str | None
    entity_type: str
    entity_id: str | None
    risk: float = Field(description="0 to 1: 1 for an event behind an alert, else the event's score")
    alert_id: int | None = None
    alert_title: str | None = None
    severity: str | None = None


class TravelArc(ApiModel):
    """Two places one card or person was seen at, too far apart for the time between them."""

    event_id: str
    domain: str
    entity_type: str
    entity_id: str
    from_lat: float
    from_lon: float
    from_ts: dt.datetime
    to_lat: float
    to_lon: float
    to_ts: dt.datetime
    distance_km: float | None
    speed_kmh: float | None
    text: str


class MapPoints(ApiModel):
    points: list[MapPoint]
    arcs: list[TravelArc]
    since: dt.datetime
    truncated: bool
    details: dict[str, Any] = Field(default_factory=dict)
