"""Incremental correlation of alerts into incidents.

Each alert names entities: the one its rule is about, plus the customer, account, card and device of the
events that fired it. Alerts that share an entity within ``window_s`` belong together: the
:class:`Correlator` keeps, per entity, the incident it last joined and when, and unites incidents with a
union-find when one alert bridges two of them (the younger is merged into the older).

Addresses, merchants and terminals are shared by many innocent customers, so they join alerts only when an
alert is *about* them (its rule's entity), never as a side detail of an event; otherwise one busy shop or a
mobile carrier's address would pull unrelated customers into one incident.

The state lives in memory and is rebuilt from the last window of alerts by :meth:`Correlator.warm_up`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.core.database import utcnow
from finsecure.correlation.summary import AlertFacts, describe_incident
from finsecure.incident.models import Incident, IncidentAlert, IncidentStatus

__all__ = ["CLOSED_STATUSES", "Correlator", "alert_entity_keys"]

logger = logging.getLogger(__name__)

#: Entities that join alerts whether the alert is about them or they are a detail of its events.
OWNED_ENTITIES = ("user_id", "account_id", "card_id", "device_id")
#: Entities that join alerts only when an alert is about them.
SHARED_ENTITIES = ("src_ip", "merchant_id", "terminal_id")
#: An incident in one of these states takes no new alerts: they start a new incident.
CLOSED_STATUSES = frozenset({IncidentStatus.resolved, IncidentStatus.closed})


def alert_entity_keys(alert: Alert) -> list[str]:
    """The ``type:id`` keys an alert correlates on (its own entity first).

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> a = Alert(entity_type="user_id", entity_id="u1", first_seen=t, last_seen=t,
    ...           explanation={"entities": {"device_id": ["d1"], "src_ip": ["10.0.0.1"]}})
    >>> alert_entity_keys(a)
    ['user_id:u1', 'device_id:d1']
    """
    keys: list[str] = []
    if alert.entity_type and alert.entity_id:
        keys.append(f"{alert.entity_type}:{alert.entity_id}")
    entities = (alert.explanation or {}).get("entities") or {}
    for name in OWNED_ENTITIES:
        for value in entities.get(name) or ():
            key = f"{name}:{value}"
            if key not in keys:
                keys.append(key)
    return keys


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        root = node
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while node != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _insert_ignore(db_session: Session, table: Any) -> Any:
    if db_session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class Correlator:
    """Joins alerts into incidents as they arrive.

    Parameters
    ----------
    window_s
        Alerts join an entity's incident when they start at most this long after the entity was last seen.
    max_keys
        Entities remembered; beyond it, those not seen within the window are forgotten.
    """

    def __init__(self, *, window_s: int = 6 * 3600, max_keys: int = 200_000) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._entity: dict[str, tuple[int, float]] = {}  # key -> (incident id, last seen, epoch s)
        self._merged: dict[int, int] = {}  # incident id -> the incident it was merged into
        self._watermark = 0.0

    def reset(self) -> None:
        """Forget everything (after a rolled-back transaction)."""
        self._entity.clear()
        self._merged.clear()

    def _root(self, incident_id: int) -> int:
        while incident_id in self._merged:
            incident_id = self._merged[incident_id]
        return incident_id

    def _live(self, key: str, start: float) -> int | None:
        entry = self._entity.get(key)
        if entry is None or start - entry[1] > self.window_s:
            return None
        return self._root(entry[0])

    def warm_up(self, *, db_session: Session) -> int:
        """Remember the entities of open incidents' alerts seen within the window; returns how many alerts."""
        rows = db_session.execute(
            select(Alert, IncidentAlert.incident_id)
            .join(IncidentAlert, IncidentAlert.alert_id == Alert.id)
            .join(Incident, Incident.id == IncidentAlert.incident_id)
            .where(Incident.status.not_in(CLOSED_STATUSES), Incident.merged_into_id.is_(None))
            .order_by(Alert.last_seen.desc())
            .limit(self.max_keys)
        ).all()
        if not rows:
            return 0
        newest = max(alert.last_seen.timestamp() for alert, _ in rows)
        for alert, incident_id in rows:
            seen = alert.last_seen.timestamp()
            if newest - seen <= self.window_s:
                self._remember(alert_entity_keys(alert), incident_id, seen)
        return len(rows)

    def _remember(self, keys: Iterable[str], incident_id: int, seen: float) -> None:
        for key in keys:
            old = self._entity.get(key)
            self._entity[key] = (incident_id, max(seen, old[1]) if old else seen)
        self._watermark = max(self._watermark, seen)

    def _expire(self) -> None:
        if len(self._entity) <= self.max_keys:
            return
        horizon = self._watermark - self.window_s
        self._entity = {k: v for k, v in self._entity.items() if v[1] >= horizon}
        live = {v[0] for v in self._entity.values()}
        self._merged = {k: v for k, v in self._merged.items() if k in live or v in live}

    def process(self, *, db_session: Session, alerts: Sequence[Alert]) -> list[int]:
        """Link ``alerts`` (just created or updated) to incidents, creating and merging as needed, and
        refresh the incidents they touch; in the caller's transaction. Returns the touched incident ids."""
        if not alerts:
            return []
        ids = [a.id for a in alerts]
        linked: dict[int, int] = dict(
            db_session.execute(
                select(IncidentAlert.alert_id, IncidentAlert.incident_id).where(
                    IncidentAlert.alert_id.in_(ids)
                )
            ).all()
        )
        uf = _UnionFind()
        candidates: set[int] = set()
        keys_of: dict[int, list[str]] = {}
        for alert in alerts:
            node = f"a{alert.id}"
            keys = keys_of[alert.id] = alert_entity_keys(alert)
            start = alert.first_seen.timestamp()
            for key in keys:
                uf.union(node, f"k{key}")
                incident = self._live(key, start)
                if incident is not None:
                    candidates.add(incident)
                    uf.union(node, f"i{incident:012d}")
            if alert.id in linked:
                incident = self._root(linked[alert.id])
                candidates.add(incident)
                uf.union(node, f"i{incident:012d}")
        status: dict[int, IncidentStatus] = dict(
            db_session.execute(
                select(Incident.id, Incident.status).where(Incident.id.in_(candidates))
            ).all()) if candidates else {}  # fmt: skip
        closed = {i for i in candidates if status.get(i) in CLOSED_STATUSES or i not in status}
        # components of this batch: alerts and the open incidents they reach
        components: dict[str, list[Alert]] = {}
        incidents_of: dict[str, set[int]] = {}
        for alert in alerts:
            root = uf.find(f"a{alert.id}")
            components.setdefault(root, []).append(alert)
        for incident in candidates - closed:
            root = uf.find(f"i{incident:012d}")
            if root in components:
                incidents_of.setdefault(root, set()).add(incident)
        # alerts already in a closed incident stay there; they only refresh it
        target: dict[str, int] = {}
        new_keys: dict[str, str] = {}
        for root, members in components.items():
            open_ones = incidents_of.get(root)
            if open_ones:
                target[root] = min(open_ones)
            elif not all(a.id in linked for a in members):
                new_keys[root] = f"corr-{uuid.uuid4().hex}"
        now = utcnow()
        if new_keys:
            rows = []
            for root, key in new_keys.items():
                first = min(a.first_seen for a in components[root])
                rows.append(
                    {
                        "correlation_key": key, "title": "New incident", "summary": "",
                        "severity": components[root][0].severity, "status": IncidentStatus.open,
                        "risk": 0.0, "domains": [], "labels": [], "evidence": {},
                        "first_seen": first, "last_seen": first, "created_at": now, "updated_at": now,
                    }
                )  # fmt: skip
            db_session.execute(
                _insert_ignore(db_session, Incident).execution_options(render_nulls=True), rows
            )
            made: dict[str | None, int] = dict(
                db_session.execute(
                    select(Incident.correlation_key, Incident.id).where(
                        Incident.correlation_key.in_(list(new_keys.values()))
                    )
                ).all()
            )
            for root, key in new_keys.items():
                target[root] = made[key]
        links: list[dict[str, Any]] = []
        merges: dict[int, int] = {}
        touched: set[int] = set()
        for root, members in components.items():
            if root not in target:  # every alert already sits in a closed incident
                touched.update(self._root(linked[a.id]) for a in members)
                continue
            into = target[root]
            touched.add(into)
            for other in incidents_of.get(root, set()) - {into}:
                merges[other] = into
            for alert in members:
                if alert.id not in linked:  # an alert never moves out of its incident by itself
                    links.append({"incident_id": into, "alert_id": alert.id, "added_at": now})
            last = max(a.last_seen.timestamp() for a in members)
            self._remember((k for a in members for k in keys_of[a.id]), into, last)
        if links:
            db_session.execute(_insert_ignore(db_session, IncidentAlert), links)
        for merged, into in merges.items():
            db_session.execute(
                update(IncidentAlert).where(IncidentAlert.incident_id == merged).values(incident_id=into)
            )
            self._merged[merged] = into
        if merges:
            db_session.execute(
                update(Incident),
                [
                    {
                        "id": merged, "merged_into_id": into, "status": IncidentStatus.closed,
                        "summary": f"Merged into incident {into}: the same entities showed up in both.",
                        "closed_at": now, "updated_at": now,
                    }
                    for merged, into in merges.items()
                ],
            )  # fmt: skip
        self.refresh(db_session=db_session, incident_ids=touched)
        self._expire()
        return sorted(touched)

    def refresh(self, *, db_session: Session, incident_ids: Iterable[int]) -> None:
        """Recompute title, summary, risk, severity, domains and times of incidents from their alerts."""
        ids = sorted(set(incident_ids))
        if not ids:
            return
        rows = db_session.execute(
            select(IncidentAlert.incident_id, Alert)
            .join(Alert, Alert.id == IncidentAlert.alert_id)
            .where(IncidentAlert.incident_id.in_(ids))
        ).all()
        facts: dict[int, list[AlertFacts]] = {}
        for incident_id, alert in rows:
            facts.setdefault(incident_id, []).append(
                AlertFacts(
                    title=alert.title, severity=alert.severity.value, domain=alert.domain,
                    entity_type=alert.entity_type, entity_id=alert.entity_id, first_seen=alert.first_seen,
                    last_seen=alert.last_seen, count=alert.count,
                    entities=(alert.explanation or {}).get("entities") or {},
                )
            )  # fmt: skip
        now = utcnow()
        changes = []
        for incident_id, alert_facts in facts.items():
            d = describe_incident(alert_facts)
            entities = sorted({f"{a.entity_type}:{a.entity_id}" for a in alert_facts if a.entity_id})
            changes.append(
                {
                    "id": incident_id, "title": d.title, "summary": d.summary, "severity": d.severity,
                    "risk": d.risk, "domains": d.domains,
                    "first_seen": d.first_seen, "last_seen": d.last_seen,
                    "evidence": {"alert_count": len(alert_facts), "entities": entities[:50],
                                 "main_entity": list(d.main_entity) if d.main_entity else None},
                    "updated_at": now,
                }
            )  # fmt: skip
        if changes:
            db_session.execute(update(Incident), changes)
