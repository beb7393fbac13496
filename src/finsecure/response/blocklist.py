"""The block list: entities that enforcement points should refuse, each until its expiry.

Entries are read by enforcement points through the API and by :class:`BlockedFlagStep`, which marks
later events of a blocked entity in the pipeline (a ``blocked`` column) without a query per batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import polars as pl
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from finsecure.audit import service as audit_service
from finsecure.audit.service import Actor
from finsecure.core.database import fetch_page, utcnow
from finsecure.entity.models import Entity
from finsecure.pipeline.batch import Batch, Step
from finsecure.response.models import BlockEntry

__all__ = ["BLOCKABLE", "BlockedFlagStep", "active_keys", "block", "get", "get_all", "unblock"]

logger = logging.getLogger(__name__)

#: Entity columns of events that a block can name.
BLOCKABLE: tuple[str, ...] = (
    "user_id", "account_id", "card_id", "device_id", "src_ip", "merchant_id", "terminal_id", "payee_id",
)  # fmt: skip

_generation = 0


def _bump() -> None:
    global _generation
    _generation += 1


def get(*, db_session: Session, entry_id: int) -> BlockEntry | None:
    return db_session.get(BlockEntry, entry_id)


def get_all(
    *,
    db_session: Session,
    offset: int,
    limit: int,
    entity_type: str | None = None,
    entity_id: str | None = None,
    include_expired: bool = False,
) -> tuple[list[BlockEntry], int]:
    """Entries, newest first; only active ones unless ``include_expired``."""
    query = select(BlockEntry)
    if not include_expired:
        now = utcnow()
        query = query.where((BlockEntry.expires_at.is_(None)) | (BlockEntry.expires_at > now))
    if entity_type is not None:
        query = query.where(BlockEntry.entity_type == entity_type)
    if entity_id is not None:
        query = query.where(BlockEntry.entity_id == entity_id)
    return fetch_page(db_session, query, order_by=[BlockEntry.id.desc()], offset=offset, limit=limit)


def _mark_entity(db_session: Session, entity_type: str, entity_id: str, blocked: bool) -> None:
    db_session.execute(
        update(Entity)
        .where(Entity.entity_type == entity_type, Entity.key == entity_id)
        .values(blocked=blocked)
    )


def block(
    *,
    db_session: Session,
    entity_type: str,
    entity_id: str,
    reason: str,
    ttl: dt.timedelta | None,
    actor: Actor,
    action_id: int | None = None,
) -> BlockEntry:
    """Block an entity until now + ``ttl`` (forever when ``None``); blocking it again renews the entry.
    Audited; the caller commits."""
    now = utcnow()
    expires = None if ttl is None else now + ttl
    entry = db_session.scalar(
        select(BlockEntry).where(BlockEntry.entity_type == entity_type, BlockEntry.entity_id == entity_id)
    )
    before = None
    if entry is None:
        entry = BlockEntry(
            entity_type=entity_type, entity_id=entity_id, reason=reason, created_by=actor.label
        )
        db_session.add(entry)
    else:
        before = {
            "reason": entry.reason,
            "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
        }
    entry.reason, entry.created_by, entry.created_at = reason, actor.label, now
    entry.expires_at, entry.action_id = expires, action_id
    _mark_entity(db_session, entity_type, entity_id, True)
    db_session.flush()
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="blocklist.add",
        target_type="blocklist",
        target_id=f"{entity_type}:{entity_id}"[:128],
        before=before,
        after={"reason": reason, "expires_at": expires.isoformat() if expires else None},
    )
    _bump()
    return entry


def unblock(*, db_session: Session, entry: BlockEntry, actor: Actor) -> None:
    """Remove an entry (audited; the caller commits)."""
    audit_service.record(
        db_session=db_session,
        actor=actor,
        action="blocklist.remove",
        target_type="blocklist",
        target_id=f"{entry.entity_type}:{entry.entity_id}"[:128],
        before={"reason": entry.reason},
    )
    _mark_entity(db_session, entry.entity_type, entry.entity_id, False)
    db_session.delete(entry)
    _bump()


def active_keys(db_session: Session) -> dict[str, frozenset[str]]:
    """Blocked ids per entity type, active now."""
    now = utcnow()
    rows = db_session.execute(
        select(BlockEntry.entity_type, BlockEntry.entity_id).where(
            (BlockEntry.expires_at.is_(None)) | (BlockEntry.expires_at > now)
        )
    ).all()
    keys: dict[str, set[str]] = {}
    for entity_type, entity_id in rows:
        keys.setdefault(entity_type, set()).add(entity_id)
    return {k: frozenset(v) for k, v in keys.items()}


def _tables(keys: dict[str, frozenset[str]]) -> dict[str, pl.DataFrame]:
    """Per entity type, a frame of blocked ids to join events against (built once per reload)."""
    return {
        column: pl.DataFrame(
            {"__key": sorted(ids), "__blocked": [True] * len(ids)},
            schema={"__key": pl.String, "__blocked": pl.Boolean},
        )
        for column, ids in keys.items()
    }


class BlockedFlagStep(Step):
    """Adds a boolean ``blocked`` column: true for events naming any blocked entity.

    The list is reloaded every ``refresh_s`` seconds (at once after a change in this process), on the
    pipeline thread but only then; between reloads the step is a few vectorised ``is_in`` per batch.
    A failed reload keeps the previous list.

    Examples
    --------
    >>> import datetime as dt
    >>> from finsecure.event.schemas import Domain
    >>> step = BlockedFlagStep(None, keys={"card_id": frozenset({"c2"})})
    >>> frame = pl.DataFrame({"card_id": ["c1", "c2", None]})
    >>> step.process(Batch(Domain.payment, frame, source="doc")).frame["blocked"].to_list()
    [False, True, False]
    """

    step_id = "blocklist"

    def __init__(
        self,
        session_factory: Callable[[], Session] | None,
        *,
        refresh_s: float = 2.0,
        keys: dict[str, frozenset[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_factory = session_factory
        self.refresh_s = refresh_s
        self.clock = clock
        self.keys: dict[str, pl.DataFrame] = _tables(keys or {})
        self._loaded_at: float | None = None if keys is None else clock()
        self._generation = _generation if keys is not None else -1
        self._lock = threading.Lock()

    def _reload_if_due(self) -> None:
        if self.session_factory is None:
            return
        now = self.clock()
        if (
            self._loaded_at is not None
            and self._generation == _generation
            and now - self._loaded_at < self.refresh_s
        ):
            return
        generation = _generation
        try:
            with self.session_factory() as session:
                self.keys = _tables(active_keys(session))
            self._generation = generation
        except Exception:
            logger.exception("could not reload the block list; keeping the previous one")
        self._loaded_at = now

    def process(self, batch: Batch) -> Batch:
        with self._lock:
            self._reload_if_due()
            keys = self.keys
        frame = batch.frame
        blocked = pl.repeat(False, frame.height, dtype=pl.Boolean, eager=True)
        for column in BLOCKABLE:
            if column in keys and column in frame.columns:
                # a hash join against the list built at reload: ~10x faster than is_in on a large list
                hit = (
                    frame.select(pl.col(column).cast(pl.String).alias("__key"))
                    .join(keys[column], on="__key", how="left", maintain_order="left")
                    .get_column("__blocked")
                    .fill_null(False)
                )
                blocked = blocked | hit
        return batch.with_frame(frame.with_columns(blocked.alias("blocked")))
