"""Workers tell the API processes, over NATS, which alerts and incidents they just stored.

After a worker's alert write has committed, :class:`AlertNotifier` publishes a small JSON notice on
``alerts.<partition>``: the alert ids, how many were inserted and updated, the incident ids, the worker and
partition, and when the write committed. The API process subscribes to ``alerts.>``
(:class:`~finsecure.web.bus_feed.BusAlertFeed`) and passes each notice on to the dashboards.

Why core NATS and not JetStream
-------------------------------
The database is the source of truth; a notice only tells open dashboards to reload what they show. So:

* A lost notice is harmless. A page still catches up at its next reload, and the API's own once-a-second
  check of the incidents table still notices the change. Storing notices in a stream would only add a
  server round trip per batch and disk writes.
* A duplicate notice is harmless: it carries ids, not rows, and pages reload by id. A worker that redoes
  an epoch after a crash writes the same alerts again (as updates) and says so again.
* Core NATS publishing never waits for the server: the client buffers the message and returns. The worker's
  batch therefore never waits for the API, and never fails because of it: a notice that cannot be sent
  (buffer full while NATS is away, client closed) is logged and counted in
  ``finsecure_worker_alert_notices_total{outcome="failed"}``, and the batch goes on.

Example
-------
>>> import datetime as dt
>>> from finsecure.alert.sink import AlertWriteResult
>>> notice = AlertNotice.of(
...     AlertWriteResult(inserted=1, updated=1, alert_ids=[7, 9], incident_ids=[3]),
...     worker="w1", partition=2, committed_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
... )
>>> notice.subject()
'alerts.2'
>>> AlertNotice.decode(notice.encode()) == notice
True
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from finsecure.alert.sink import AlertWriteResult
from finsecure.bus.base import BusLoop
from finsecure.bus.nats import NatsBus

__all__ = ["ALERTS_SUBJECT_PREFIX", "MAX_IDS", "AlertNotice", "AlertNotifier"]

logger = logging.getLogger(__name__)

ALERTS_SUBJECT_PREFIX: Final = "alerts"
"""Notices go to ``alerts.<partition>``; the API listens on ``alerts.>``."""

MAX_IDS: Final = 1000
"""At most this many alert (and incident) ids per notice; counts stay exact."""


@dataclass(frozen=True)
class AlertNotice:
    """What one committed alert write changed (ids only, never row content)."""

    worker: str
    partition: int
    committed_at: str
    """ISO 8601, UTC."""
    inserted: int = 0
    updated: int = 0
    alert_ids: list[int] = field(default_factory=list)
    incident_ids: list[int] = field(default_factory=list)

    @classmethod
    def of(
        cls, result: AlertWriteResult, *, worker: str, partition: int, committed_at: dt.datetime
    ) -> AlertNotice:
        return cls(
            worker=worker,
            partition=partition,
            committed_at=committed_at.isoformat(),
            inserted=result.inserted,
            updated=result.updated,
            alert_ids=list(result.alert_ids[:MAX_IDS]),
            incident_ids=list(result.incident_ids[:MAX_IDS]),
        )

    def subject(self, prefix: str = ALERTS_SUBJECT_PREFIX) -> str:
        return f"{prefix}.{self.partition}"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> AlertNotice:
        """Parse a notice.

        Raises
        ------
        ValueError
            When ``data`` is not a notice.
        """
        try:
            raw: Any = json.loads(data)
            return cls(
                worker=str(raw["worker"]),
                partition=int(raw["partition"]),
                committed_at=str(raw["committed_at"]),
                inserted=int(raw.get("inserted", 0)),
                updated=int(raw.get("updated", 0)),
                alert_ids=[int(i) for i in raw.get("alert_ids", [])],
                incident_ids=[int(i) for i in raw.get("incident_ids", [])],
            )
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise ValueError(f"not an alert notice: {exc}") from None


class AlertNotifier:
    """Publishes an :class:`AlertNotice` after each committed alert write, without ever waiting for it.

    Parameters
    ----------
    bus, loop
        The worker's NATS bus and the loop it runs on (the connection the worker already consumes with).
    worker
        The worker's id, put in each notice.
    registry
        Where ``finsecure_worker_alert_notices_total`` is registered.
    """

    def __init__(
        self,
        bus: NatsBus,
        loop: BusLoop,
        *,
        worker: str,
        registry: CollectorRegistry | None = None,
        prefix: str = ALERTS_SUBJECT_PREFIX,
    ) -> None:
        self.bus = bus
        self.loop = loop
        self.worker = worker
        self.prefix = prefix
        self.notices = Counter(
            "finsecure_worker_alert_notices",
            "Notices of committed alert writes sent to the API processes over NATS, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.sent = self.notices.labels("sent")
        self.failed = self.notices.labels("failed")

    def notify(self, partition: int, result: AlertWriteResult, *, committed_at: dt.datetime) -> bool:
        """Hand the notice of ``result`` (already committed) to the bus loop and return at once.

        Returns ``False`` when there was nothing to announce or it could not even be handed over (counted
        as failed); a failure on the loop is counted and logged there.
        """
        if not result.alert_ids and not result.incident_ids:
            return False
        notice = AlertNotice.of(result, worker=self.worker, partition=partition, committed_at=committed_at)
        try:
            future = asyncio.run_coroutine_threadsafe(
                self.bus.notify(notice.subject(self.prefix), notice.encode()), self.loop.loop
            )
        except RuntimeError as exc:  # the loop is closed: the worker is stopping
            self._failed(notice, exc)
            return False
        future.add_done_callback(lambda done: self._done(notice, done))
        return True

    def _done(self, notice: AlertNotice, future: Future[None]) -> None:
        if future.cancelled():
            self._failed(notice, asyncio.CancelledError())
            return
        exc = future.exception()
        if exc is None:
            self.sent.inc()
        else:
            self._failed(notice, exc)

    def _failed(self, notice: AlertNotice, exc: BaseException) -> None:
        self.failed.inc()
        logger.warning(
            "could not announce %d alerts of partition %d to the API (they are stored): %s",
            len(notice.alert_ids),
            notice.partition,
            exc or type(exc).__name__,
        )
