"""/ws/events over the Redis channel layer, through the real ASGI stack (origin check, JWT auth, routing)."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from rest_framework_simplejwt.tokens import AccessToken

from accounts import services
from accounts.models import User
from accounts.tests.factories import AdminFactory, UserFactory
from algoterm.asgi import application
from algoterm.realtime import push_to_user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


_open: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def _close_worker_thread_connections():
    yield
    while _open:
        await _open.pop().disconnect()
    # The sync-to-async worker thread keeps its own connection; close it so the test database can be dropped.
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
async def user():
    return await database_sync_to_async(UserFactory)()


def token_for(user) -> str:
    return str(AccessToken.for_user(user))


async def connect(path: str, headers=None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    _open.append(communicator)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def expect(communicator, message_type: str, timeout: float = 3) -> dict:
    message = await communicator.receive_json_from(timeout=timeout)
    assert message["t"] == message_type, message
    return message["p"]


async def ready(communicator) -> dict:
    """Every connection opens with server_ready and then the snapshot; returns the snapshot."""
    await expect(communicator, "server_ready")
    return await expect(communicator, "snapshot")


async def test_channel_layer_is_redis():
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "algoterm.channel_layer.RedisChannelLayer"


async def test_query_token_connects_and_ping_pongs(user):
    communicator = await connect(f"/ws/events?token={token_for(user)}")

    server_ready = await expect(communicator, "server_ready")
    assert server_ready["protocol_version"] == 1 and server_ready["connection_id"]
    snapshot = await expect(communicator, "snapshot")
    assert snapshot == {
        "topics": ["notifications", "orders", "positions", "rms", "trades"],
        "unread_notifications": 0,
        "orders": [],
        "positions": [],
    }
    await communicator.send_json_to({"t": "ping", "p": {}})
    assert "server_time" in await expect(communicator, "pong")
    await communicator.disconnect()


async def test_authorization_header_connects(user):
    communicator = await connect("/ws/events", headers=[(b"authorization", f"Bearer {token_for(user)}".encode())])
    await ready(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize("query", ["", "?token=garbage", "?token=eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_bad_or_missing_token_gets_error_then_close_4401(query):
    communicator = await connect(f"/ws/events{query}")

    error = await expect(communicator, "error")
    assert error["recoverable"] is False and error["code"] in ("AUTH_REQUIRED", "AUTH_INVALID")
    assert (await communicator.receive_output(timeout=3)) == {"type": "websocket.close", "code": 4401}


async def test_deactivated_user_token_is_refused(user):
    await database_sync_to_async(User.objects.filter(pk=user.pk).update)(is_active=False)
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    assert (await expect(communicator, "error"))["code"] == "ACCOUNT_DEACTIVATED"
    assert (await communicator.receive_output(timeout=3))["code"] == 4401


async def test_garbage_gets_a_recoverable_error_and_the_connection_stays(user):
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    await ready(communicator)

    for garbage in ["not json", "[1, 2]", '{"p": {}}', '{"t": "ping", "p": 3}', '{"t": "launch_missiles"}']:
        await communicator.send_to(text_data=garbage)
        error = await expect(communicator, "error")
        assert error["recoverable"] is True and error["code"] == "VALIDATION_ERROR"
    await communicator.send_to(bytes_data=b"\x00\x01")
    assert (await expect(communicator, "error"))["recoverable"] is True

    await communicator.send_json_to({"t": "ping", "p": {}})
    await expect(communicator, "pong")
    await communicator.disconnect()


async def test_pushes_arrive_for_subscribed_topics_only(user):
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    await ready(communicator)

    await database_sync_to_async(services.notification_create)(user=user, kind="order.filled", title="Filled")
    note = await expect(communicator, "notification")
    assert note["title"] == "Filled" and note["id"].startswith("ntf_")

    await communicator.send_json_to({"t": "subscription", "p": {"action": "unsubscribe", "topics": ["notifications"]}})
    await communicator.send_json_to({"t": "request_snapshot", "p": {}})
    snapshot = await expect(communicator, "snapshot")
    assert "notifications" not in snapshot["topics"] and snapshot["unread_notifications"] == 1

    await database_sync_to_async(services.notification_create)(user=user, kind="order.filled", title="Hidden")
    await database_sync_to_async(push_to_user)(user_id=user.pk, message_type="order_update", payload={"id": "ord_x"})
    assert (await expect(communicator, "order_update"))["id"] == "ord_x"
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_another_users_pushes_never_arrive(user):
    other = await database_sync_to_async(UserFactory)()
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    await ready(communicator)

    await database_sync_to_async(services.notification_create)(user=other, kind="x", title="Not yours")

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "watch", "topics": ["orders"]},
        {"action": "subscribe", "topics": []},
        {"action": "subscribe", "topics": ["gossip"]},
    ],
)
async def test_bad_subscriptions_are_refused(user, payload):
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    await ready(communicator)
    await communicator.send_json_to({"t": "subscription", "p": payload})
    assert (await expect(communicator, "error"))["code"] == "VALIDATION_ERROR"
    await communicator.disconnect()


async def test_deactivation_closes_live_connections(user):
    admin = await database_sync_to_async(AdminFactory)()
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    await ready(communicator)

    await database_sync_to_async(services.user_deactivate)(actor=admin, user=user)

    assert (await expect(communicator, "error"))["code"] == "ACCOUNT_DEACTIVATED"
    assert (await communicator.receive_output(timeout=3))["code"] == 4403


async def test_disallowed_browser_origin_is_rejected(user):
    communicator = WebsocketCommunicator(
        application, f"/ws/events?token={token_for(user)}", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_allowed_origin_connects(user):
    communicator = WebsocketCommunicator(
        application, f"/ws/events?token={token_for(user)}", headers=[(b"origin", b"http://localhost:8000")]
    )
    connected, _ = await communicator.connect()
    assert connected
    await ready(communicator)
    await communicator.disconnect()


async def test_message_flood_is_rate_limited(user, settings):
    settings.WS_MAX_MESSAGES_PER_SECOND = 5
    communicator = await connect(f"/ws/events?token={token_for(user)}")
    await ready(communicator)

    for _ in range(8):
        await communicator.send_json_to({"t": "ping", "p": {}})
    replies = [await communicator.receive_json_from(timeout=3) for _ in range(8)]

    assert [reply["t"] for reply in replies].count("pong") == 5
    assert {reply["p"]["code"] for reply in replies if reply["t"] == "error"} == {"RATE_LIMITED"}
    await asyncio.sleep(1.05)
    await communicator.send_json_to({"t": "ping", "p": {}})
    await expect(communicator, "pong")
    await communicator.disconnect()


async def test_unknown_ws_path_closes_with_4404(user):
    communicator = await connect(f"/ws/nowhere?token={token_for(user)}")
    assert (await expect(communicator, "error"))["code"] == "NOT_FOUND"
    assert (await communicator.receive_output(timeout=3))["code"] == 4404
