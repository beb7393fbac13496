"""Analysts' verdicts as training labels: every event of every alert of a resolved incident gets the
incident's disposition (true positive → 1, false positive or benign → 0).

The ML work calls :func:`training_labels`; ``GET /api/labels`` serves the same rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.incident.models import Disposition, Incident, IncidentAlert, IncidentStatus

__all__ = ["TrainingLabel", "label_of", "training_labels"]


@dataclass(frozen=True, slots=True)
class TrainingLabel:
    event_id: str
    label: int
    disposition: Disposition
    entity_type: str | None
    entity_id: str | None
    rule_id: str | None
    domain: str
    incident_id: int
    alert_id: int
    labelled_at: dt.datetime


def label_of(disposition: Disposition) -> int:
    """1 for a real attack or fraud, 0 otherwise.

    >>> label_of(Disposition.true_positive), label_of(Disposition.benign)
    (1, 0)
    """
    return 1 if disposition == Disposition.true_positive else 0


def training_labels(
    db_session: Session, *, since: dt.datetime | None = None, limit: int = 1_000_000
) -> list[TrainingLabel]:
    """One label per event id, from incidents resolved with a disposition (merged ones excluded).

    An event in both a true-positive and a false-positive incident is labelled 1: a confirmed attack wins.
    ``since`` keeps incidents resolved at or after that time. Ordered by resolution time, then event id.
    """
    query = (
        select(Incident.id, Incident.disposition, Incident.closed_at, Incident.updated_at, Alert)
        .join(IncidentAlert, IncidentAlert.incident_id == Incident.id)
        .join(Alert, Alert.id == IncidentAlert.alert_id)
        .where(
            Incident.status == IncidentStatus.resolved,
            Incident.disposition.is_not(None),
            Incident.merged_into_id.is_(None),
        )
        .order_by(Incident.id, Alert.id)
    )
    if since is not None:
        query = query.where(Incident.closed_at >= since)
    labels: dict[str, TrainingLabel] = {}
    for incident_id, disposition, closed_at, updated_at, alert in db_session.execute(query):
        if disposition is None:  # excluded by the query; narrows the type
            continue
        for event_id in alert.event_ids or ():
            key = str(event_id)
            old = labels.get(key)
            label = label_of(disposition)
            if old is not None and old.label >= label:
                continue
            labels[key] = TrainingLabel(
                event_id=key,
                label=label,
                disposition=disposition,
                entity_type=alert.entity_type,
                entity_id=alert.entity_id,
                rule_id=alert.rule_id,
                domain=alert.domain,
                incident_id=incident_id,
                alert_id=alert.id,
                labelled_at=closed_at or updated_at,
            )
            if len(labels) >= limit:
                break
        if len(labels) >= limit:
            break
    return sorted(labels.values(), key=lambda t: (t.labelled_at, t.event_id))
