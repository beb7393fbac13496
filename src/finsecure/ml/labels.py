"""Analysts' verdicts as training labels, and the event lake as training data.

When an analyst resolves an incident as a true positive, every event of its alerts becomes a positive
training example; false positive or benign makes them negatives (a positive verdict wins when an event
sits in incidents with both). ``finsecure train --dataset lake --domain D`` reads the domain's events from
the lake (they were stored with the feature columns the pipeline computed, so training sees exactly what
serving saw), applies these labels over the events' own ``label`` column, and fits on the labelled rows.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.event.schemas import Domain
from finsecure.incident.models import Disposition, Incident, IncidentAlert

__all__ = ["analyst_labels", "apply_labels", "lake_frame"]


def analyst_labels(*, db_session: Session) -> dict[str, int]:
    """``{event_id: 1 or 0}`` from resolved incidents' dispositions."""
    rows = db_session.execute(
        select(Incident.disposition, Alert.event_ids)
        .join(IncidentAlert, IncidentAlert.incident_id == Incident.id)
        .join(Alert, Alert.id == IncidentAlert.alert_id)
        .where(Incident.disposition.is_not(None))
    )
    labels: dict[str, int] = {}
    for disposition, event_ids in rows:
        value = 1 if disposition == Disposition.true_positive else 0
        for event_id in event_ids or []:
            key = str(event_id)
            labels[key] = max(labels.get(key, 0), value)
    return labels


def apply_labels(frame: pl.DataFrame, labels: dict[str, int]) -> pl.DataFrame:
    """``frame`` with ``label`` set from ``labels`` where the event id is known (others unchanged).

    >>> f = pl.DataFrame({"event_id": ["a", "b", "c"], "label": [None, 0, 1]},
    ...                  schema_overrides={"label": pl.Int8})
    >>> apply_labels(f, {"a": 1, "c": 0})["label"].to_list()
    [1, 0, 0]
    """
    if not labels:
        return frame
    known = pl.DataFrame(
        {"event_id": list(labels), "_verdict": list(labels.values())},
        schema={"event_id": pl.String, "_verdict": pl.Int8},
    )
    joined = frame.join(known, on="event_id", how="left", maintain_order="left")
    label = pl.col("label") if "label" in frame.columns else pl.lit(None, pl.Int8)
    return joined.with_columns(pl.coalesce("_verdict", label).cast(pl.Int8).alias("label")).drop("_verdict")


def lake_frame(lake_dir: Path, domain: Domain | str) -> pl.DataFrame:
    """Every event of ``domain`` in the lake, in time order (files with different columns are aligned).

    Raises
    ------
    FileNotFoundError
        When the lake holds no file for the domain.
    """
    files = sorted((lake_dir / f"domain={Domain(domain).value}").rglob("*.parquet"))
    files = [f for f in files if not f.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"the lake at {lake_dir} holds no {Domain(domain).value} events")
    frames = [pl.read_parquet(f, hive_partitioning=False) for f in files]
    return pl.concat(frames, how="diagonal_relaxed").sort("ts", maintain_order=True)
