"""The open-WebSocket gauge counts the sockets of live web processes only: each process counts its own and keeps
them published while it lives, so a process that dies holding sockets drops out once its liveness runs out
(WS_GAUGE_TTL_SECONDS, short here), while a live one that keeps refreshing stays counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import uvicorn
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from prometheus_client.parser import text_string_to_metric_families
from rest_framework_simplejwt.tokens import AccessToken
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from algoterm.metrics import ws_connections, ws_process_id
from algoterm.tests.test_serve import free_port, http_status

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(settings.BASE_DIR)
TTL_SECONDS = 0.6  # the liveness of a process that stops refreshing, refreshed every 0.2 s by a live one


@contextlib.contextmanager
def web_server() -> Iterator[str]:
    """A real uvicorn serving algoterm.asgi on a free port, in a thread of this process (so it shares the test
    database and the settings); yields its ws:// base."""
    port = free_port()
    config = uvicorn.Config(
        "algoterm.asgi:application", host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the web server never started")
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        # The server's threads hold database connections that the test database's teardown must not find open.
        asyncio.run_coroutine_threadsafe(database_sync_to_async(connections.close_all)(), loop).result(10)
        server.should_exit = True
        thread.join(15)
        loop.close()


def wait_for(condition: Callable[[], object], *, what: str, timeout: float = 10) -> object:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def open_socket(sockets: contextlib.ExitStack, base: str, path: str, user) -> ClientConnection:
    """A socket past its server_ready, closed when `sockets` closes (if not before)."""
    socket_ = sockets.enter_context(ws_connect(f"{base}{path}?token={AccessToken.for_user(user)}", open_timeout=10))
    assert json.loads(socket_.recv(timeout=10))["t"] == "server_ready"
    return socket_


def counted(**expected: int) -> Callable[[], bool]:
    return lambda: all(ws_connections()[endpoint] == count for endpoint, count in expected.items())


def test_open_sockets_are_counted_per_endpoint_and_closing_them_uncounts_them(
    trader, admin_user, admin_client, settings
):
    settings.WS_GAUGE_TTL_SECONDS = TTL_SECONDS
    with web_server() as base:
        with contextlib.ExitStack() as sockets:
            first = open_socket(sockets, base, "/ws/events", trader)
            open_socket(sockets, base, "/ws/events", trader)
            open_socket(sockets, base, "/ws/market-data", trader)
            open_socket(sockets, base, "/ws/ops", admin_user)
            wait_for(counted(events=2, market_data=1, ops=1), what="the open sockets were never counted")

            scrape = admin_client.get("/api/metrics").content.decode()
            scraped = {family.name: family for family in text_string_to_metric_families(scrape)}
            gauge = {s.labels["endpoint"]: s.value for s in scraped["algoterm_websocket_connections"].samples}
            assert gauge == {"events": 2, "market_data": 1, "ops": 1}

            time.sleep(3 * TTL_SECONDS)  # several liveness periods: a live process keeps its sockets counted
            assert ws_connections() == {"events": 2, "market_data": 1, "ops": 1}

            first.close()
            wait_for(counted(events=1, market_data=1, ops=1), what="a closed socket stayed counted")
        wait_for(counted(events=0, market_data=0, ops=0), what="closed sockets stayed counted")


def _test_database_url() -> str:
    params = connections["default"].settings_dict
    return f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


@contextlib.contextmanager
def web_process() -> Iterator[tuple[str, subprocess.Popen]]:
    """Another web process (uvicorn, as `serve` runs it) on the test database and this run's Redis prefix, whose
    liveness is TTL_SECONDS; yields its ws:// base and the process."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
        "WS_GAUGE_TTL_SECONDS": str(TTL_SECONDS),
        "LOG_LEVEL": "ERROR",
    }
    command = [sys.executable, "-m", "uvicorn", "algoterm.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen([*command, "--no-access-log", "--lifespan", "off"], cwd=ROOT, env=env)
    try:
        started = time.monotonic()
        while http_status(f"http://127.0.0.1:{port}/api/version") != 200:
            assert server.poll() is None, "the web process exited during start-up"
            assert time.monotonic() - started < 30, "the web process never answered"
            time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}", server
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)


@pytest.mark.skipif(settings.EMBEDDED, reason="one process when embedded: nothing else can die holding sockets")
def test_a_web_process_that_dies_holding_sockets_stops_being_counted(wall_clock, trader, settings):
    settings.WS_GAUGE_TTL_SECONDS = TTL_SECONDS
    client = redis.Redis.from_url(settings.REDIS_URL)
    processes_key = cache.make_key("metrics:ws:processes")
    with web_server() as here, web_process() as (there, doomed):
        with contextlib.ExitStack() as sockets:
            open_socket(sockets, here, "/ws/events", trader)
            # Closing these after the crash only fails quietly: nothing on the other side is left to answer.
            open_socket(sockets, there, "/ws/events", trader)
            open_socket(sockets, there, "/ws/events", trader)
            open_socket(sockets, there, "/ws/market-data", trader)
            wait_for(counted(events=3, market_data=1), what="the sockets of both processes were never counted")
            assert client.scard(processes_key) == 2

            doomed.send_signal(signal.SIGKILL)  # no close handshake, no uncounting: a crash
            doomed.wait(timeout=10)
            wait_for(counted(events=1, market_data=0), what="the dead process's sockets stayed counted")

            # The dead process was pruned; the live one, refreshing, outlives several liveness periods.
            assert {member.decode() for member in client.smembers(processes_key)} == {ws_process_id()}
            time.sleep(3 * TTL_SECONDS)
            assert ws_connections() == {"events": 1, "market_data": 0, "ops": 0}
        wait_for(counted(events=0), what="the live process's closed socket stayed counted")
    assert client.scard(processes_key) == 0  # with nothing open, the process leaves the gauge at once
    client.close()
