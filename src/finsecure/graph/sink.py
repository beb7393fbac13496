"""The pipeline's side output into the entity graph: :class:`GraphSink`.

Every finished batch updates the in-memory :class:`~finsecure.graph.store.GraphStore` (vectorised);
every ``flush_interval_s`` the changes are upserted into the database and the known-bad marks (blocked
entities, entities of incidents confirmed as fraud) are re-read; every ``evict_interval_s`` stale edges
are evicted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.entity.models import Entity
from finsecure.graph.edges import ENTITY_TYPES, entity_type_of
from finsecure.graph.store import GraphStore, node_key
from finsecure.incident.models import Disposition, Incident, IncidentAlert
from finsecure.pipeline.batch import Batch, Sink

__all__ = ["GraphSink", "known_bad_keys"]

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]


def known_bad_keys(session: Session) -> tuple[set[str], set[str]]:
    """``(blocked, confirmed)`` node ids: entities marked blocked, and the entities of alerts in incidents
    closed as true positives (confirmed fraud or attack). ``src_ip``/``dst_ip`` rows name ``ip`` nodes."""
    blocked = {
        node_key(entity_type_of(t), k)
        for t, k in session.execute(select(Entity.entity_type, Entity.key).where(Entity.blocked.is_(True)))
    }
    confirmed_rows = session.execute(
        select(Alert.entity_type, Alert.entity_id)
        .join(IncidentAlert, IncidentAlert.alert_id == Alert.id)
        .join(Incident, Incident.id == IncidentAlert.incident_id)
        .where(Incident.disposition == Disposition.true_positive)
        .where(Alert.entity_type.is_not(None), Alert.entity_id.is_not(None))
        .distinct()
        .limit(100_000)
    )
    confirmed = {
        node_key(entity_type_of(t), k)
        for t, k in confirmed_rows
        if t is not None and k is not None and entity_type_of(t) in ENTITY_TYPES
    }
    return blocked, confirmed


class GraphSink(Sink):
    """Feeds the entity graph from the pipeline and keeps its database copy up to date.

    Parameters
    ----------
    store
        The graph to update (a new one by default).
    session_factory
        Where to persist; ``None`` keeps the graph in memory only.
    flush_interval_s
        Database writes happen at most this often (and on :meth:`flush`).
    evict_interval_s
        Stale edges are evicted at most this often.
    """

    sink_id = "graph"

    def __init__(
        self,
        store: GraphStore | None = None,
        session_factory: SessionFactory | None = None,
        *,
        flush_interval_s: float = 5.0,
        evict_interval_s: float = 60.0,
    ) -> None:
        self.store = store or GraphStore()
        self.session_factory = session_factory
        self.flush_interval_s = flush_interval_s
        self.evict_interval_s = evict_interval_s
        self._last_flush = time.monotonic()
        self._last_evict = time.monotonic()
        self._flush_lock = threading.Lock()

    def write(self, batch: Batch) -> None:
        self.store.update(batch.domain, batch.frame)
        now = time.monotonic()
        if now - self._last_evict >= self.evict_interval_s:
            self._last_evict = now
            self.store.evict()
        if now - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the changes to the database and refresh the known-bad marks (errors are logged)."""
        self._last_flush = time.monotonic()
        if self.session_factory is None:
            return
        with self._flush_lock:
            try:
                self.store.flush_to_db(self.session_factory)
                self.refresh_known_bad()
            except Exception:  # the graph stays in memory; the next flush writes what this one could not
                logger.exception("could not persist the entity graph")

    def refresh_known_bad(self) -> None:
        """Re-read blocked entities and confirmed incidents into the graph's marks."""
        if self.session_factory is None:
            return
        with self.session_factory() as session:
            blocked, confirmed = known_bad_keys(session)
        self.store.clear_flags()
        self.store.set_flags(blocked, blocked=True, bad=True)
        self.store.set_flags(confirmed, bad=True)

    def load(self) -> int:
        """Fill the graph from the database (at start-up); returns how many edges were loaded."""
        if self.session_factory is None:
            return 0
        with self.session_factory() as session:
            loaded = self.store.load_from_db(session)
        self.refresh_known_bad()
        return loaded
