"""The dashboard's one live connection: ``/ws``.

Protocol (JSON text frames):

1. The page connects and, within :data:`AUTH_TIMEOUT_S`, sends ``{"type": "auth", "token": "<access
   token>"}``. The token may instead ride in the ``Sec-WebSocket-Protocol`` header as ``bearer.<token>``
   (next to ``finsecure.v1``); it never goes in the URL, where proxies and logs would keep it. A missing or
   bad token closes the connection with code 1008 (policy violation).
2. The server answers ``{"type": "welcome", "user", "role", "channels": [the channels this role may
   read]}``.
3. The page sends ``{"type": "subscribe", "channels": [...]}`` (or ``unsubscribe``) and gets
   ``{"type": "subscribed", "channels": [...], "refused": [...]}``; channels its role may not read are
   refused, never silently granted.
4. The server pushes ``{"type": "message", "channel", "data"}``. A connection that falls too far behind
   is closed with code 1013 (try again later); one whose token expires is closed with 4401, and the page
   refreshes its token and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from finsecure.auth import service as auth_service
from finsecure.auth.models import Role
from finsecure.core.deps import AppContext
from finsecure.core.security import InvalidToken, decode_access_token
from finsecure.web.hub import DEFAULT_QUEUE_SIZE, Broadcaster, SlowSubscriber, Subscriber

logger = logging.getLogger(__name__)

__all__ = ["AUTH_TIMEOUT_S", "CHANNEL_ROLES", "allowed_channels", "websocket_endpoint"]

#: Seconds a new connection has to authenticate.
AUTH_TIMEOUT_S = 5.0
#: The subprotocol the server speaks.
SUBPROTOCOL = "finsecure.v1"
#: Each channel and the least role that may read it.
CHANNEL_ROLES: dict[str, Role] = {
    "kpi": Role.viewer,
    "alerts": Role.viewer,
    "incidents": Role.viewer,
    "events": Role.viewer,
    "system": Role.admin,
}
#: Close codes.
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
TOKEN_EXPIRED = 4401
MAX_FRAME_CHARS = 4096


def allowed_channels(role: Role) -> list[str]:
    """The channels ``role`` may subscribe to.

    >>> allowed_channels(Role.viewer)
    ['alerts', 'events', 'incidents', 'kpi']
    >>> "system" in allowed_channels(Role.admin)
    True
    """
    return sorted(c for c, least in CHANNEL_ROLES.items() if role.includes(least))


@dataclass(frozen=True)
class _Session:
    username: str
    role: Role
    expires_at: dt.datetime


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _authenticate(ctx: AppContext, token: object) -> _Session:
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise _Refused("send an access token first")
    try:
        claims = decode_access_token(ctx.settings, token)
    except InvalidToken as exc:
        raise _Refused(f"sign in again: {exc}") from exc
    with ctx.session_factory() as db_session:
        user = auth_service.get(db_session=db_session, user_id=claims.user_id)
        if user is None or user.disabled:
            raise _Refused("this account no longer exists or is disabled")
        if user.must_change_password:
            raise _Refused("change your one-time password first")
        return _Session(username=user.username, role=user.role, expires_at=claims.expires_at)


def _token_from_subprotocols(websocket: WebSocket) -> str | None:
    for protocol in websocket.scope.get("subprotocols", ()):
        if isinstance(protocol, str) and protocol.startswith("bearer."):
            return protocol.removeprefix("bearer.")
    return None


async def _receive_json(websocket: WebSocket, timeout: float | None = None) -> dict[str, Any]:
    text = await asyncio.wait_for(websocket.receive_text(), timeout)
    if len(text) > MAX_FRAME_CHARS:
        raise _Refused("message too large")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Refused("send JSON messages") from exc
    if not isinstance(message, dict):
        raise _Refused("send JSON objects")
    return message


async def pump(subscriber: Subscriber, websocket: WebSocket) -> None:
    """Forward the subscriber's messages to the socket until it is dropped.

    Raises
    ------
    SlowSubscriber
        When the subscriber falls too far behind, even while a send is stuck on a dead network.
    """
    gone = asyncio.ensure_future(subscriber.wait_dropped())
    try:
        while True:
            message = await subscriber.get()
            send = asyncio.ensure_future(websocket.send_json({"type": "message", **message}))
            await asyncio.wait({send, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not send.done():
                send.cancel()
                raise SlowSubscriber(f"fell more than {subscriber.queue_size} messages behind")
            send.result()
    finally:
        gone.cancel()


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Serve one dashboard connection (see the module's documentation for the protocol)."""
    ctx: AppContext = websocket.app.state.context
    hub: Broadcaster = websocket.app.state.hub
    offered = websocket.scope.get("subprotocols", ())
    header_token = _token_from_subprotocols(websocket)
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        if header_token is not None:
            session = await asyncio.to_thread(_authenticate, ctx, header_token)
        else:
            first = await _receive_json(websocket, AUTH_TIMEOUT_S)
            if first.get("type") != "auth":
                raise _Refused("the first message must be {type: auth, token}")
            session = await asyncio.to_thread(_authenticate, ctx, first.get("token"))
    except (TimeoutError, _Refused) as exc:
        reason = exc.reason if isinstance(exc, _Refused) else "no access token in time"
        await websocket.close(code=POLICY_VIOLATION, reason=reason[:120])
        return
    except WebSocketDisconnect:
        return
    allowed = allowed_channels(session.role)
    await websocket.send_json(
        {"type": "welcome", "user": session.username, "role": session.role.value, "channels": allowed}
    )
    subscriber = hub.subscribe((), queue_size=DEFAULT_QUEUE_SIZE)
    sender = asyncio.create_task(pump(subscriber, websocket))
    receiver = asyncio.create_task(_serve_requests(websocket, subscriber, allowed))
    lifetime = (session.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    expiry = asyncio.create_task(asyncio.sleep(max(lifetime, 0.0)))
    try:
        done, _ = await asyncio.wait({sender, receiver, expiry}, return_when=asyncio.FIRST_COMPLETED)
        code, reason = 1000, "bye"
        if expiry in done:
            code, reason = TOKEN_EXPIRED, "the access token expired: refresh it and reconnect"
        elif sender in done and isinstance(sender.exception(), SlowSubscriber):
            code, reason = TRY_AGAIN_LATER, "too slow: reconnect"
            logger.info("dropped a slow dashboard connection of %s", session.username)
        elif receiver in done and isinstance(receiver.exception(), _Refused):
            code, reason = POLICY_VIOLATION, str(receiver.exception())
    finally:
        for task in (sender, receiver, expiry):
            task.cancel()
        for task in (sender, receiver, expiry):
            with contextlib.suppress(BaseException):
                await task
        hub.unsubscribe(subscriber)
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason[:120])


async def _serve_requests(websocket: WebSocket, subscriber: Subscriber, allowed: list[str]) -> None:
    """Handle subscribe/unsubscribe/ping requests until the page goes away."""
    while True:
        try:
            request = await _receive_json(websocket)
        except WebSocketDisconnect:
            return
        kind = request.get("type")
        if kind in ("subscribe", "unsubscribe"):
            asked = request.get("channels")
            if not isinstance(asked, list) or not all(isinstance(c, str) for c in asked) or len(asked) > 32:
                raise _Refused("channels must be a list of names")
            wanted = set(asked)
            refused = sorted(c for c in wanted if c not in allowed)
            granted = wanted - set(refused)
            current = set(subscriber.channels)
            current = current | granted if kind == "subscribe" else current - granted
            subscriber.set_channels(current)
            await websocket.send_json({"type": "subscribed", "channels": sorted(current), "refused": refused})
        elif kind == "ping":
            await websocket.send_json({"type": "pong"})
        else:
            raise _Refused("unknown request type")
