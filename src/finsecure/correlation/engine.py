"""Incremental correlation of alerts into incidents.

Each alert names entities: the one its rule is about, plus the customer, account, card and device of the
events that fired it. Alerts that share an entity within ``window_s`` belong together: the
:class:`Correlator` keeps, per entity, the incident it last joined and when, and unites incidents with a
union-find when one alert bridges two of them (the younger is merged into the older).

Addresses, merchants and terminals are shared by many innocent customers, so they join alerts only when an
alert is *about* them (its rule's entity), never as a side detail of an event; otherwise one busy shop or a
mobile carrier's address would pull unrelated customers into one incident.

Not every alert opens an incident (the promotion policy). A lone low or medium alert from one rule is a
*building block*: it stays an alert for triage, remembered by its entities. An incident opens when an alert
is high or critical, when it completes a sequence rule, or when alerts from at least ``min_rules``
different rules meet on linked entities within the window; the building blocks it reaches join it, and
later alerts on its entities join it whatever their severity.

The state lives in memory and is rebuilt from the last window of alerts by :meth:`Correlator.warm_up`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.core.database import utcnow
from finsecure.core.enums import Severity
from finsecure.correlation.summary import AlertFacts, describe_incident
from finsecure.incident.models import Incident, IncidentAlert, IncidentStatus

__all__ = ["CLOSED_STATUSES", "Correlator", "alert_entity_keys", "alert_source_keys"]

logger = logging.getLogger(__name__)

#: Entities that join alerts whether the alert is about them or they are a detail of its events.
OWNED_ENTITIES = ("user_id", "account_id", "card_id", "device_id")
#: Entities that join alerts only when an alert is about them.
SHARED_ENTITIES = ("src_ip", "merchant_id", "terminal_id")
#: Entity types that name another type's entity: a payee is the account the money is paid into (the
#: payee id is the receiving account's number), so an alert about a payee and the alerts about that
#: account's own activity share one key — the victims' payments into a mule ring's collecting account
#: join the collector's own alerts.
ENTITY_ALIASES = {"payee_id": "account_id"}
#: An incident in one of these states takes no new alerts: they start a new incident.
CLOSED_STATUSES = frozenset({IncidentStatus.resolved, IncidentStatus.closed})
_RANK = {severity: rank for rank, severity in enumerate(Severity)}


def alert_entity_keys(alert: Alert) -> list[str]:
    """The ``type:id`` keys an alert correlates on (its own entity first).

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> a = Alert(entity_type="user_id", entity_id="u1", first_seen=t, last_seen=t,
    ...           explanation={"entities": {"device_id": ["d1"], "src_ip": ["10.0.0.1"]}})
    >>> alert_entity_keys(a)
    ['user_id:u1', 'device_id:d1']

    A detail with several values is a fan-out: an alert about one device that tried many users' passwords
    names those users as victims, not as the same actor, so they do not join it (otherwise each victim's
    own later alerts would pull unrelated stories into the attacker's incident).

    >>> a.entity_type, a.entity_id = "device_id", "d9"
    >>> a.explanation = {"entities": {"user_id": ["u1", "u2"], "card_id": ["c1"]}}
    >>> alert_entity_keys(a)
    ['device_id:d9', 'card_id:c1']

    An alert about a payee is about the account paid into (:data:`ENTITY_ALIASES`):

    >>> a.entity_type, a.entity_id, a.explanation = "payee_id", "acc_00000042", {}
    >>> alert_entity_keys(a)
    ['account_id:acc_00000042']
    """
    keys: list[str] = []
    if alert.entity_type and alert.entity_id:
        keys.append(f"{ENTITY_ALIASES.get(alert.entity_type, alert.entity_type)}:{alert.entity_id}")
    entities = (alert.explanation or {}).get("entities") or {}
    for name in OWNED_ENTITIES:
        values = entities.get(name) or ()
        if len(values) > 1:
            continue
        for value in values:
            key = f"{name}:{value}"
            if key not in keys:
                keys.append(key)
    return keys


def alert_source_keys(alert: Alert) -> list[str]:
    """The shared places an alert's events came from (addresses, merchants, terminals) and the accounts
    they paid into (payees, :data:`ENTITY_ALIASES`), as ``~type:id`` keys: an alert *about* one of them
    joins this alert's incident, while two alerts that merely came from the same busy address or shop, or
    paid the same payee, do not join each other.

    >>> details = {"src_ip": ["10.0.0.1"], "merchant_id": ["m1"], "payee_id": ["a7"]}
    >>> a = Alert(entity_type="device_id", entity_id="d1", explanation={"entities": details})
    >>> alert_source_keys(a)
    ['~src_ip:10.0.0.1', '~merchant_id:m1', '~account_id:a7']
    """
    entities = (alert.explanation or {}).get("entities") or {}
    keys = [f"~{name}:{value}" for name in SHARED_ENTITIES for value in entities.get(name) or ()]
    for name, target in ENTITY_ALIASES.items():
        keys += [f"~{target}:{value}" for value in entities.get(name) or ()]
    return keys


def _about_place(alert: Alert) -> str | None:
    """The ``type:id`` of the shared place or paid-into account an alert is about, if it is about one."""
    if not alert.entity_type or not alert.entity_id:
        return None
    if alert.entity_type in SHARED_ENTITIES:
        return f"{alert.entity_type}:{alert.entity_id}"
    if alert.entity_type in ENTITY_ALIASES:
        return f"{ENTITY_ALIASES[alert.entity_type]}:{alert.entity_id}"
    return None


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


@functools.cache
def shipped_sequence_rules() -> frozenset[str]:
    """Ids of the sequence rules shipped in ``rules/`` (none when the folder is absent)."""
    from finsecure.detection.rule import load_rules
    from finsecure.platform import RULES_DIR

    if not RULES_DIR.is_dir():
        return frozenset()
    return frozenset(rule.id for rule in load_rules(RULES_DIR).rules if rule.sequence is not None)


class Correlator:
    """Joins alerts into incidents as they arrive.

    Parameters
    ----------
    window_s
        Alerts join an entity's incident when they start at most this long after the entity was last seen.
    max_keys
        Entities remembered; beyond it, those not seen within the window are forgotten.
    sequence_rules
        Ids of sequence rules: an alert of one opens an incident (the whole story of an attack was seen)
        and makes it riskier. By default the shipped ones.
    min_severity
        An alert at least this severe opens an incident on its own; less severe ones are building blocks.
    min_rules
        Building blocks from this many different rules on linked entities within the window open an
        incident together (1: every alert opens one, the policy before building blocks).
    """

    def __init__(
        self,
        *,
        window_s: int = 6 * 3600,
        max_keys: int = 200_000,
        sequence_rules: Collection[str] | None = None,
        min_severity: Severity | str = Severity.high,
        min_rules: int = 2,
    ) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self.min_severity = Severity(min_severity)
        self.min_rules = max(1, min_rules)
        self._sequence_rules = None if sequence_rules is None else frozenset(sequence_rules)
        #: The highest propagated graph risk of ``"<type>:<id>"`` entities (the platform sets it), or None.
        self.graph_risk: Callable[[Iterable[str]], float] | None = None
        self._entity: dict[str, tuple[int, float]] = {}  # key -> (incident id, last seen, epoch s)
        self._sources: dict[str, dict[int, float]] = {}  # shared place -> {incident id: last seen}
        self._merged: dict[int, int] = {}  # incident id -> the incident it was merged into
        self._watermark = 0.0
        # building blocks: alert id -> (its keys, last seen, rule id, event ids); key -> alert ids
        self._pending: dict[int, tuple[list[str], float, str, frozenset[str]]] = {}
        self._pending_of: dict[str, set[int]] = {}
        self._pruned_at = 0.0
        self._reload = False

    @property
    def sequence_rules(self) -> frozenset[str]:
        """Ids of the sequence rules (loaded from ``rules/`` on first use unless given)."""
        if self._sequence_rules is None:
            self._sequence_rules = shipped_sequence_rules()
        return self._sequence_rules

    def reset(self) -> None:
        """Forget everything (after a rolled-back transaction); the next :meth:`process` reloads the
        window from the database first, so a failed write (a locked database) splits no incident."""
        self._entity.clear()
        self._sources.clear()
        self._merged.clear()
        self._pending.clear()
        self._pending_of.clear()
        self._reload = True

    def opens_incident(self, alert: Alert) -> bool:
        """Whether ``alert`` alone is enough to open an incident (severe enough, or a completed sequence).

        >>> import datetime as dt
        >>> c = Correlator(sequence_rules=["seq"])
        >>> c.opens_incident(Alert(rule_id="r", severity=Severity.medium))
        False
        >>> c.opens_incident(Alert(rule_id="seq", severity=Severity.medium))
        True
        >>> c.opens_incident(Alert(rule_id="r", severity=Severity.critical))
        True
        """
        if self.min_rules <= 1 or alert.rule_id in self.sequence_rules:
            return True
        return _RANK[Severity(alert.severity)] >= _RANK[self.min_severity]

    def _add_pending(self, alert: Alert, keys: list[str]) -> None:
        alert_id, seen = alert.id, alert.last_seen.timestamp()
        old = self._pending.get(alert_id)
        events = frozenset(map(str, alert.event_ids or ()))
        self._pending[alert_id] = (keys, max(seen, old[1]) if old else seen, alert.rule_id or "", events)
        for key in keys:
            self._pending_of.setdefault(key, set()).add(alert_id)
        self._watermark = max(self._watermark, seen)

    def _drop_pending(self, alert_id: int) -> None:
        entry = self._pending.pop(alert_id, None)
        if entry is None:
            return
        for key in entry[0]:
            ids = self._pending_of.get(key)
            if ids is not None:
                ids.discard(alert_id)
                if not ids:
                    del self._pending_of[key]

    def _prune_pending(self) -> None:
        if self._watermark - self._pruned_at < self.window_s / 8 and len(self._pending) <= self.max_keys:
            return
        self._pruned_at = self._watermark
        horizon = self._watermark - self.window_s
        for alert_id in [a for a, entry in self._pending.items() if entry[1] < horizon]:
            self._drop_pending(alert_id)

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
        newest = max((alert.last_seen.timestamp() for alert, _ in rows), default=None)
        for alert, incident_id in rows:
            seen = alert.last_seen.timestamp()
            if newest is not None and newest - seen <= self.window_s:
                self._remember(alert_entity_keys(alert) + alert_source_keys(alert), incident_id, seen)
        blocks = db_session.scalars(
            select(Alert)
            .where(~select(IncidentAlert.alert_id).where(IncidentAlert.alert_id == Alert.id).exists())
            .order_by(Alert.last_seen.desc())
            .limit(self.max_keys)
        ).all()
        if blocks:
            newest_block = blocks[0].last_seen.timestamp()
            for alert in blocks:
                seen = alert.last_seen.timestamp()
                if newest_block - seen <= self.window_s:
                    self._add_pending(alert, alert_entity_keys(alert))
        return len(rows) + len(blocks)

    def _remember(self, keys: Iterable[str], incident_id: int, seen: float) -> None:
        for key in keys:
            if key.startswith("~"):  # a shared place: every incident that came from it
                places = self._sources.setdefault(key, {})
                places[incident_id] = max(seen, places.get(incident_id, seen))
                continue
            old = self._entity.get(key)
            self._entity[key] = (incident_id, max(seen, old[1]) if old else seen)
        self._watermark = max(self._watermark, seen)

    def _came_from(self, key: str, start: float) -> set[int]:
        """The open incidents whose alerts came from the shared place ``key`` within the window."""
        places = self._sources.get(key) or {}
        return {self._root(i) for i, seen in places.items() if start - seen <= self.window_s}

    def _expire(self) -> None:
        if len(self._entity) <= self.max_keys:
            return
        horizon = self._watermark - self.window_s
        self._entity = {k: v for k, v in self._entity.items() if v[1] >= horizon}
        self._sources = {
            k: kept
            for k, v in self._sources.items()
            if (kept := {i: t for i, t in v.items() if t >= horizon})
        }
        live = {v[0] for v in self._entity.values()} | {i for v in self._sources.values() for i in v}
        self._merged = {k: v for k, v in self._merged.items() if k in live or v in live}

    def process(self, *, db_session: Session, alerts: Sequence[Alert]) -> list[int]:
        """Link ``alerts`` (just created or updated) to incidents, creating and merging as needed, and
        refresh the incidents they touch; in the caller's transaction. Returns the touched incident ids."""
        if not alerts:
            return []
        if self._reload:
            self._reload = False
            self.warm_up(db_session=db_session)
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
        in_batch = set(ids)
        about_place: dict[str, list[int]] = {}
        for alert in alerts:
            place = _about_place(alert)
            if place is not None:
                about_place.setdefault(place, []).append(alert.id)
        reached: set[int] = set()  # building blocks (earlier alerts in no incident) linked to this batch
        for alert in alerts:
            node = f"a{alert.id}"
            keys = keys_of[alert.id] = alert_entity_keys(alert)
            start = alert.first_seen.timestamp()
            # an alert about an address meets the alerts whose events came from it, both ways
            for source in alert_source_keys(alert):
                incident = self._live(source[1:], start)  # an incident about that place
                if incident is not None:
                    candidates.add(incident)
                    uf.union(node, f"i{incident:012d}")
                for other in about_place.get(source[1:], ()):
                    uf.union(node, f"a{other}")
            place = _about_place(alert)
            if place is not None:
                for incident in self._came_from(f"~{place}", start):
                    candidates.add(incident)
                    uf.union(node, f"i{incident:012d}")
            todo = list(keys)
            while todo:
                key = todo.pop()
                uf.union(node, f"k{key}")
                incident = self._live(key, start)
                if incident is not None:
                    candidates.add(incident)
                    uf.union(node, f"i{incident:012d}")
                for block in self._pending_of.get(key, ()):
                    entry = self._pending[block]
                    if block in in_batch or block in reached or start - entry[1] > self.window_s:
                        continue
                    reached.add(block)
                    uf.union(node, f"a{block}")
                    todo.extend(entry[0])
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
        blocks_of: dict[str, list[int]] = {}
        for block in reached:
            blocks_of.setdefault(uf.find(f"a{block}"), []).append(block)
        # alerts already in a closed incident stay there; they only refresh it
        target: dict[str, int] = {}
        new_keys: dict[str, str] = {}
        waiting: list[str] = []  # components that stay building blocks
        for root, members in components.items():
            open_ones = incidents_of.get(root)
            if open_ones:
                target[root] = min(open_ones)
            elif all(a.id in linked for a in members):
                continue
            elif self._promoted(members, blocks_of.get(root, ())):
                new_keys[root] = f"corr-{uuid.uuid4().hex}"
            else:
                waiting.append(root)
        for root in waiting:
            for alert in components.pop(root):
                if alert.id not in linked:
                    self._add_pending(alert, keys_of[alert.id])
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
                    self._drop_pending(alert.id)
            last = max(a.last_seen.timestamp() for a in members)
            self._remember((k for a in members for k in keys_of[a.id] + alert_source_keys(a)), into, last)
            for block in blocks_of.get(root, ()):  # the building blocks it reached join it
                links.append({"incident_id": into, "alert_id": block, "added_at": now})
                self._remember(self._pending[block][0], into, self._pending[block][1])
                self._drop_pending(block)
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
        self._prune_pending()
        return sorted(touched)

    def _promoted(self, members: Sequence[Alert], blocks: Iterable[int]) -> bool:
        """Whether new alerts and the building blocks they reach open an incident together."""
        if any(self.opens_incident(alert) for alert in members):
            return True
        rules = {alert.rule_id for alert in members} | {self._pending[b][2] for b in blocks}
        if len(rules) < self.min_rules:
            return False
        # rules that fired on the very same event are one observation seen twice, not corroboration
        events = {str(e) for alert in members for e in alert.event_ids or ()}
        events.update(e for b in blocks for e in self._pending[b][3])
        return len(events) >= 2

    def _graph_risk_of(self, entities: Iterable[str]) -> float:
        if self.graph_risk is None:
            return 0.0
        try:
            return self.graph_risk(entities)
        except Exception:  # graph risk is a bonus term: an incident is never held up by it
            logger.exception("could not look up the graph risk of an incident's entities")
            return 0.0

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
        sequence_rules = self.sequence_rules
        for incident_id, alert in rows:
            facts.setdefault(incident_id, []).append(
                AlertFacts(
                    title=alert.title, severity=alert.severity.value, domain=alert.domain,
                    entity_type=alert.entity_type, entity_id=alert.entity_id, first_seen=alert.first_seen,
                    last_seen=alert.last_seen, count=alert.count,
                    entities=(alert.explanation or {}).get("entities") or {},
                    sequence=alert.rule_id in sequence_rules,
                )
            )  # fmt: skip
        now = utcnow()
        changes = []
        for incident_id, alert_facts in facts.items():
            entities = sorted({f"{a.entity_type}:{a.entity_id}" for a in alert_facts if a.entity_id})
            d = describe_incident(alert_facts, graph_risk=self._graph_risk_of(entities))
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
