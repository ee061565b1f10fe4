"""The WebSocket base (core) authenticates sockets through the authenticator accounts registers in its ready();
without one, every socket is refused rather than let in."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from rest_framework_simplejwt.tokens import AccessToken

from accounts.authentication import authenticate_access_token
from accounts.tests.factories import UserFactory
from algoterm.api import socket_auth, ws
from algoterm.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _close_worker_thread_connections():
    yield
    # The sync-to-async worker thread keeps its own connection; close it so the test database can be dropped.
    await database_sync_to_async(connections.close_all)()


async def _first_messages(token: str) -> tuple[dict, dict]:
    communicator = WebsocketCommunicator(application, f"/ws/events?token={token}")
    try:
        connected, _ = await communicator.connect()
        assert connected
        first = await communicator.receive_json_from(timeout=3)
        second = await communicator.receive_output(timeout=3)
    finally:
        await communicator.disconnect()
    return first, second


def test_accounts_registers_the_socket_authenticator():
    assert socket_auth._authenticator is authenticate_access_token


async def test_a_valid_token_is_let_in_through_the_registered_authenticator():
    user = await database_sync_to_async(UserFactory)()
    first, _ = await _first_messages(str(AccessToken.for_user(user)))
    assert first["t"] == "server_ready", first


async def test_without_an_authenticator_every_socket_is_refused(monkeypatch):
    user = await database_sync_to_async(UserFactory)()
    monkeypatch.setattr(socket_auth, "_authenticator", None)

    error, close = await _first_messages(str(AccessToken.for_user(user)))

    assert error["t"] == "error", error
    assert error["p"]["code"] == "AUTH_INVALID" and error["p"]["recoverable"] is False
    assert close == {"type": "websocket.close", "code": ws.CLOSE_AUTH_FAILED}
