"""Response actions as plugins, keyed by their ``action_type``."""

from __future__ import annotations

from finsecure.response.actions.base import (
    WORKER_ACTOR,
    ActionContext,
    PermanentError,
    Responder,
    RetryableError,
)
from finsecure.response.actions.blocking import AttachToIncident, BlockEntity, OpenIncident
from finsecure.response.actions.email import EmailNotify
from finsecure.response.actions.webhook import SignedWebhook, SlackNotify

__all__ = [
    "RESPONDERS",
    "WORKER_ACTOR",
    "ActionContext",
    "PermanentError",
    "Responder",
    "RetryableError",
    "default_responders",
]


def default_responders() -> dict[str, Responder]:
    """One instance of every shipped responder, by action type.

    >>> sorted(default_responders())
    ['attach_incident', 'block', 'email', 'open_incident', 'slack', 'webhook']
    """
    responders: list[Responder] = [
        SignedWebhook(), SlackNotify(), EmailNotify(), BlockEntity(), OpenIncident(), AttachToIncident(),
    ]  # fmt: skip
    return {r.action_type: r for r in responders}


#: The shipped responders (add your own to a worker's ``responders``).
RESPONDERS = default_responders()
