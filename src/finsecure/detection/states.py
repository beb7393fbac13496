"""Which detection rules are switched off: one row per rule in ``rule_states``, read live by the pipeline.

Rules themselves stay as YAML files (``rules/``); what people change from the dashboard is only whether a
rule runs. A rule without a row is on. The running pipeline picks a change up without a restart: the
API tells the rule sets of its own process at once (:func:`apply_to_pipeline`), and every rule set
built by :func:`finsecure.platform.default_steps` also re-reads the table every few seconds
(:class:`DisabledRulesReader`), which is how ``finsecure worker`` processes learn about it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

from sqlalchemy import Boolean, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from finsecure.core.database import Base, utcnow

__all__ = ["DisabledRulesReader", "RuleState", "apply_to_pipeline", "disabled_rule_ids", "set_enabled"]

logger = logging.getLogger(__name__)


class RuleState(Base):
    """Whether one rule runs (no row: it does)."""

    __tablename__ = "rule_states"

    rule_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


def disabled_rule_ids(*, db_session: Session) -> frozenset[str]:
    """Ids of the rules switched off."""
    return frozenset(db_session.scalars(select(RuleState.rule_id).where(RuleState.enabled.is_(False))))


def states(*, db_session: Session) -> dict[str, RuleState]:
    """Every stored rule state, by rule id."""
    return {row.rule_id: row for row in db_session.scalars(select(RuleState))}


def set_enabled(*, db_session: Session, rule_id: str, enabled: bool, by: str) -> tuple[bool, RuleState]:
    """Switch a rule on or off (the caller commits). Returns whether it was on before, and the row."""
    row = db_session.get(RuleState, rule_id)
    before = True if row is None else row.enabled
    if row is None:
        row = RuleState(rule_id=rule_id, enabled=enabled, updated_at=utcnow(), updated_by=by)
        db_session.add(row)
    else:
        row.enabled, row.updated_at, row.updated_by = enabled, utcnow(), by
    db_session.flush()
    return before, row


class DisabledRulesReader:
    """Reads the switched-off rule ids for a running :class:`~finsecure.detection.RuleSet`.

    A failure (database away) is logged once and gives ``None``: the rule set keeps what it had.
    """

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory
        self._failing = False

    def __call__(self) -> frozenset[str] | None:
        try:
            with self.session_factory() as session:
                ids = disabled_rule_ids(db_session=session)
        except Exception:
            if not self._failing:
                logger.warning("could not read which rules are switched off; keeping the last known state")
            self._failing = True
            return None
        self._failing = False
        return ids


def apply_to_pipeline(steps: Iterable[object], disabled: frozenset[str]) -> int:
    """Give ``disabled`` to the rule set of every detection step in ``steps``; how many were told."""
    from finsecure.detection.engine import DetectionStep

    told = 0
    for step in steps:
        if isinstance(step, DetectionStep):
            step.rules.set_disabled(disabled)
            told += 1
    return told
