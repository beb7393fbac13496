"""Logging set-up: readable lines for people, one JSON object per line for machines."""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextvars import ContextVar

from finsecure.core.settings import Settings

#: The id that ties together every log line of one request or one worker batch (``X-Request-ID``).
correlation_id: ContextVar[str | None] = ContextVar("finsecure_correlation_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (current := correlation_id.get()) is not None:
            payload["correlation_id"] = current
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once per process, as settings say."""
    handler = logging.StreamHandler()
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Alembic announces its context on every schema check (health); only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
