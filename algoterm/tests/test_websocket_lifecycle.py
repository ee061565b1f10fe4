"""Sockets that stay up and resume cleanly: an idle /ws/events outlives the channel layer's blocking Redis read, the
server pings it, a reconnect starts from a snapshot, and a shutting-down server closes sockets with 1012.

The e2e tests run a real uvicorn process serving algoterm.asgi (with the ping options `manage.py serve` passes)
against its own PostgreSQL database and the shared Redis under its own key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import uvicorn
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import connections
from django.test import override_settings
from rest_framework_simplejwt.tokens import AccessToken
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from accounts.tests.factories import UserFactory
from algoterm.api.ws import server_ping_args, server_ping_options
from algoterm.asgi import application
from algoterm.realtime import user_group
from algoterm.testing import client_for
from algoterm.tests.test_serve import ROOT, base_env, free_port, http, http_status, manage, scratch_database

# More than twice the 5 s after which every idle socket used to die (redis-py's socket_timeout == brpop_timeout).
# A longer soak: WS_IDLE_SECONDS=3600 make test PYTEST_ARGS="-k idle_events_socket" (CI keeps it short).
IDLE_SECONDS = int(os.environ.get("WS_IDLE_SECONDS", "13"))
# Pings this often in the e2e web process, so a few arrive while the socket idles.
TEST_PING_SECONDS = 4


# --- configuration --------------------------------------------------------------------------------------------------


def test_the_channel_layers_read_timeout_outlasts_its_blocking_read():
    layer = get_channel_layer()
    assert isinstance(layer, RedisChannelLayer)

    connection_kwargs = layer.create_pool(0).connection_kwargs

    assert connection_kwargs["socket_timeout"] == settings.CHANNEL_LAYER_SOCKET_TIMEOUT
    assert connection_kwargs["socket_timeout"] >= 2 * RedisChannelLayer.brpop_timeout
    assert 0 < connection_kwargs["socket_connect_timeout"] < connection_kwargs["socket_timeout"]
    assert connection_kwargs["socket_keepalive"] is True


def test_the_web_server_pings_every_socket(settings):
    settings.WS_PING_INTERVAL_SECONDS, settings.WS_PING_TIMEOUT_SECONDS = 15, 10

    config = uvicorn.Config("algoterm.asgi:application", **server_ping_options())

    assert (config.ws_ping_interval, config.ws_ping_timeout) == (15, 10)
    assert server_ping_args() == ["--ws-ping-interval", "15.0", "--ws-ping-timeout", "10.0"]


# --- the snapshot a (re)connecting client starts from ---------------------------------------------------------------


@database_sync_to_async
def trader_with_an_open_order_and_a_position() -> tuple:
    """A filled market buy of 5 (a position, and the fill's notification) and a resting limit buy of 2."""
    from brokers.prices import quote_at, quote_publish
    from orders.tests.factories import EQUITY, paper_account, standard_instruments

    standard_instruments()
    user = UserFactory()
    account = paper_account(user)
    quote_publish(quote_at(EQUITY, "1500"))
    order = {"account_id": account.pk, "symbol": EQUITY, "side": "BUY", "product": "MIS"}
    client = client_for(user)
    filled = client.post("/api/orders", {**order, "quantity": 5, "order_type": "MARKET"}, format="json")
    resting = client.post("/api/orders", {**order, "quantity": 2, "order_type": "LIMIT", "price": 1400}, format="json")
    assert filled.status_code == resting.status_code == 201, (filled.json(), resting.json())
    return user, resting.json()["id"]


@pytest.mark.django_db(transaction=True)
async def test_events_connect_starts_with_a_snapshot_of_open_orders_and_positions():
    from orders.tests.factories import EQUITY

    user, resting_id = await trader_with_an_open_order_and_a_position()
    try:
        communicator = WebsocketCommunicator(application, f"/ws/events?token={AccessToken.for_user(user)}")
        assert (await communicator.connect(timeout=5))[0]
        assert (await communicator.receive_json_from(timeout=5))["t"] == "server_ready"
        snapshot = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
    finally:
        await database_sync_to_async(connections.close_all)()

    assert snapshot["t"] == "snapshot"
    state = snapshot["p"]
    assert [order["id"] for order in state["orders"]] == [resting_id]
    assert state["orders"][0]["status"] == "OPEN" and state["orders"][0]["price"] == 1400
    [position] = state["positions"]
    assert (position["symbol"], position["quantity"], position["ltp"]) == (EQUITY, 5, 1500)
    assert state["unread_notifications"] >= 1  # the fill's notification
    assert set(state["topics"]) == {"orders", "trades", "positions", "rms", "notifications"}


# --- a real web process ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stack_database(*, redis_url: str | None = None) -> Iterator[dict]:
    """A migrated PostgreSQL database of its own and a Redis key prefix of its own; yields the process environment."""
    database = settings.DATABASES["default"]
    name = f"{database['TEST']['NAME'] if database.get('TEST', {}).get('NAME') else 'algoterm'}_web_{os.getpid()}"
    prefix = f"{settings.REDIS_KEY_PREFIX}-web-{os.getpid()}"
    try:
        with scratch_database(name) as database_url:
            env = {
                **base_env(),
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url or settings.REDIS_URL,
                "REDIS_KEY_PREFIX": prefix,
                "BILLING_PLAN_THROTTLE": "false",
            }
            manage(env, "migrate", "--noinput")
            yield env
    finally:
        if not redis_url:
            client = redis.Redis.from_url(settings.REDIS_URL)
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


@dataclass
class WebProcess:
    base: str
    process: subprocess.Popen

    @property
    def ws_base(self) -> str:
        return self.base.replace("http", "ws", 1)


@contextlib.contextmanager
def web_process(env: dict, *, ping_seconds: float = TEST_PING_SECONDS) -> Iterator[WebProcess]:
    """uvicorn on algoterm.asgi with the options `manage.py serve` gives it (pings every `ping_seconds` here), once
    it answers. Its output is printed if the block fails."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with override_settings(WS_PING_INTERVAL_SECONDS=ping_seconds):
        ping_args = server_ping_args()
    command = [sys.executable, "-m", "uvicorn", "algoterm.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-access-log", "--lifespan", "off", *ping_args]
    with tempfile.TemporaryFile() as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while http_status(f"{base}/api/version") != 200:
                assert server.poll() is None, "the web process exited during start-up"
                assert time.monotonic() - started < 30, "the web process never answered"
                time.sleep(0.1)
            yield WebProcess(base, server)
        except BaseException:
            output.seek(0)
            print(output.read().decode(errors="replace")[-6000:])
            raise
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def register(base: str) -> dict:
    stamp = time.time_ns()
    status, body = http(
        "POST",
        f"{base}/api/auth/register",
        {
            "name": "Idle Trader",
            "email": f"idle-{stamp}@example.com",
            "phone": f"98{stamp % 10**8:08d}",
            "password": "Quiet-Socket-2026",
        },
    )
    assert status == 201, body
    return body


def push_notification(env: dict, user_id: str, payload: dict) -> None:
    """What any process's `realtime.push_to_user` does, sent into the web process's channel layer."""
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    hosts = [{**host, "address": env["REDIS_URL"]} for host in config["hosts"]]
    layer = RedisChannelLayer(**{**config, "hosts": hosts, "prefix": f"{env['REDIS_KEY_PREFIX']}:asgi"})
    message = {"type": "user.event", "topic": "notifications", "t": "notification", "p": payload}
    async_to_sync(layer.group_send)(user_group(user_id), message)


class FrameLog(logging.Handler):
    """The websockets client logs every frame at DEBUG: '< PING ...' is a ping the server sent."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.e2e
def test_an_idle_events_socket_stays_open_is_pinged_and_still_gets_pushes_and_pongs():
    frames = FrameLog()
    client_logger = logging.getLogger("algoterm.tests.ws-client")
    client_logger.setLevel(logging.DEBUG)
    client_logger.propagate = False
    client_logger.addHandler(frames)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(client_logger.removeHandler, frames)
        env = cleanup.enter_context(stack_database())
        web = cleanup.enter_context(web_process(env))
        session = register(web.base)
        url = f"{web.ws_base}/ws/events?token={session['access']}"
        # The client never pings on its own: the socket is as idle as a phone in a pocket.
        with ws_connect(url, open_timeout=10, ping_interval=None, logger=client_logger) as socket_:
            assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"
            assert json.loads(socket_.recv(timeout=5))["t"] == "snapshot"

            time.sleep(IDLE_SECONDS)
            push_notification(env, session["user"]["id"], {"id": "ntf_idle", "title": "Still here"})
            assert json.loads(socket_.recv(timeout=5)) == {
                "t": "notification",
                "p": {"id": "ntf_idle", "title": "Still here"},
            }
            socket_.send(json.dumps({"t": "ping", "p": {}}))
            assert json.loads(socket_.recv(timeout=5))["t"] == "pong"

    server_pings = [line for line in frames.lines if line.startswith("< PING")]
    assert len(server_pings) >= IDLE_SECONDS // TEST_PING_SECONDS - 1, frames.lines


@pytest.mark.e2e
def test_a_shutting_down_web_process_closes_sockets_with_1012_and_a_reconnect_resumes_from_a_snapshot():
    with stack_database() as env:
        with web_process(env) as web:
            session = register(web.base)
            url = f"{web.ws_base}/ws/events?token={session['access']}"
            with ws_connect(url, open_timeout=10) as socket_:
                assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"
                assert json.loads(socket_.recv(timeout=5))["t"] == "snapshot"
                web.process.terminate()  # SIGTERM, as a supervisor or a deploy stops it
                with pytest.raises(ConnectionClosed) as closed:
                    socket_.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # Service Restart
            # ... and exits promptly (uvicorn re-raises the signal it handled, hence -SIGTERM)
            assert web.process.wait(timeout=10) in (0, -signal.SIGTERM)

        with web_process(env) as web:  # the restarted server
            url = f"{web.ws_base}/ws/events?token={session['access']}"
            with ws_connect(url, open_timeout=10) as socket_:
                assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"
                snapshot = json.loads(socket_.recv(timeout=5))
    assert snapshot["t"] == "snapshot" and snapshot["p"]["unread_notifications"] == 1  # the welcome notification


async def test_a_receive_loop_whose_cancellation_was_swallowed_still_ends(monkeypatch):
    """Python 3.11's asyncio.wait_for (inside redis-py) can swallow a cancellation; the layer finishes it."""
    from algoterm.channel_layer import RedisChannelLayer as Layer

    rounds = []

    async def round_that_swallows_the_cancellation(self, index, channel, timeout):
        rounds.append(channel)
        if len(rounds) == 1:
            asyncio.current_task().cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)  # as a wait_for that finished at the same moment would
        else:
            await asyncio.sleep(0.05)  # channels_redis alone would keep going round
        return None  # BZPOPMIN timed out: nothing popped

    monkeypatch.setattr(RedisChannelLayer, "_brpop_with_clean", round_that_swallows_the_cancellation)
    layer = Layer(hosts=[{"address": settings.REDIS_URL}])

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(layer.receive(await layer.new_channel()), timeout=5)
    assert len(rounds) == 1
