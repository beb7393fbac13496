"""Signed webhooks (HMAC-SHA256 over timestamp and body) and Slack-compatible notifications.

A delivery carries ``X-FinSecure-Timestamp`` (Unix seconds), ``X-FinSecure-Signature``
(``v1=<hex HMAC-SHA256 of "<timestamp>." + body>``) and ``Idempotency-Key``, the same on every retry of one
action, so a receiver that saw a delivery whose answer got lost can recognise the retry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from finsecure.response.actions.base import ActionContext, PermanentError, Responder, RetryableError

__all__ = ["SignedWebhook", "SlackNotify", "post_json", "sign", "verify"]

SIGNATURE_HEADER = "X-FinSecure-Signature"
TIMESTAMP_HEADER = "X-FinSecure-Timestamp"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``.

    >>> sign(b"k", 1700000000, b"{}")
    'v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146'
    """
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether ``signature`` is valid for ``body`` and ``timestamp`` is within ``tolerance_s`` of now
    (a receiver's check; replays of old deliveries fail it).

    >>> body = b'{"a": 1}'
    >>> verify(b"k", "1700000000", body, sign(b"k", 1700000000, body), now=1700000010)
    True
    >>> verify(b"k", "1700000000", body + b" ", sign(b"k", 1700000000, body), now=1700000010)
    False
    >>> verify(b"k", "1700000000", body, sign(b"k", 1700000000, body), now=1700009999)
    False
    """
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def _checked_url(url: object) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).netloc:
        raise PermanentError(f"not an http(s) URL: {url!r}")
    return url


def post_json(url: object, body: bytes, headers: dict[str, str], *, timeout_s: float) -> int:
    """POST ``body``; returns the status. 5xx, 408, 429 and network errors are retryable, other 4xx not."""
    checked = _checked_url(url)
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s)
        checked, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - checked above
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        if exc.code >= 500 or exc.code in {408, 429}:
            raise RetryableError(f"{checked} answered {exc.code}") from exc
        raise PermanentError(f"{checked} refused the delivery with {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise RetryableError(f"could not reach {checked}: {exc}") from exc


class SignedWebhook(Responder):
    """POST the incident or alert as JSON to ``params.url``, signed with the platform's webhook secret."""

    action_type = "webhook"

    def body(self, ctx: ActionContext) -> bytes:
        document = {
            "id": ctx.idempotency_key,
            "action_id": ctx.action_id,
            "target_type": ctx.target_type,
            "target_id": ctx.target_id,
            **ctx.payload,
        }
        return json.dumps(document, sort_keys=True, default=str).encode()

    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        body = self.body(ctx)
        timestamp = int(time.time())
        headers = {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(ctx.settings.response_webhook_key, timestamp, body),
            "Idempotency-Key": ctx.idempotency_key,
            "X-FinSecure-Attempt": str(ctx.attempt),
        }
        status = post_json(ctx.params.get("url"), body, headers, timeout_s=ctx.settings.response_timeout_s)
        return {"status": status, "bytes": len(body)}

    def describe(self, ctx: ActionContext) -> str:
        return f"send a signed webhook about {ctx.target_type} {ctx.target_id} to {ctx.params.get('url')}"


class SlackNotify(Responder):
    """Post a plain-language message in the Slack incoming-webhook format (``text`` plus blocks)."""

    action_type = "slack"

    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        text = str(ctx.payload.get("text") or self.describe(ctx))
        link = ctx.params.get("link")
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
        if link:
            blocks.append(
                {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in FinSecure>"}]}
            )
        body = json.dumps({"text": text, "blocks": blocks}).encode()
        status = post_json(ctx.params.get("url"), body, {}, timeout_s=ctx.settings.response_timeout_s)
        return {"status": status}

    def describe(self, ctx: ActionContext) -> str:
        return f"post a chat message about {ctx.target_type} {ctx.target_id}"
