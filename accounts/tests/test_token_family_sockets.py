"""A reused refresh token ends every session of the account, live WebSockets included (4401)."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from rest_framework.test import APIClient

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from algoterm.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def _post(path: str, body: dict) -> dict:
    response = APIClient().post(path, body, format="json")
    return {"status": response.status_code, **response.json()}


async def test_a_reused_refresh_token_closes_every_socket_of_the_account():
    user = await database_sync_to_async(UserFactory)()
    login = {"email": user.email, "password": DEFAULT_PASSWORD}
    phone = await database_sync_to_async(_post)("/api/auth/login", login)
    laptop = await database_sync_to_async(_post)("/api/auth/login", login)
    socket = WebsocketCommunicator(application, f"/ws/market-data?token={laptop['access']}")
    try:
        connected, _ = await socket.connect()
        assert connected
        assert (await socket.receive_json_from(timeout=3))["t"] == "server_ready"

        rotated = await database_sync_to_async(_post)("/api/auth/refresh", {"refresh": phone["refresh"]})
        reused = await database_sync_to_async(_post)("/api/auth/refresh", {"refresh": phone["refresh"]})

        assert (rotated["status"], reused["status"], reused["error_code"]) == (200, 401, "AUTH_INVALID")
        error = await socket.receive_json_from(timeout=3)
        assert error["t"] == "error" and error["p"]["code"] == "AUTH_INVALID" and error["p"]["recoverable"] is False
        assert await socket.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}
    finally:
        await socket.disconnect()
        await database_sync_to_async(connections.close_all)()
