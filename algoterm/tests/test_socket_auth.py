"""Sockets follow the account: every WebSocket closes when its session ends (logout 4401, deactivation 4403, token
expiry 4401), and a client renews its access token in-band without reconnecting. Through the real ASGI stack, with
sessions ended through the REST API, over the Redis channel layer and the in-memory one."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connections
from rest_framework.fields import DateTimeField
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from accounts.models import Role
from accounts.tests.factories import DEFAULT_PASSWORD, AdminFactory, UserFactory
from algoterm.api.ws import SocketToken
from algoterm.asgi import application
from algoterm.testing import client_for
from algoterm.tests.test_serve import http
from algoterm.tests.test_websocket_lifecycle import register, stack_database, web_process

pytestmark = pytest.mark.django_db(transaction=True)

PATHS = ["/ws/market-data", "/ws/events"]
IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

_open: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def _close_sockets_and_worker_thread_connections():
    yield
    while _open:
        await _open.pop().disconnect()
    # The sync-to-async worker thread keeps its own connection; close it so the test database can be dropped.
    await database_sync_to_async(connections.close_all)()


@pytest.fixture(params=["redis", "in-memory"])
def channel_layer(request, settings):
    """The Redis layer (web processes apart from the one ending the session) and the in-memory one (embedded)."""
    if request.param == "in-memory":
        settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
        assert isinstance(get_channel_layer(), InMemoryChannelLayer)
    return request.param


@pytest.fixture
async def user():
    return await database_sync_to_async(UserFactory)()


def short_lived_token(user, seconds: int = 2) -> str:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=seconds))
    return str(token)


async def login(user) -> dict:
    """A device's session, as the app gets it: access and refresh tokens from the login endpoint."""

    def post():
        response = APIClient().post(
            "/api/auth/login", {"email": user.email, "password": DEFAULT_PASSWORD}, format="json"
        )
        assert response.status_code == 200, response.content
        return response.json()

    return await database_sync_to_async(post)()


async def logout(session: dict) -> None:
    def post():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {session['access']}")
        response = client.post("/api/auth/logout", {"refresh": session["refresh"]}, format="json")
        assert response.status_code == 204, response.content

    await database_sync_to_async(post)()


async def open_socket(path: str, token: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"{path}?token={token}")
    _open.append(communicator)
    connected, _ = await communicator.connect()
    assert connected
    await expect(communicator, "server_ready")
    if path == "/ws/events":
        await expect(communicator, "snapshot")
    return communicator


async def expect(communicator, message_type: str, timeout: float = 3) -> dict:
    message = await communicator.receive_json_from(timeout=timeout)
    assert message["t"] == message_type, message
    return message["p"]


async def assert_closed(communicator, *, error_code: str, close_code: int, timeout: float = 3) -> dict:
    """The last message says why, without inviting a retry; then the close code."""
    error = await expect(communicator, "error", timeout=timeout)
    assert error["code"] == error_code and error["recoverable"] is False and error["message"], error
    assert await communicator.receive_output(timeout=timeout) == {"type": "websocket.close", "code": close_code}
    return error


async def assert_open(communicator) -> None:
    await communicator.send_json_to({"t": "ping", "p": {}})
    await expect(communicator, "pong")


# --- logout ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_logout_closes_the_sessions_sockets_with_4401(channel_layer, user, path):
    session = await login(user)
    communicator = await open_socket(path, session["access"])

    await logout(session)

    error = await assert_closed(communicator, error_code="AUTH_INVALID", close_code=4401)
    assert error["message"] == "Logged out."


async def test_logout_on_one_device_leaves_the_other_devices_sockets_open(channel_layer, user):
    phone, tablet = await login(user), await login(user)
    phone_socket = await open_socket("/ws/market-data", phone["access"])
    tablet_socket = await open_socket("/ws/market-data", tablet["access"])

    await logout(phone)

    await assert_closed(phone_socket, error_code="AUTH_INVALID", close_code=4401)
    assert await tablet_socket.receive_nothing(timeout=0.3)
    await assert_open(tablet_socket)


async def test_a_socket_renewed_with_the_logged_out_token_follows_it(user):
    """The socket follows the token it holds now, not the one it opened with."""
    first, second = await login(user), await login(user)
    communicator = await open_socket("/ws/market-data", first["access"])
    await communicator.send_json_to({"t": "auth", "p": {"token": second["access"]}})
    await expect(communicator, "auth_renewed")

    await logout(first)
    assert await communicator.receive_nothing(timeout=0.3)
    await logout(second)

    await assert_closed(communicator, error_code="AUTH_INVALID", close_code=4401)


# --- deactivation and roles -----------------------------------------------------------------------------------------


async def test_deactivation_through_the_admin_api_closes_every_socket_with_4403(channel_layer, user):
    admin = await database_sync_to_async(AdminFactory)()
    market = await open_socket("/ws/market-data", (await login(user))["access"])
    events = await open_socket("/ws/events", (await login(user))["access"])
    bystander = await open_socket("/ws/market-data", str(AccessToken.for_user(admin)))

    def deactivate():
        response = client_for(admin).post(f"/api/admin/users/{user.pk}/deactivate", {"reason": "fraud"}, format="json")
        assert response.status_code == 200, response.content

    await database_sync_to_async(deactivate)()

    for communicator in (market, events):
        await assert_closed(communicator, error_code="ACCOUNT_DEACTIVATED", close_code=4403)
    await assert_open(bystander)


async def test_a_user_demoted_to_view_only_keeps_market_data(user):
    """Neither socket trades: market data and the user's own events are for every role."""
    admin = await database_sync_to_async(AdminFactory)()
    communicator = await open_socket("/ws/market-data", str(AccessToken.for_user(user)))

    def demote():
        response = client_for(admin).patch(f"/api/users/{user.pk}", {"role": Role.USER}, format="json")
        assert response.status_code == 200, response.content

    await database_sync_to_async(demote)()

    assert await communicator.receive_nothing(timeout=0.3)
    await assert_open(communicator)


# --- expiry and in-band renewal -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_a_socket_closes_with_4401_when_its_token_expires(user, path):
    communicator = await open_socket(path, short_lived_token(user))

    await assert_closed(communicator, error_code="AUTH_EXPIRED", close_code=4401, timeout=4)


async def test_server_ready_says_when_the_token_expires(user):
    token = AccessToken.for_user(user)
    communicator = WebsocketCommunicator(application, f"/ws/market-data?token={token}")
    _open.append(communicator)
    await communicator.connect()

    ready = await expect(communicator, "server_ready")

    expires_at = SocketToken.from_access_token(token).expires_at
    assert ready["token_expires_at"] == DateTimeField().to_representation(expires_at)


@pytest.mark.parametrize("path", PATHS)
async def test_renewing_in_band_keeps_the_socket_open_past_the_old_expiry(user, path):
    communicator = await open_socket(path, short_lived_token(user))

    await communicator.send_json_to({"t": "auth", "p": {"token": str(AccessToken.for_user(user))}})
    renewed = await expect(communicator, "auth_renewed")

    assert 14 * 60 < renewed["expires_in"] <= 15 * 60 and renewed["expires_at"]
    assert await communicator.receive_nothing(timeout=2.5)  # past the first token's expiry
    await assert_open(communicator)


async def test_a_renewed_token_expires_too(user):
    communicator = await open_socket("/ws/market-data", str(AccessToken.for_user(user)))

    await communicator.send_json_to({"t": "auth", "p": {"token": short_lived_token(user)}})
    await expect(communicator, "auth_renewed")

    await assert_closed(communicator, error_code="AUTH_EXPIRED", close_code=4401, timeout=4)


async def test_renewing_with_another_users_token_closes_4401(user):
    other = await database_sync_to_async(UserFactory)()
    communicator = await open_socket("/ws/market-data", str(AccessToken.for_user(user)))

    await communicator.send_json_to({"t": "auth", "p": {"token": str(AccessToken.for_user(other))}})

    await assert_closed(communicator, error_code="AUTH_INVALID", close_code=4401)


@pytest.mark.parametrize("token", ["garbage", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_renewing_with_an_invalid_token_closes_4401(user, token):
    communicator = await open_socket("/ws/events", str(AccessToken.for_user(user)))

    await communicator.send_json_to({"t": "auth", "p": {"token": token}})

    await assert_closed(communicator, error_code="AUTH_INVALID", close_code=4401)


async def test_renewing_with_a_logged_out_token_closes_4401(user):
    communicator = await open_socket("/ws/market-data", str(AccessToken.for_user(user)))
    session = await login(user)
    await logout(session)

    await communicator.send_json_to({"t": "auth", "p": {"token": session["access"]}})

    await assert_closed(communicator, error_code="AUTH_INVALID", close_code=4401)


@pytest.mark.parametrize("payload", [{}, {"token": ""}, {"token": 42}])
async def test_a_malformed_renewal_is_a_recoverable_error(user, payload):
    communicator = await open_socket("/ws/market-data", str(AccessToken.for_user(user)))

    await communicator.send_json_to({"t": "auth", "p": payload})

    error = await expect(communicator, "error")
    assert error["code"] == "VALIDATION_ERROR" and error["recoverable"] is True
    await assert_open(communicator)


async def test_an_expired_token_cannot_open_a_socket(user):
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=-1))
    communicator = WebsocketCommunicator(application, f"/ws/market-data?token={token}")
    _open.append(communicator)
    await communicator.connect()

    assert (await expect(communicator, "error"))["code"] == "AUTH_INVALID"
    assert (await communicator.receive_output(timeout=3))["code"] == 4401


# --- across processes -----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_logout_served_by_one_web_process_closes_the_socket_another_one_serves():
    with stack_database() as env, web_process(env) as socket_server, web_process(env) as api_server:
        session = register(socket_server.base)
        url = f"{socket_server.ws_base}/ws/market-data?token={session['access']}"
        with ws_connect(url, open_timeout=10) as socket_:
            assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"

            logout_url = f"{api_server.base}/api/auth/logout"
            assert http("POST", logout_url, {"refresh": session["refresh"]}, session["access"])[0] == 204

            assert json.loads(socket_.recv(timeout=5)) == {
                "t": "error",
                "p": {"message": "Logged out.", "code": "AUTH_INVALID", "recoverable": False},
            }
            with pytest.raises(ConnectionClosed) as closed:
                socket_.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
