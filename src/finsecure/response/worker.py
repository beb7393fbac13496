"""The response worker: matches playbooks against new alerts and incidents and runs actions, on its own
thread, so the pipeline never waits for a webhook or a mail server.

The alert sink tells the worker what it wrote (:meth:`ResponseWorker.submit`, a non-blocking put on a
bounded queue). The worker creates each playbook action once (its idempotency key names the playbook, the
action and the target), then runs it: a retryable failure is tried again after ``backoff * 2**n`` seconds,
and after ``response_max_attempts`` attempts the action goes to the dead letters (``dead_letter``). Actions
that wait for approval run once a person approves them. The worker also polls the table every few
seconds, which picks up approvals made by other processes and actions left pending by a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from finsecure.alert.models import Alert
from finsecure.alert.sink import AlertWriteResult
from finsecure.core.database import utcnow
from finsecure.core.settings import Settings
from finsecure.incident.models import Incident, IncidentStatus
from finsecure.response import service as action_service
from finsecure.response.actions import (
    WORKER_ACTOR,
    ActionContext,
    PermanentError,
    Responder,
    RetryableError,
    default_responders,
)
from finsecure.response.models import ActionStatus, ResponseAction
from finsecure.response.playbooks import PLAYBOOKS_DIR, LoadedPlaybooks, Playbook, load_playbooks

__all__ = ["WORKER_ACTOR", "ResponseWorker", "alert_payload", "incident_payload"]

logger = logging.getLogger(__name__)


def incident_payload(incident: Incident) -> dict[str, Any]:
    """An incident as playbooks match it and responders send it, in plain words."""
    main = (incident.evidence or {}).get("main_entity")
    text = (
        f"Incident {incident.id} ({incident.severity.value}, risk {incident.risk:.0f}, "
        f"{', '.join(str(d) for d in incident.domains or []) or 'no domain'}): {incident.title}. "
        f"{incident.summary}"
    ).strip()
    return {
        "kind": "incident", "id": incident.id, "title": incident.title, "summary": incident.summary,
        "severity": incident.severity.value, "risk": incident.risk, "domains": list(incident.domains or []),
        "status": incident.status.value, "entity": main, "first_seen": incident.first_seen.isoformat(),
        "last_seen": incident.last_seen.isoformat(), "text": text,
    }  # fmt: skip


def alert_payload(alert: Alert) -> dict[str, Any]:
    """An alert as playbooks match it and responders send it."""
    entity = [alert.entity_type, alert.entity_id] if alert.entity_type and alert.entity_id else None
    text = f"Alert {alert.id} ({alert.severity.value}, {alert.domain}): {alert.title}. {alert.description}"
    return {
        "kind": "alert", "id": alert.id, "rule_id": alert.rule_id, "title": alert.title,
        "description": alert.description, "severity": alert.severity.value, "domains": [alert.domain],
        "entity": entity, "count": alert.count, "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(), "text": text.strip(),
    }  # fmt: skip


class ResponseWorker:
    """Runs playbooks and response actions off the pipeline thread (see the module docstring).

    Parameters
    ----------
    settings
        Attempts, backoff, timeouts, dry-run, SMTP and the webhook key.
    session_factory
        Each step uses a short session of its own.
    playbooks
        Defaults to those in ``settings.playbooks_dir`` (or the shipped ``playbooks/``).
    responders
        Defaults to :func:`~finsecure.response.actions.default_responders`.
    poll_s
        How often the table is polled for runnable actions.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        *,
        playbooks: Sequence[Playbook] | None = None,
        responders: Mapping[str, Responder] | None = None,
        poll_s: float = 5.0,
        queue_size: int = 10_000,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.responders: dict[str, Responder] = dict(responders or default_responders())
        self.poll_s = poll_s
        self.load_errors: tuple[str, ...] = ()
        self.playbooks: tuple[Playbook, ...] = ()
        if playbooks is None:
            self.reload_playbooks()
        else:
            self.playbooks = tuple(playbooks)
        self.dropped = 0
        """Notifications from the alert sink dropped because the queue was full."""
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=queue_size)
        self._retries: list[tuple[float, int]] = []
        self._retry_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[tuple[str, int]] = set()

    # -- control ---------------------------------------------------------------------------------------
    def reload_playbooks(self, directory: Path | None = None) -> LoadedPlaybooks:
        """(Re)load playbooks from ``directory`` (default: the configured one); errors are kept and logged."""
        directory = directory or self.settings.playbooks_dir or PLAYBOOKS_DIR
        loaded = load_playbooks(directory, action_types=self.responders)
        for error in loaded.errors:
            logger.error("playbook not loaded: %s", error)
        self.playbooks, self.load_errors = loaded.playbooks, loaded.errors
        return loaded

    def start(self) -> ResponseWorker:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="finsecure-response", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue wakes the loop anyway
            self._queue.put_nowait(("stop", None))  # wake the loop now rather than at its next poll
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- input -----------------------------------------------------------------------------------------
    def submit(self, result: AlertWriteResult) -> None:
        """Listener for :class:`~finsecure.alert.sink.AlertSink`: never blocks; drops (counted) when full."""
        if not any(p.enabled for p in self.playbooks) or not (result.alert_ids or result.incident_ids):
            return
        try:
            self._queue.put_nowait(("written", (list(result.alert_ids), list(result.incident_ids))))
        except queue.Full:
            self.dropped += 1

    def enqueue(self, action_id: int) -> None:
        """Run an action soon (after an approval or a manual request)."""
        try:
            self._queue.put_nowait(("run", action_id))
        except queue.Full:
            self.dropped += 1  # the poll picks it up

    # -- the loop --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        last_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with self._retry_lock:
                next_due = self._retries[0][0] if self._retries else now + self.poll_s
            wait = max(0.0, min(next_due - now, self.poll_s - (now - last_poll)))
            try:
                kind, payload = self._queue.get(timeout=wait)
            except queue.Empty:
                kind, payload = "", None
            try:
                if kind == "written":
                    self.dispatch(alert_ids=payload[0], incident_ids=payload[1])
                elif kind == "run":
                    self.run(payload)
                self.run_due()
                if time.monotonic() - last_poll >= self.poll_s:
                    last_poll = time.monotonic()
                    self.poll()
            except Exception:
                logger.exception("the response worker hit an error; it keeps going")

    def run_due(self) -> None:
        """Run the retries whose time has come."""
        now = time.monotonic()
        due: list[int] = []
        with self._retry_lock:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[1])
        for action_id in due:
            self.run(action_id)

    def poll(self) -> list[int]:
        """Run every pending action whose time has come (approved elsewhere, or left by a restart)."""
        now = utcnow()
        with self.session_factory() as session:
            ids = list(
                session.scalars(
                    select(ResponseAction.id)
                    .where(
                        ResponseAction.status == ActionStatus.pending,
                        (ResponseAction.next_attempt_at.is_(None)) | (ResponseAction.next_attempt_at <= now),
                    )
                    .order_by(ResponseAction.id)
                    .limit(100)
                )
            )
        for action_id in ids:
            self.run(action_id)
        return ids

    # -- playbooks -------------------------------------------------------------------------------------
    def _targets(
        self, session: Session, alert_ids: Iterable[int], incident_ids: Iterable[int]
    ) -> list[tuple[dict[str, Any], int | None, int | None]]:
        """(payload, incident id, alert id) of each open target the playbooks may act on."""
        kinds = {p.trigger.on for p in self.playbooks if p.enabled}
        targets: list[tuple[dict[str, Any], int | None, int | None]] = []
        if "incident" in kinds and incident_ids:
            incidents = session.scalars(
                select(Incident).where(
                    Incident.id.in_(list(incident_ids)),
                    Incident.merged_into_id.is_(None),
                    Incident.status != IncidentStatus.resolved,
                )
            )
            targets += [(incident_payload(i), i.id, None) for i in incidents]
        if "alert" in kinds and alert_ids:
            alerts = session.scalars(select(Alert).where(Alert.id.in_(list(alert_ids))))
            targets += [(alert_payload(a), None, a.id) for a in alerts]
        return targets

    def dispatch(self, *, alert_ids: Iterable[int], incident_ids: Iterable[int]) -> list[int]:
        """Create the actions of every playbook matching these alerts and incidents (once per playbook,
        action and target) and run those that need no approval. Returns the new actions' ids."""
        created: list[int] = []
        with self.session_factory() as session:
            for payload, incident_id, alert_id in self._targets(session, alert_ids, incident_ids):
                for playbook in self.playbooks:
                    if not playbook.enabled or not playbook.trigger.matches(payload):
                        continue
                    for index, step in enumerate(playbook.actions):
                        params = step.resolved_params()
                        if params is None:
                            if (playbook.id, index) not in self._warned:
                                self._warned.add((playbook.id, index))
                                logger.warning(
                                    "playbook %s action %d (%s) is not configured: an environment variable "
                                    "it names is unset",
                                    playbook.id, index, step.type,
                                )  # fmt: skip
                            continue
                        if playbook.dry_run:
                            params["dry_run"] = True
                        responder = self.responders[step.type]
                        action, new = action_service.request_action(
                            db_session=session,
                            key=action_service.idempotency_key(
                                playbook.id, index, payload["kind"], payload["id"]
                            ),
                            action_type=step.type,
                            target_type=payload["kind"],
                            target_id=str(payload["id"]),
                            params=params,
                            actor=WORKER_ACTOR,
                            needs_approval=step.approval and responder.destructive,
                            incident_id=incident_id,
                            alert_id=alert_id,
                            playbook_id=playbook.id,
                        )
                        if new:
                            created.append(action.id)
            session.commit()
        for action_id in created:
            self.run(action_id)
        return created

    # -- running one action ----------------------------------------------------------------------------
    def _payload(self, session: Session, action: ResponseAction) -> dict[str, Any]:
        if action.incident_id is not None:
            incident = session.get(Incident, action.incident_id)
            if incident is not None:
                return incident_payload(incident)
        if action.alert_id is not None:
            alert = session.get(Alert, action.alert_id)
            if alert is not None:
                return alert_payload(alert)
        return {}

    def run(self, action_id: int) -> ActionStatus | None:
        """One attempt at an action, if it is pending and due; returns its status after, or ``None``."""
        with self.session_factory() as session:
            action = action_service.claim(db_session=session, action_id=action_id)
            if action is None:
                return None
            responder = self.responders.get(action.action_type)
            if responder is None:
                action_service.finish(
                    db_session=session, action=action, status=ActionStatus.failed, actor=WORKER_ACTOR,
                    error=f"no responder for {action.action_type!r} in this process",
                )  # fmt: skip
                return action.status
            ctx = ActionContext(
                action_id=action.id, idempotency_key=action.idempotency_key, action_type=action.action_type,
                target_type=action.target_type, target_id=action.target_id, params=dict(action.params or {}),
                settings=self.settings, session_factory=self.session_factory, attempt=action.attempts,
                incident_id=action.incident_id, alert_id=action.alert_id,
                payload=self._payload(session, action),
            )  # fmt: skip
            if ctx.params.get("dry_run") or self.settings.response_dry_run:
                action_service.finish(
                    db_session=session, action=action, status=ActionStatus.dry_run, actor=WORKER_ACTOR,
                    result={"would": responder.describe(ctx)},
                )  # fmt: skip
                return action.status
            try:
                outcome = responder.execute(ctx)
            except RetryableError as exc:
                if action.attempts >= self.settings.response_max_attempts:
                    action_service.finish(
                        db_session=session, action=action, status=ActionStatus.dead_letter,
                        actor=WORKER_ACTOR,
                        error=f"gave up after {action.attempts} attempts: {exc}",
                    )  # fmt: skip
                    logger.warning("response action %d dead-lettered: %s", action.id, exc)
                    return action.status
                delay = self.settings.response_backoff_s * 2 ** (action.attempts - 1)
                action_service.finish(
                    db_session=session, action=action, status=ActionStatus.pending, actor=WORKER_ACTOR,
                    error=str(exc), retry_at=utcnow() + dt.timedelta(seconds=delay),
                )  # fmt: skip
                with self._retry_lock:
                    heapq.heappush(self._retries, (time.monotonic() + delay, action.id))
                return action.status
            except PermanentError as exc:
                action_service.finish(
                    db_session=session, action=action, status=ActionStatus.failed, actor=WORKER_ACTOR,
                    error=str(exc),
                )  # fmt: skip
                return action.status
            except Exception as exc:  # a bug in a responder must not kill the worker
                logger.exception("response action %d failed unexpectedly", action.id)
                action_service.finish(
                    db_session=session, action=action, status=ActionStatus.failed, actor=WORKER_ACTOR,
                    error=f"{type(exc).__name__}: {exc}",
                )  # fmt: skip
                return action.status
            action_service.finish(
                db_session=session, action=action, status=ActionStatus.succeeded, actor=WORKER_ACTOR,
                result=outcome,
            )  # fmt: skip
            return action.status

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and no retry is scheduled (tests, shutdown); ``True`` when idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._retry_lock:
                retries = bool(self._retries)
            if self._queue.empty() and not retries:
                time.sleep(0.05)  # the item just taken may still be running
                if self._queue.empty():
                    return True
            time.sleep(0.02)
        return False
