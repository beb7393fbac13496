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
    reload what they show; no row content travels on the socket. In scale-out (a NATS bus), alerts come
    from the workers' notices (:mod:`finsecure.web.bus_feed`), with the same messages.
``system``
    Pipeline health for admins: queue, errors, dead letters.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from finsecure.web import service as web_service
from finsecure.web.hub import Broadcaster
from finsecure.web.schemas import Kpi

if TYPE_CHECKING:
    from finsecure.alert.sink import AlertWriteResult
    from finsecure.platform import Platform
    from finsecure.web.bus_feed import BusAlertFeed

logger = logging.getLogger(__name__)

__all__ = ["LiveFeed", "announce_alerts"]


def announce_alerts(
    hub: Broadcaster,
    *,
    alert_ids: Sequence[int],
    inserted: int,
    updated: int,
    incident_ids: Sequence[int],
) -> None:
    """Publish the ``alerts`` and ``incidents`` messages for one alert write (ids only, at most 200)."""
    if alert_ids:
        hub.publish("alerts", {"alert_ids": list(alert_ids[:200]), "inserted": inserted, "updated": updated})
    if incident_ids:
        hub.publish("incidents", {"changed": True, "incident_ids": list(incident_ids[:200])})


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
        self.bus_feed: BusAlertFeed | None = None
        """Workers' alert notices, when the platform publishes ingest to NATS (scale-out)."""

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> LiveFeed:
        if self._thread is not None:
            return self
        if self.platform is not None:
            self.platform.alerts.listeners.append(self.on_alerts)
            self._start_bus_feed(self.platform)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="finsecure-live", daemon=True)
        self._thread.start()
        return self

    def _start_bus_feed(self, platform: Platform) -> None:
        from finsecure.bus.nats import NatsBus
        from finsecure.core.shared import RedisBroadcaster
        from finsecure.web.bus_feed import BusAlertFeed

        publisher = platform.bus
        if self.bus_feed is None and publisher is not None and isinstance(publisher.bus, NatsBus):
            # A Redis hub reaches every API process's dashboards: one of them is enough per notice.
            queue = "finsecure-api" if isinstance(self.hub, RedisBroadcaster) else ""
            self.bus_feed = BusAlertFeed(self.hub, publisher.bus, publisher.loop, queue=queue).start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.bus_feed is not None:
            try:
                self.bus_feed.stop()
            except Exception:  # stopping must go on (e.g. the bus loop is already closed)
                logger.exception("live feed: could not stop listening to worker alert notices")
            self.bus_feed = None
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
        announce_alerts(
            self.hub,
            alert_ids=result.alert_ids,
            inserted=result.inserted,
            updated=result.updated,
            incident_ids=result.incident_ids,
        )
