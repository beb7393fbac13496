from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.core.enums import Severity
from finsecure.incident.models import Disposition, Incident, IncidentAlert
from finsecure.lake.writer import LakeWriter
from finsecure.ml.labels import analyst_labels, apply_labels, lake_frame


def _incident(db_session: Session, key: str, disposition: Disposition | None, event_ids: list[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    incident = Incident(
        title="Fraud", severity=Severity.high, domains=["payment"], labels=[], evidence={},
        first_seen=now, last_seen=now, disposition=disposition,
    )  # fmt: skip
    alert = Alert(
        alert_key=key, rule_id="r", title="t", severity=Severity.high, domain="payment",
        entity_type="card_id", entity_id="c1", event_ids=event_ids, explanation={},
        first_seen=now, last_seen=now,
    )  # fmt: skip
    db_session.add_all([incident, alert])
    db_session.flush()
    db_session.add(IncidentAlert(incident_id=incident.id, alert_id=alert.id))
    db_session.flush()


def test_analyst_labels__verdicts_label_the_alerts_events(db_session: Session) -> None:
    _incident(db_session, "k1", Disposition.true_positive, ["e1", "e2"])
    _incident(db_session, "k2", Disposition.false_positive, ["e2", "e3"])
    _incident(db_session, "k3", None, ["e4"])
    assert analyst_labels(db_session=db_session) == {"e1": 1, "e2": 1, "e3": 0}


def test_lake_frame__reads_a_domain_in_time_order_across_files(tmp_path: Path) -> None:
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    later = pl.DataFrame({"event_id": ["b"], "ts": [t0 + dt.timedelta(days=1)], "score": [0.5]})
    earlier = pl.DataFrame({"event_id": ["a"], "ts": [t0]})
    with LakeWriter(tmp_path) as writer:
        writer.write("payment", later)
        writer.write("payment", earlier)
    frame = apply_labels(lake_frame(tmp_path, "payment"), {"b": 1})
    assert frame["event_id"].to_list() == ["a", "b"]
    assert frame["label"].to_list() == [None, 1]
    with pytest.raises(FileNotFoundError):
        lake_frame(tmp_path, "auth")
