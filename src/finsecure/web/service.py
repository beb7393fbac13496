"""What the dashboard's overview and map show, read from the pipeline, the database and the lake."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.core.cache import RefreshingCache
from finsecure.core.enums import Severity
from finsecure.core.settings import Settings
from finsecure.event import service as event_service
from finsecure.event.schemas import Domain
from finsecure.incident.models import Incident, IncidentStatus
from finsecure.lake.query import LakeQuery, LakeQueryError
from finsecure.model.models import ModelVersion as ModelRow
from finsecure.pipeline.engine import PipelineStats
from finsecure.web.schemas import Kpi, MapPoint, MapPoints, ModelVersion, TravelArc

logger = logging.getLogger(__name__)

#: Statuses after which an incident no longer counts as open.
DONE_STATUSES: tuple[IncidentStatus, ...] = tuple(
    s for s in IncidentStatus if s.value in ("resolved", "closed")
)
#: The entity whose travel the map draws, per domain (the feature step's geo key).
GEO_KEYS: dict[str, str] = {"payment": "card_id", "auth": "user_id", "cloud": "user_id", "network": "user_id"}
_ENTITY_WORDS = {"card_id": "Card", "user_id": "User"}
#: How far back the map looks by default.
DEFAULT_MAP_WINDOW = dt.timedelta(hours=1)
#: Map answers are kept this long (the lake's files arrive every few seconds anyway), and served while
#: a new one is computed in the background up to MAP_STALE_S (see :mod:`finsecure.core.cache`).
MAP_FRESH_S = 5.0
MAP_STALE_S = 30.0
_map_cache: RefreshingCache[tuple[Path, dt.datetime | None, int], MapPoints] = RefreshingCache(
    fresh_s=MAP_FRESH_S, stale_s=MAP_STALE_S, max_entries=32
)


def alerts_per_minute(*, db_session: Session, now: dt.datetime) -> dict[str, int]:
    """Alerts raised in the minute before ``now``, per severity (every severity present, maybe 0)."""
    rows = db_session.execute(
        select(Alert.severity, func.count())
        .where(Alert.created_at >= now - dt.timedelta(minutes=1))
        .group_by(Alert.severity)
    ).all()
    counts = {s.value: 0 for s in Severity}
    for severity, n in rows:
        counts[Severity(severity).value] = int(n)
    return counts


def open_incidents(*, db_session: Session) -> int:
    """Incidents not yet resolved (merged ones count in the incident they were merged into)."""
    query = (
        select(func.count())
        .select_from(Incident)
        .where(Incident.status.not_in(DONE_STATUSES), Incident.merged_into_id.is_(None))
    )
    return int(db_session.execute(query).scalar_one())


def incidents_watermark(*, db_session: Session) -> tuple[dt.datetime | None, int]:
    """The latest change time of any incident and how many there are: a change means "reload"."""
    latest, total = db_session.execute(select(func.max(Incident.updated_at), func.count(Incident.id))).one()
    return latest, int(total)


def recent_incidents(*, db_session: Session, limit: int = 8) -> list[Incident]:
    """The latest high and critical incidents that are still open."""
    query = (
        select(Incident)
        .where(
            Incident.severity.in_((Severity.high, Severity.critical)),
            Incident.status.not_in(DONE_STATUSES),
            Incident.merged_into_id.is_(None),
        )
        .order_by(Incident.last_seen.desc(), Incident.id.desc())
        .limit(limit)
    )
    return list(db_session.scalars(query))


def model_versions(*, db_session: Session, limit: int = 20) -> list[ModelVersion]:
    """Registered model versions, production first then newest."""
    query = select(ModelRow).order_by(ModelRow.name, ModelRow.version.desc()).limit(limit)
    rows = list(db_session.scalars(query))
    rows.sort(key=lambda r: (r.stage.value != "production", r.name, -r.version))
    return [
        ModelVersion(name=r.name, version=str(r.version), status=r.stage.value, created_at=r.created_at)
        for r in rows
    ]


def _rate(now_total: int, before_total: int, elapsed_s: float) -> float:
    if elapsed_s <= 0 or now_total < before_total:
        return 0.0
    return round((now_total - before_total) / elapsed_s, 2)


def build_kpi(
    *,
    db_session: Session,
    stats: PipelineStats | None,
    now: dt.datetime,
    previous: Kpi | None = None,
) -> Kpi:
    """One KPI sample; event rates are measured against ``previous`` (zero without one).

    ``stats`` is ``None`` in an API-only process (no pipeline here): throughput and lag are then empty.
    """
    totals = {d.value: 0 for d in Domain}
    if stats is not None:
        totals.update({k: int(v) for k, v in stats.events_out.items()})
    if previous is not None:
        elapsed = (now - previous.ts).total_seconds()
        rates = {d: _rate(n, previous.events_total.get(d, 0), elapsed) for d, n in totals.items()}
    else:
        rates = dict.fromkeys(totals, 0.0)
    return Kpi(
        ts=now,
        events_per_s=rates,
        events_total=totals,
        alerts_per_min=alerts_per_minute(db_session=db_session, now=now),
        open_incidents=open_incidents(db_session=db_session),
        lag_p50_ms=stats.event_latency_p50_ms if stats else None,
        lag_p99_ms=stats.event_latency_p99_ms if stats else None,
        queue_depth=stats.queue_depth if stats else 0,
        queue_capacity=stats.queue_capacity if stats else 0,
        dead_letters=stats.dead_letters if stats else 0,
        pipeline_running=bool(stats and stats.running),
    )


# --- map -------------------------------------------------------------------------------------------


def _literal(value: str) -> str:
    """A DuckDB string literal (values come from our own database, but are still escaped)."""
    return "'" + value.replace("'", "''") + "'"


def _ts_literal(value: dt.datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(dt.UTC).isoformat()}'"


def _day_at_least(since: dt.datetime, days_before: int = 0) -> str:
    """A filter on the lake's ``date`` partition column (an alert's events may predate ``since``)."""
    day = (since.astimezone(dt.UTC) - dt.timedelta(days=days_before)).date()
    return f"\"date\" >= DATE '{day.isoformat()}'"


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _speed_text(entity: str, km: float | None, kmh: float | None, gap: dt.timedelta) -> str:
    """Plain words for one impossible trip.

    >>> _speed_text("Card", 2300.4, 3450.0, dt.timedelta(minutes=40))
    'Card used 2,300 km away 40 minutes after its previous use (3,450 km/h)'
    """
    minutes = max(int(gap.total_seconds() // 60), 0)
    when = f"{minutes} minutes" if minutes < 120 else f"{minutes // 60} hours"
    distance = f"{km:,.0f} km away " if km is not None else ""
    speed = f" ({kmh:,.0f} km/h)" if kmh is not None else ""
    return f"{entity} used {distance}{when} after its previous use{speed}"


def _alert_events(
    db_session: Session, since: dt.datetime, limit: int
) -> tuple[dict[str, Alert], dict[str, list[str]]]:
    """Recent alerts' first events: event id -> alert, and the ids per domain."""
    alerts = db_session.scalars(
        select(Alert).where(Alert.last_seen >= since).order_by(Alert.last_seen.desc()).limit(limit)
    ).all()
    by_event: dict[str, Alert] = {}
    per_domain: dict[str, list[str]] = {}
    for alert in alerts:
        if alert.domain not in GEO_KEYS:
            continue
        for event_id in alert.event_ids[:3]:
            if isinstance(event_id, str) and event_id not in by_event and len(event_id) <= 128:
                by_event[event_id] = alert
                per_domain.setdefault(alert.domain, []).append(event_id)
    return by_event, per_domain


def cached_map_points(
    *,
    settings: Settings,
    db_session: Session,
    session_factory: Callable[[], Session],
    since: dt.datetime | None,
    limit: int,
) -> MapPoints:
    """:func:`map_points` since ``since`` (default: the last hour), kept a few seconds for every caller.

    A kept answer is at most :data:`MAP_FRESH_S` old, or up to :data:`MAP_STALE_S` while a new one is
    computed in the background with a session of its own from ``session_factory``. The dashboard asks for
    "the last N minutes", a ``since`` that moves on every poll: answers are kept per ``since`` rounded
    down to :data:`MAP_FRESH_S` seconds, and trimmed to the exact ``since`` on the way out.
    """

    def compute(session: Session) -> MapPoints:
        start = bucket or dt.datetime.now(dt.UTC) - DEFAULT_MAP_WINDOW
        return map_points(settings=settings, db_session=session, since=start, limit=limit)

    def refresh() -> MapPoints:
        with session_factory() as session:
            return compute(session)

    bucket = None if since is None else _round_down(since, MAP_FRESH_S)
    key = (event_service.lake_root(settings=settings).absolute(), bucket, limit)
    kept = _map_cache.get(key, lambda: compute(db_session), refresh)
    if since is None or since == bucket:
        return kept
    # An alert's events may predate ``since`` (they are shown for alerts seen since then); a trip needs
    # both of its ends in the window, as map_points computes it.
    return MapPoints(
        points=[p for p in kept.points if p.alert_id is not None or p.ts >= since],
        arcs=[a for a in kept.arcs if a.from_ts >= since],
        since=since,
        truncated=kept.truncated,
    )


def _round_down(value: dt.datetime, seconds: float) -> dt.datetime:
    """``value`` rounded down to a multiple of ``seconds`` since the epoch (in UTC).

    >>> _round_down(dt.datetime(2026, 1, 1, 12, 0, 7, 500, tzinfo=dt.UTC), 5)
    datetime.datetime(2026, 1, 1, 12, 0, 5, tzinfo=datetime.timezone.utc)
    """
    value = value.astimezone(dt.UTC)
    epoch = value.timestamp()
    return dt.datetime.fromtimestamp(epoch - epoch % seconds, dt.UTC)


def map_points(
    *,
    settings: Settings,
    db_session: Session,
    since: dt.datetime,
    limit: int,
    domains: Iterable[str] = ("payment", "auth", "cloud"),
) -> MapPoints:
    """Located events since ``since`` (alerts' events first), and impossible-travel trips as arcs.

    Raises
    ------
    SearchUnavailable
        When the lake cannot be read.
    """
    lake = event_service.get_lake(settings=settings)
    by_event, alert_ids = _alert_events(db_session, since, limit)
    points: list[MapPoint] = []
    arcs: list[TravelArc] = []
    truncated = False
    seen: set[str] = set()
    try:
        for domain in domains:
            columns = lake.columns(domain)
            if "lat" not in columns or "lon" not in columns:
                continue
            key = GEO_KEYS[domain]
            ids = alert_ids.get(domain, [])
            # The day filters let DuckDB skip whole partitions of the lake.
            if ids:
                in_ids = f"event_id IN ({', '.join(map(_literal, ids))})"
                rows = _located(lake, domain, key, columns, f"{_day_at_least(since, 2)} AND {in_ids}", limit)
                points += _points(rows, domain, key, by_event, seen)
            recent = f"{_day_at_least(since)} AND ts >= {_ts_literal(since)}"
            rows = _located(lake, domain, key, columns, recent, limit)
            truncated = truncated or len(rows) >= limit
            points += _points(rows, domain, key, by_event, seen)
            if "geo__impossible_travel" in columns:
                arcs += _arcs(lake, domain, key, columns, since, limit=min(limit, 200))
    except LakeQueryError as exc:
        logger.error("map points: the lake could not be read: %s", exc)
        raise event_service.SearchUnavailable("The event store could not be read; try again later") from exc
    points.sort(key=lambda p: (p.alert_id is None, -p.ts.timestamp()))
    return MapPoints(
        points=points[:limit], arcs=arcs, since=since, truncated=truncated or len(points) > limit
    )


def _located(
    lake: LakeQuery, domain: str, key: str, columns: Mapping[str, str], where: str, limit: int
) -> list[dict[str, Any]]:
    score = "score" if "score" in columns else "CAST(NULL AS DOUBLE)"
    country = "country" if "country" in columns else "CAST(NULL AS VARCHAR)"
    query = (
        f"SELECT event_id, ts, lat, lon, {country} AS country, CAST({key} AS VARCHAR) AS entity, "  # noqa: S608
        f"{score} AS score FROM {domain} WHERE lat IS NOT NULL AND lon IS NOT NULL AND {where} "
        "ORDER BY ts DESC"
    )
    rows: list[dict[str, Any]] = lake.sql(query, limit=limit).table.to_pylist()
    return rows


def _points(
    rows: list[dict[str, Any]], domain: str, key: str, by_event: Mapping[str, Alert], seen: set[str]
) -> list[MapPoint]:
    out: list[MapPoint] = []
    for row in rows:
        event_id = str(row["event_id"])
        lat, lon = _finite(row["lat"]), _finite(row["lon"])
        if event_id in seen or lat is None or lon is None:
            continue
        seen.add(event_id)
        alert = by_event.get(event_id)
        score = _finite(row.get("score"))
        out.append(
            MapPoint(
                event_id=event_id,
                ts=row["ts"],
                domain=domain,
                lat=lat,
                lon=lon,
                country=row.get("country"),
                entity_type=key,
                entity_id=row.get("entity"),
                risk=1.0 if alert is not None else min(max(score or 0.0, 0.0), 1.0),
                alert_id=alert.id if alert is not None else None,
                alert_title=alert.title if alert is not None else None,
                severity=alert.severity.value if alert is not None else None,
            )
        )
    return out


def _arcs(
    lake: LakeQuery, domain: str, key: str, columns: Mapping[str, str], since: dt.datetime, *, limit: int
) -> list[TravelArc]:
    km = "geo__distance_km" if "geo__distance_km" in columns else "CAST(NULL AS DOUBLE)"
    kmh = "geo__speed_kmh" if "geo__speed_kmh" in columns else "CAST(NULL AS DOUBLE)"
    # The previous place comes from the same entity's previous located event in the window.
    query = f"""
        WITH located AS (
            SELECT event_id, ts, lat, lon, CAST({key} AS VARCHAR) AS entity,
                   geo__impossible_travel AS impossible, {km} AS km, {kmh} AS kmh,
                   lag(lat) OVER w AS prev_lat, lag(lon) OVER w AS prev_lon, lag(ts) OVER w AS prev_ts
            FROM {domain}
            WHERE {_day_at_least(since)} AND ts >= {_ts_literal(since)}
              AND lat IS NOT NULL AND lon IS NOT NULL AND {key} IS NOT NULL
            WINDOW w AS (PARTITION BY {key} ORDER BY ts)
        )
        SELECT * FROM located WHERE impossible AND prev_lat IS NOT NULL ORDER BY ts DESC
    """  # noqa: S608 - fixed names, our own timestamp
    out: list[TravelArc] = []
    for row in lake.sql(query, limit=limit).table.to_pylist():
        coords = [_finite(row[c]) for c in ("prev_lat", "prev_lon", "lat", "lon")]
        if any(c is None for c in coords):
            continue
        from_lat, from_lon, to_lat, to_lon = (float(c or 0.0) for c in coords)
        distance, speed = _finite(row["km"]), _finite(row["kmh"])
        out.append(
            TravelArc(
                event_id=str(row["event_id"]),
                domain=domain,
                entity_type=key,
                entity_id=str(row["entity"]),
                from_lat=from_lat,
                from_lon=from_lon,
                from_ts=row["prev_ts"],
                to_lat=to_lat,
                to_lon=to_lon,
                to_ts=row["ts"],
                distance_km=distance,
                speed_kmh=speed,
                text=_speed_text(
                    _ENTITY_WORDS.get(key, "Entity"), distance, speed, row["ts"] - row["prev_ts"]
                ),
            )
        )
    return out
