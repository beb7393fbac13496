"""The live feed: samples the platform once a second and publishes what changed to the hub.

Channels
--------
``kpi``
    A :class:`~finsecure.web.schemas.Kpi` sample every ``interval_s``.
``events``
    Events processed per domain in the last interval (only when some were).
``alerts`` / ``incidents``
    Ids of alerts and incidents the pipeline just created or updated (from the alert sink), and a
    ``changed`` note when any incident was changed by someone (e.g. assigned in another browser). Pages
    reload what they show; no row content travels on the socket.
``system``
    Pipeline health for admins: queue, errors, dead letters.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from finsecure.web import service as web_service
from finsecure.web.hub import Broadcaster
from finsecure.web.schemas import Kpi

if TYPE_CHECKING:
    from finsecure.alert.sink import AlertWriteResult
    from finsecure.platform import Platform

logger = logging.getLogger(__name__)

__all__ = ["LiveFeed"]


class LiveFeed:
    """Publish KPI samples and pipeline changes to ``hub`` from one background thread.

    Parameters
    ----------
    hub
        Where messages go (publishing never waits for a browser).
    session_factory
        For the database part of each sample (a few small counts).
    platform
        The data plane, or ``None`` in an API-only process (no throughput then).
    interval_s
        Seconds between samples.
    history
        How many samples :attr:`series` keeps for the overview's first chart.
    """

    def __init__(
        self,
        hub: Broadcaster,
        session_factory: Callable[[], Session],
        platform: Platform | None = None,
        *,
        interval_s: float = 1.0,
        history: int = 300,
    ) -> None:
        self.hub = hub
        self.session_factory = session_factory
        self.platform = platform
        self.interval_s = interval_s
        self.series: deque[Kpi] = deque(maxlen=history)
        self.errors = 0
        self._watermark: tuple[dt.datetime | None, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> LiveFeed:
        if self._thread is not None:
            return self
        if self.platform is not None:
            self.platform.alerts.listeners.append(self.on_alerts)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="finsecure-live", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.platform is not None and self.on_alerts in self.platform.alerts.listeners:
            self.platform.alerts.listeners.remove(self.on_alerts)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # a database hiccup must not end the feed
                self.errors += 1
                logger.exception("live feed: could not take a KPI sample")
            self._stop.wait(self.interval_s)

    # -- samples --------------------------------------------------------------------------------------

    def latest(self) -> Kpi | None:
        with self._lock:
            return self.series[-1] if self.series else None

    def history(self) -> list[Kpi]:
        with self._lock:
            return list(self.series)

    def sample(self, now: dt.datetime | None = None) -> Kpi:
        """Take one sample and publish it (``kpi``, ``events``, ``incidents`` when changed, ``system``)."""
        now = now or dt.datetime.now(dt.UTC)
        stats = self.platform.pipeline.stats() if self.platform is not None else None
        previous = self.latest()
        with self.session_factory() as db_session:
            kpi = web_service.build_kpi(db_session=db_session, stats=stats, now=now, previous=previous)
            watermark = web_service.incidents_watermark(db_session=db_session)
        with self._lock:
            self.series.append(kpi)
        self.hub.publish("kpi", kpi.model_dump(mode="json"))
        if previous is not None:
            delta = {d: n - previous.events_total.get(d, 0) for d, n in kpi.events_total.items()}
            if any(v > 0 for v in delta.values()):
                self.hub.publish("events", {"ts": now.isoformat(), "counts": delta})
        if self._watermark is not None and watermark != self._watermark:
            self.hub.publish("incidents", {"changed": True, "incident_ids": []})
        self._watermark = watermark
        if stats is not None:
            self.hub.publish(
                "system",
                {
                    "ts": now.isoformat(),
                    "running": stats.running,
                    "queue_depth": stats.queue_depth,
                    "queue_capacity": stats.queue_capacity,
                    "errors": stats.errors,
                    "dead_letters": stats.dead_letters,
                    "batches": stats.batches,
                },
            )
        return kpi

    def on_alerts(self, result: AlertWriteResult) -> None:
        """Alert sink listener (runs on the pipeline thread): announce the ids, nothing more."""
        if result.alert_ids:
            self.hub.publish(
                "alerts",
                {"alert_ids": result.alert_ids[:200], "inserted": result.inserted, "updated": result.updated},
            )
        if result.incident_ids:
            self.hub.publish("incidents", {"changed": True, "incident_ids": result.incident_ids[:200]})
