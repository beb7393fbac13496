"""How an incident is scored and described, in plain words.

Risk (0 to 100): start from the worst alert's severity (low 20, medium 40, high 60, critical 80); add 5
for each alert beyond the first (at most 10), 10 for each domain beyond the first (at most 20) and 10
when a sequence rule completed (the whole story of an attack was seen, not one odd event), and up to 10
when one of its entities sits close, in the entity graph, to entities already confirmed as fraud or
blocked (the propagated graph risk, 0 to 1, times 10); never more than 100. So one high alert is 60,
and a high sign-in alert plus a high payment alert about the same customer is 60 + 5 + 10 = 75. The
incident's severity follows from its risk: 80 and above critical, 60 high, 40 medium, below that low.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from finsecure.core.enums import Severity

_BASE = {"low": 20.0, "medium": 40.0, "high": 60.0, "critical": 80.0}
_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
#: How an entity column reads in a sentence.
ENTITY_LABELS = {
    "user_id": "User",
    "account_id": "Account",
    "card_id": "Card",
    "device_id": "Device",
    "src_ip": "IP address",
    "merchant_id": "Merchant",
    "terminal_id": "Terminal",
    "payee_id": "Payee",
}


def incident_risk(
    *, max_severity: str, alerts: int, domains: int, sequences: int = 0, graph_risk: float = 0.0
) -> float:
    """Risk of an incident from its worst severity, number of alerts and domains, completed sequences and
    the propagated graph risk of its entities (0 to 1).

    >>> incident_risk(max_severity="high", alerts=1, domains=1)
    60.0
    >>> incident_risk(max_severity="high", alerts=2, domains=2)
    75.0
    >>> incident_risk(max_severity="critical", alerts=9, domains=4)
    100.0
    >>> incident_risk(max_severity="high", alerts=2, domains=2, sequences=1)
    85.0
    >>> incident_risk(max_severity="high", alerts=1, domains=1, graph_risk=0.5)
    65.0
    """
    risk = (
        _BASE.get(max_severity, 20.0)
        + 5.0 * min(max(alerts - 1, 0), 2)
        + 10.0 * min(max(domains - 1, 0), 2)
        + (10.0 if sequences > 0 else 0.0)
        + 10.0 * min(max(graph_risk, 0.0), 1.0)
    )
    return min(risk, 100.0)


def risk_severity(risk: float) -> Severity:
    """The severity an incident of this risk is shown with.

    >>> risk_severity(75.0).value
    'high'
    """
    if risk >= 80:
        return Severity.critical
    if risk >= 60:
        return Severity.high
    if risk >= 40:
        return Severity.medium
    return Severity.low


@dataclass(frozen=True)
class AlertFacts:
    """What the description needs to know about one alert of an incident."""

    title: str
    severity: str
    domain: str
    entity_type: str | None
    entity_id: str | None
    first_seen: dt.datetime
    last_seen: dt.datetime
    count: int = 1
    entities: dict[str, list[str]] = field(default_factory=dict)
    sequence: bool = False
    """The alert comes from a sequence rule (several steps of one attack, in order)."""


@dataclass(frozen=True)
class IncidentDescription:
    title: str
    summary: str
    severity: Severity
    risk: float
    domains: list[str]
    first_seen: dt.datetime
    last_seen: dt.datetime
    main_entity: tuple[str, str] | None


def _duration(seconds: float) -> str:
    """A span of time as people say it.

    >>> _duration(30), _duration(40 * 60), _duration(3 * 3600 + 60), _duration(3 * 86400)
    ('under a minute', '40 minutes', '3 hours', '3 days')
    """
    if seconds < 60:
        return "under a minute"
    if seconds < 3600:
        minutes = round(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    if seconds < 86400:
        hours = round(seconds / 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    days = round(seconds / 86400)
    return f"{days} day{'s' if days != 1 else ''}"


def _and(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def describe_incident(alerts: Sequence[AlertFacts], *, graph_risk: float = 0.0) -> IncidentDescription:
    """Title, summary, risk and severity of an incident made of ``alerts`` (at least one); ``graph_risk``
    is the highest propagated graph risk of its entities (see :mod:`finsecure.graph.risk`).

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)
    >>> a = AlertFacts("Sign-in from a new device in a new country", "high", "auth", "user_id", "u1", t, t)
    >>> b = AlertFacts("Large transfer, many times the customer's usual", "high", "payment", "user_id", "u1",
    ...                t + dt.timedelta(minutes=40), t + dt.timedelta(minutes=40))
    >>> d = describe_incident([a, b])
    >>> d.title
    'User u1: Sign-in from a new device in a new country, and 1 more alert'
    >>> print(d.summary)
    2 alerts across auth and payment within 40 minutes. Also: Large transfer, many times the customer's usual.
    >>> d.risk, d.severity.value
    (75.0, 'high')
    """
    if not alerts:
        raise ValueError("an incident needs at least one alert")
    worst = max(alerts, key=lambda a: (_RANK.get(a.severity, 0), -a.first_seen.timestamp()))
    domains = sorted({a.domain for a in alerts})
    first = min(a.first_seen for a in alerts)
    last = max(a.last_seen for a in alerts)
    sequences = [a for a in alerts if a.sequence]
    risk = incident_risk(
        max_severity=worst.severity,
        alerts=len(alerts),
        domains=len(domains),
        sequences=len(sequences),
        graph_risk=graph_risk,
    )
    mains = Counter((a.entity_type, a.entity_id) for a in alerts if a.entity_type and a.entity_id)
    main = mains.most_common(1)[0][0] if mains else None
    who = (
        f"{ENTITY_LABELS.get(main[0], main[0])} {main[1]}"
        if main and main[0] and main[1]
        else "Unknown entity"
    )
    more = len(alerts) - 1
    title = worst.title if more == 0 else f"{worst.title}, and {more} more alert{'s' if more > 1 else ''}"
    merchants = {m for a in alerts for m in a.entities.get("merchant_id", [])}
    countries = {c for a in alerts for c in a.entities.get("country", [])}
    spread = ""
    if len(merchants) > 1:
        spread += f" at {len(merchants)} merchants"
    if len(countries) > 1:
        spread += f" in {len(countries)} countries"
    count = f"{len(alerts)} alert{'s' if len(alerts) > 1 else ''}"
    span = (last - first).total_seconds()
    within = "" if len(alerts) == 1 else " within a minute" if span < 60 else f" within {_duration(span)}"
    # The title already says who and names the worst alert, and the sequence sentence names the attack
    # stories: the summary adds what they do not say, so that no phrase is read twice.
    stories = list(dict.fromkeys(a.title for a in sorted(sequences, key=lambda a: a.first_seen)))
    said = {worst.title, *stories}
    titles = dict.fromkeys(a.title for a in sorted(alerts, key=lambda a: a.first_seen))
    others = [title for title in titles if title not in said]
    where = f"across {_and(domains)}" if len(domains) > 1 else f"in {_and(domains)}"
    summary = f"{count} {where}{within}{spread}."
    if others:
        shown = "; ".join(others[:5]) + (f"; and {len(others) - 5} more" if len(others) > 5 else "")
        summary += f" Also: {shown}."
    if stories:
        summary += f" The steps of a known attack happened in order: {_and(stories)}."
    if graph_risk >= 0.3:
        summary += " It involves an entity closely linked to entities already confirmed as fraud or blocked."
    return IncidentDescription(
        title=f"{who}: {title}"[:256],
        summary=summary,
        severity=risk_severity(risk),
        risk=risk,
        domains=domains,
        first_seen=first,
        last_seen=last,
        main_entity=(str(main[0]), str(main[1])) if main else None,
    )
