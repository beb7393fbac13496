"""What ``GET /api/health`` checks: the database (reachable, schema up to date, or only busy) and, in a
process that runs the pipeline, whether its writes are done.

A *busy* database is not a *down* one. SQLite lets one connection write at a time, so while the pipeline
commits a batch another writer (or, rarely, a reader) can wait on the lock; PostgreSQL can make a
statement wait on a lock too. The health check reads with a short lock wait, tries twice, and reports a
database that answered but stayed locked as ``busy``: the platform works, so this is not a reason to
answer 503 and have a load balancer take the process out. A database that does not answer at all, or
whose schema is behind, is ``down`` / ``outdated``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from finsecure.core import migrate
from finsecure.system.outbox import OutboxStatus, is_db_busy

logger = logging.getLogger(__name__)

ComponentState = Literal["ok", "busy", "outdated", "degraded", "down"]

#: How long the health check's read may wait on a lock, per try.
LOCK_WAIT_MS = 1000
#: Tries of the health check's read before a locked database is reported ``busy``.
TRIES = 2
#: Writes that wait on a busy database longer than this make the pipeline ``degraded``, not ``busy``.
BUSY_GRACE_S = 30.0
#: What the database's busy_timeout goes back to after the check (as set by ``create_db_engine``).
_SQLITE_BUSY_TIMEOUT_MS = 5000

#: States that fail the check (HTTP 503): something does not work, as opposed to being slow for a moment.
FAILING: frozenset[str] = frozenset({"outdated", "degraded", "down"})


@dataclass(frozen=True, slots=True)
class DatabaseCheck:
    """The database's state, in plain words, and the schema revision it is at (``None`` when unknown)."""

    status: ComponentState
    detail: str
    revision: str | None


@contextmanager
def _short_lock_wait(conn: Connection) -> Iterator[None]:
    """Wait at most :data:`LOCK_WAIT_MS` on a lock within ``conn``, then put the usual wait back."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.exec_driver_sql(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
            except SQLAlchemyError:  # never hand a connection with the short wait back to the pool
                conn.invalidate()
        return
    if dialect == "postgresql":  # SET LOCAL: gone with the check's own transaction
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{2 * LOCK_WAIT_MS}ms'")
    yield


def _read(engine: Engine) -> str | None:
    with engine.connect() as conn, _short_lock_wait(conn):
        conn.execute(text("SELECT 1"))
        return MigrationContext.configure(conn).get_current_revision()


def check_database(*, engine: Engine, tries: int = TRIES) -> DatabaseCheck:
    """Whether the database answers, is busy, or is down, and whether its schema is the one this version
    needs.

    Examples
    --------
    >>> from finsecure.core.database import create_db_engine
    >>> engine = create_db_engine("sqlite://")
    >>> check = check_database(engine=engine)
    >>> check.status, check.revision
    ('outdated', None)
    """
    for attempt in range(1, tries + 1):
        try:
            revision = _read(engine)
        except SQLAlchemyError as exc:
            if not is_db_busy(exc):
                logger.warning("health: database unreachable: %s", type(exc).__name__)
                return DatabaseCheck(status="down", detail="the database does not answer", revision=None)
            logger.info("health: the database is busy (try %d of %d)", attempt, tries)
            time.sleep(0.05 * attempt)
            continue
        head = migrate.head_revision()
        if revision == head:
            return DatabaseCheck(status="ok", detail=engine.dialect.name, revision=revision)
        return DatabaseCheck(
            status="outdated",
            detail=f"the database schema is at {revision or 'nothing'}, this version needs {head}: "
            "run `finsecure migrate`",
            revision=revision,
        )
    return DatabaseCheck(
        status="busy",
        detail=f"{engine.dialect.name}: the database answers but is busy with other writes; "
        "reads and writes wait a moment and go through",
        revision=None,
    )


def writes_state(
    outbox: OutboxStatus, *, now: dt.datetime | None = None, grace_s: float = BUSY_GRACE_S
) -> ComponentState:
    """The pipeline's state as its database writes show it.

    ``busy`` while writes wait on a busy database for less than ``grace_s``; ``degraded`` when they wait
    on a database that does not answer, or have waited on a busy one longer than that.

    Examples
    --------
    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> waiting = OutboxStatus("degraded", 12, 1, 0, 0, 0, t, "OperationalError", busy=True)
    >>> writes_state(waiting, now=t + dt.timedelta(seconds=2))
    'busy'
    >>> writes_state(waiting, now=t + dt.timedelta(minutes=5))
    'degraded'
    """
    if outbox.state == "ok":
        return "ok"
    if outbox.busy and outbox.down_since is not None:
        waited = ((now or dt.datetime.now(dt.UTC)) - outbox.down_since).total_seconds()
        if waited < grace_s:
            return "busy"
    return "degraded"
