"""Pure ASGI middleware: request size limits and security headers."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from finsecure.core.errors import error_body


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413, before they are buffered.

    The declared ``Content-Length`` is checked up front; chunked bodies are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, scope, 400, "bad_request", "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await self._reject_too_large(send, scope)
                    return
        received = 0
        too_large = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if too_large and not response_started:
                # The app may have caught _BodyTooLarge and turned it into another answer (FastAPI
                # answers 400 "error parsing the body"): drop it, the 413 below replaces it.
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not response_started:
            await self._reject_too_large(send, scope)

    async def _reject_too_large(self, send: Send, scope: Scope) -> None:
        await self._reject(
            send,
            scope,
            413,
            "payload_too_large",
            f"The request body is larger than the {self.max_bytes} bytes allowed",
        )

    @staticmethod
    async def _reject(send: Send, scope: Scope, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # This answer may bypass SecurityHeadersMiddleware (it depends on the order).
                    *security_headers(is_tls=scope.get("scheme") == "https"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        b"connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    ),
)


HSTS_HEADER: tuple[bytes, bytes] = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def security_headers(*, is_tls: bool) -> list[tuple[bytes, bytes]]:
    """The hardening headers of every response; HSTS only over TLS (browsers ignore it on http)."""
    return [*SECURITY_HEADERS, HSTS_HEADER] if is_tls else list(SECURITY_HEADERS)


class SecurityHeadersMiddleware:
    """Add browser hardening headers to every HTTP response (HSTS only when served over TLS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_tls = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in security_headers(is_tls=is_tls) if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
