"""Builders shared by the alert, correlation and incident tests."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import polars as pl
from sqlalchemy.orm import Session

from finsecure.detection.engine import HITS_SCHEMA

T0 = dt.datetime(2026, 11, 24, 10, 5, tzinfo=dt.UTC)


def uid(prefix: str) -> str:
    """A unique id, so that tests on the shared database never meet each other's rows."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def hit(
    *,
    rule_id: str = "rule-a",
    entity_type: str = "card_id",
    entity_id: str = "card-1",
    event_id: str | None = None,
    minutes: float = 0.0,
    domain: str = "payment",
    severity: str = "high",
    title: str = "Card used far from home",
    explanation: str = "Paid 10.00",
    **context: str,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "rule_id": rule_id,
        "rule_title": title,
        "domain": domain,
        "event_id": event_id or uid("ev"),
        "entity_type": entity_type,
        "entity_id": entity_id,
        "ts": T0 + dt.timedelta(minutes=minutes),
        "severity": severity,
        "explanation": explanation,
    }
    row.update({f"ctx__{k}": v for k, v in context.items()})
    return row


def hits_frame(*rows: dict[str, Any]) -> pl.DataFrame:
    context = sorted({k for r in rows for k in r if k.startswith("ctx__")})
    schema = {**dict(HITS_SCHEMA), **{c: pl.String() for c in context}}
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)


def session_factory(db_session: Session) -> Callable[[], Session]:
    """Sessions on the test's connection: their commits are savepoints rolled back with the test."""
    return lambda: Session(bind=db_session.connection(), join_transaction_mode="create_savepoint")
