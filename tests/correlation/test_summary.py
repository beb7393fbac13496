"""The incident's title and summary are read one after the other: no phrase may be said twice."""

from __future__ import annotations

import datetime as dt
import re

from finsecure.correlation.summary import AlertFacts, describe_incident

T0 = dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)


def _alert(title: str, domain: str = "payment", minutes: int = 0, *, sequence: bool = False) -> AlertFacts:
    at = T0 + dt.timedelta(minutes=minutes)
    return AlertFacts(title, "high", domain, "user_id", "u1", at, at, sequence=sequence)


def _phrases(text: str) -> list[str]:
    """The sentences and list items of a text, normalised."""
    return [p.strip().lower() for p in re.split(r"[.;:]", text) if len(p.strip()) > 3]


def _repeated(*texts: str) -> list[str]:
    seen: set[str] = set()
    repeats = []
    for phrase in (p for text in texts for p in _phrases(text)):
        if phrase in seen:
            repeats.append(phrase)
        seen.add(phrase)
    return repeats


def test_describe_incident__one_alert_says_its_title_once() -> None:
    d = describe_incident([_alert("Cloud audit trail stopped or deleted", "cloud")])

    assert d.title == "User u1: Cloud audit trail stopped or deleted"
    assert d.summary == "1 alert in cloud."
    assert not _repeated(d.title, d.summary)


def test_describe_incident__sequence_story_is_not_listed_twice() -> None:
    alerts = [
        _alert("Sign-in from a new device", "auth"),
        _alert("New payee added", "auth", 5),
        _alert("Account takeover then payout", "payment", 30, sequence=True),
        _alert("Large transfer", "payment", 30),
    ]

    d = describe_incident(alerts)

    assert d.summary.count("Account takeover then payout") == 1
    assert d.summary.count("Sign-in from a new device") + d.title.count("Sign-in from a new device") == 1
    assert "The steps of a known attack happened in order: Account takeover then payout." in d.summary
    assert not _repeated(d.title, d.summary)


def test_describe_incident__lists_the_other_alerts_in_time_order() -> None:
    alerts = [_alert("A first", minutes=0), _alert("B second", minutes=3), _alert("C third", minutes=9)]

    d = describe_incident(alerts)

    assert d.title == "User u1: A first, and 2 more alerts"
    assert d.summary == "3 alerts in payment within 9 minutes. Also: B second; C third."
