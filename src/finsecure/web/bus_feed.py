"""The API process's ear on the workers: alert notices from NATS, passed on to the dashboards.

In scale-out, workers write alerts to the shared database and then announce them on ``alerts.<partition>``
(:mod:`finsecure.worker.notify`). :class:`BusAlertFeed` listens on ``alerts.>`` with the API process's own
NATS connection (the one its ingest publishes with) and publishes each notice on the hub's ``alerts`` and
``incidents`` channels, with the same messages as alerts written in this process
(:func:`~finsecure.web.live.announce_alerts`). Publishing to the hub never waits for a browser.

Notices are not stored: one sent while the API was restarting or disconnected is missed, which is harmless,
since pages reload from the database and the live feed's incidents check still notices the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from finsecure.bus.base import BusClosed, BusLoop
from finsecure.bus.nats import NatsBus
from finsecure.web.hub import Broadcaster
from finsecure.web.live import announce_alerts
from finsecure.worker.notify import ALERTS_SUBJECT_PREFIX, AlertNotice

__all__ = ["BusAlertFeed"]

logger = logging.getLogger(__name__)


class BusAlertFeed:
    """Forward workers' alert notices from NATS to ``hub`` until :meth:`stop`.

    Parameters
    ----------
    hub
        The dashboards' hub.
    bus, loop
        A NATS bus and the loop its connection lives on.
    subject_filter
        What to listen to (default ``alerts.>``: every partition).
    retry_s
        Pause before listening again after the subscription failed (e.g. NATS was not up at start).
    queue
        A NATS queue group: give one when the hub is shared by several API processes (Redis), so each
        notice reaches the dashboards once, through one of them; leave empty for an in-process hub,
        where every API process must hear every notice.
    """

    def __init__(
        self,
        hub: Broadcaster,
        bus: NatsBus,
        loop: BusLoop,
        *,
        subject_filter: str = f"{ALERTS_SUBJECT_PREFIX}.>",
        retry_s: float = 2.0,
        queue: str = "",
    ) -> None:
        self.hub = hub
        self.bus = bus
        self.loop = loop
        self.subject_filter = subject_filter
        self.retry_s = retry_s
        self.queue = queue
        self.received = 0
        self.invalid = 0
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def start(self) -> BusAlertFeed:
        if self._task is None:
            self._task = self.loop.spawn(self._run())
        return self

    def wait_listening(self, timeout: float = 10.0) -> bool:
        """Wait until the subscription is in place (for tests and orderly start-up); ``False`` on timeout."""

        async def ready() -> bool:
            try:
                await asyncio.wait_for(self._listening.wait(), timeout)
            except TimeoutError:
                return False
            return True

        return self.loop.run(ready(), timeout + 1.0)

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is None or self.loop.loop.is_closed():
            return

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.loop.run(cancel(), 10.0)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except BusClosed:  # the process is shutting its bus down
                return
            except Exception as exc:  # e.g. NATS not reachable yet: the dashboards still reload from the DB
                logger.warning("alert notices from workers: %s; listening again in %s s", exc, self.retry_s)
            self._listening.clear()
            await asyncio.sleep(self.retry_s)

    async def _listen(self) -> None:
        messages = await self.bus.listen(self.subject_filter, queue=self.queue)
        self._listening.set()
        try:
            async for message in messages:
                try:
                    self.forward(message.data)
                except Exception:  # e.g. a shared hub (Redis) that is away: the next notice may pass
                    logger.exception("could not pass a workers' alert notice on to the dashboards")
        finally:
            await messages.aclose()

    def forward(self, data: bytes) -> bool:
        """Publish one notice on the hub; ``False`` (counted) when ``data`` is not a notice."""
        try:
            notice = AlertNotice.decode(data)
        except ValueError as exc:
            self.invalid += 1
            logger.warning("ignoring a message on %s: %s", self.subject_filter, exc)
            return False
        self.received += 1
        announce_alerts(
            self.hub,
            alert_ids=notice.alert_ids,
            inserted=notice.inserted,
            updated=notice.updated,
            incident_ids=notice.incident_ids,
        )
        return True
