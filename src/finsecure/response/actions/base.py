"""The responder contract: one class per kind of action, registered by a string id."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from finsecure.audit.service import Actor
from finsecure.core.settings import Settings

__all__ = ["WORKER_ACTOR", "ActionContext", "PermanentError", "Responder", "RetryableError"]

#: Who the audit log names for what the response worker does.
WORKER_ACTOR = Actor(label="response-worker")


class RetryableError(Exception):
    """The action may succeed later (a timeout, a 5xx, a refused connection): retry with backoff."""


class PermanentError(Exception):
    """The action cannot succeed as asked (a 4xx, a bad parameter): do not retry."""


@dataclass(frozen=True)
class ActionContext:
    """What a responder gets: the action's identity, target and parameters, and the platform's settings."""

    action_id: int
    idempotency_key: str
    action_type: str
    target_type: str
    target_id: str
    params: dict[str, Any]
    settings: Settings
    session_factory: Callable[[], Session]
    attempt: int = 1
    incident_id: int | None = None
    alert_id: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    """A plain description of the target (incident or alert), built by the worker."""


class Responder(ABC):
    """One kind of response action.

    ``destructive`` actions (blocking an entity) wait for a person's approval when a playbook asks for it,
    and :meth:`describe` says in plain words what would happen (used for dry runs and approvals).
    """

    action_type: str
    destructive: bool = False

    @abstractmethod
    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        """Do it; return what happened (stored as the action's result).

        Raises
        ------
        RetryableError
            When a later attempt may succeed.
        PermanentError
            When no attempt can.
        """

    def describe(self, ctx: ActionContext) -> str:
        return f"{self.action_type} for {ctx.target_type} {ctx.target_id}"
