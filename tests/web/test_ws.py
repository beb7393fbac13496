from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from finsecure.auth.models import Role, User
from finsecure.core.deps import AppContext
from finsecure.core.security import create_access_token
from finsecure.web.hub import InMemoryBroadcaster, SlowSubscriber
from finsecure.web.ws import POLICY_VIOLATION, TOKEN_EXPIRED, allowed_channels, pump
from tests.conftest import login


def _token(client: TestClient, make_user: Callable[..., User], role: Role) -> str:
    return login(client, make_user(role).username)["access_token"]


def test_websocket__no_token_is_closed_with_policy_violation(web_client: TestClient) -> None:
    with web_client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "subscribe", "channels": ["kpi"]})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == POLICY_VIOLATION


def test_websocket__bad_token_is_closed_with_policy_violation(web_client: TestClient) -> None:
    with web_client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": "not-a-jwt"})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == POLICY_VIOLATION
    assert "sign in again" in (closed.value.reason or "")


def test_websocket__viewer_gets_live_messages_but_not_the_admin_channel(
    web_client: TestClient, web_app: FastAPI, make_user: Callable[..., User]
) -> None:
    token = _token(web_client, make_user, Role.viewer)
    hub: InMemoryBroadcaster = web_app.state.hub
    with web_client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": token})
        welcome = ws.receive_json()
        assert welcome["type"] == "welcome"
        assert welcome["role"] == "viewer"
        assert "system" not in welcome["channels"]
        ws.send_json({"type": "subscribe", "channels": ["kpi", "system"]})
        answer = ws.receive_json()
        assert answer == {"type": "subscribed", "channels": ["kpi"], "refused": ["system"]}
        hub.publish("system", {"secret": True})
        hub.publish("kpi", {"events_per_s": {"payment": 3.0}})
        message: dict[str, Any] = ws.receive_json()
    assert message == {"type": "message", "channel": "kpi", "data": {"events_per_s": {"payment": 3.0}}}


def test_websocket__token_in_subprotocol_header(
    web_client: TestClient, web_app: FastAPI, make_user: Callable[..., User]
) -> None:
    token = _token(web_client, make_user, Role.admin)
    with web_client.websocket_connect("/ws", subprotocols=["finsecure.v1", f"bearer.{token}"]) as ws:
        welcome = ws.receive_json()
        assert welcome["role"] == "admin"
        assert "system" in welcome["channels"]
        ws.send_json({"type": "subscribe", "channels": ["system"]})
        assert ws.receive_json()["channels"] == ["system"]
        web_app.state.hub.publish("system", {"queue_depth": 0})
        assert ws.receive_json()["channel"] == "system"
        assert ws.accepted_subprotocol == "finsecure.v1"


def test_websocket__unknown_request_closes(web_client: TestClient, make_user: Callable[..., User]) -> None:
    token = _token(web_client, make_user, Role.viewer)
    with web_client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": token})
        ws.receive_json()
        ws.send_json({"type": "drop tables"})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == POLICY_VIOLATION


def test_allowed_channels__admin_sees_everything() -> None:
    assert allowed_channels(Role.admin) == ["alerts", "events", "incidents", "kpi", "system"]


class _StuckSocket:
    """A connection whose network never takes the next frame (a browser tab frozen in the background)."""

    def __init__(self) -> None:
        self.sent = 0
        self.stuck = asyncio.Event()

    async def send_json(self, data: Any) -> None:
        self.sent += 1
        await self.stuck.wait()  # never set: the first send never completes


def test_pump__slow_connection_is_dropped_and_the_publisher_never_waits() -> None:
    hub = InMemoryBroadcaster()

    async def scenario() -> tuple[int, int]:
        subscriber = hub.subscribe({"kpi"}, queue_size=16)
        socket = _StuckSocket()
        task = asyncio.create_task(pump(subscriber, socket))  # type: ignore[arg-type]
        hub.publish("kpi", {"i": 0})
        for _ in range(5):
            await asyncio.sleep(0)  # the pump takes it and gets stuck sending it
        for i in range(100):  # as the pipeline would, without awaiting anything
            hub.publish("kpi", {"i": i})
        with pytest.raises(SlowSubscriber):
            await asyncio.wait_for(task, 1)
        return socket.sent, hub.subscribers

    sent, subscribers = asyncio.run(scenario())
    assert sent == 1
    assert subscribers == 0


def test_websocket__closed_when_the_access_token_expires(
    web_client: TestClient, web_context: AppContext, make_user: Callable[..., User]
) -> None:
    user = make_user(Role.viewer)
    settings = web_context.settings
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.access_token_ttl_s - 5)
    token, _ = create_access_token(settings, user_id=user.id, role=user.role.value, now=issued)
    with web_client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "auth", "token": token})
        assert ws.receive_json()["type"] == "welcome"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()  # nothing is published: the next frame is the close
    assert closed.value.code == TOKEN_EXPIRED
