"""Dependency outages: with Redis or PostgreSQL down the API answers 503 SERVICE_UNAVAILABLE (with Retry-After) where
it needs them and keeps serving what PostgreSQL can answer; WebSockets are closed with 1013 and an `error`, never
refused with an HTTP 500; everything works again by itself once the dependency is back.

Redis outages are staged on a private redis-server that the test kills and restarts (the shared Redis serves the
test runs beside this one); database outages in-process by raising what Django raises, and for real against a
uvicorn process whose own database stops accepting connections (the e2e tests at the end)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from email.message import Message

import psycopg
import pytest
from celery import Celery
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django import db
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from accounts.tests.factories import DEFAULT_PASSWORD, UserFactory
from algoterm.asgi import application
from algoterm.testing import assert_error, client_for, private_redis, redis_settings
from algoterm.tests.outage_urls import OUTAGES
from algoterm.tests.test_serve import ROOT
from algoterm.tests.test_websocket_lifecycle import register, stack_database, web_process
from brokers.prices import quote_at
from marketdata.quotes import quotes_put

NOTIFICATIONS, ME = "/api/notifications", "/api/users/me"
LTP = "/api/ltp/NSE:INFY"  # the quote cache lives in Redis: nothing to fall back on


@pytest.fixture
def redis_server(settings):
    """The cache, channel layer and REDIS_URL on a private Redis the test may stop and start."""
    with private_redis() as server:
        for name, value in redis_settings(server.url, prefix=f"{django_settings.REDIS_KEY_PREFIX}-outage").items():
            setattr(settings, name, value)
        yield server


def assert_unavailable(response) -> dict:
    body = assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert response["Retry-After"] == "5" and body["retry_after"] == 5
    return body


# --- REST during a Redis outage ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_postgresql_reads_answer_200_and_redis_reads_503_while_redis_is_down(redis_server, trader_client):
    assert trader_client.get(NOTIFICATIONS).status_code == 200
    assert_error(trader_client.get(LTP), 404, "NOT_FOUND")  # Redis up: no quote, no instrument

    redis_server.stop()
    # Authentication (revocations in PostgreSQL), the plan throttle (fails open) and entitlements (read from
    # PostgreSQL) all work without Redis, so reads served by PostgreSQL still answer.
    assert trader_client.get(NOTIFICATIONS).status_code == 200
    me = trader_client.get(ME)
    assert me.status_code == 200 and me.json()["entitlements"]
    assert_unavailable(trader_client.get(LTP))

    redis_server.start()
    quotes_put([quote_at("NSE:INFY", "1890.40")])
    assert trader_client.get(LTP).json()["ltp"] == 1890.4
    assert trader_client.get(NOTIFICATIONS).status_code == 200


@pytest.mark.django_db
def test_revocations_hold_through_a_redis_outage_and_login_fails_closed(redis_server, trader):
    def login() -> dict:
        return APIClient().post("/api/auth/login", {"email": trader.email, "password": DEFAULT_PASSWORD}).json()

    logged_out, other_device = login(), login()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {logged_out['access']}")
    assert client.post("/api/auth/logout", {"refresh": logged_out["refresh"]}, format="json").status_code == 204

    redis_server.stop()
    assert_error(client.get(ME), 401, "AUTH_INVALID")
    assert client_for(trader).get(ME).status_code == 200
    still_in = APIClient()
    still_in.credentials(HTTP_AUTHORIZATION=f"Bearer {other_device['access']}")
    assert still_in.get(ME).status_code == 200
    # The failed-login counters live in Redis: without them a login is refused rather than left unguarded.
    response = APIClient().post("/api/auth/login", {"email": trader.email, "password": DEFAULT_PASSWORD})
    assert_unavailable(response)

    redis_server.start()
    assert login()["access"]
    assert_error(client.get(ME), 401, "AUTH_INVALID")


@pytest.mark.django_db
def test_the_plan_throttle_fails_open_and_logs_once_per_outage(redis_server, trader_client, caplog):
    assert trader_client.get(NOTIFICATIONS).status_code == 200  # counted in Redis
    caplog.clear()  # an earlier test's outage may have just been logged as over
    with caplog.at_level(logging.WARNING, logger="algoterm.outages"):
        redis_server.stop()
        statuses = [trader_client.get(NOTIFICATIONS).status_code for _ in range(3)]
        redis_server.start()
        assert trader_client.get(NOTIFICATIONS).status_code == 200

    assert statuses == [200, 200, 200]
    throttle = [record.getMessage() for record in caplog.records if "throttle" in record.getMessage()]
    assert len(throttle) == 2, throttle
    assert "unavailable" in throttle[0] and "available again" in throttle[1]


# --- the one mapping: dependency exceptions are 503, never 500 -----------------------------------------------------


@pytest.mark.django_db
@pytest.mark.urls("algoterm.tests.outage_urls")
@pytest.mark.parametrize("kind", sorted(OUTAGES))
@pytest.mark.parametrize("where", ["api", "django"])
def test_dependency_errors_are_503_with_retry_after_and_leak_nothing(kind, where):
    response = Client(raise_request_exception=False).get(f"/outage/{where}?kind={kind}", HTTP_X_REQUEST_ID="trace-503")

    body = assert_unavailable(response)
    assert body["request_id"] == "trace-503"
    assert "127.0.0.1" not in response.content.decode() and "closed" not in response.content.decode()


@pytest.mark.django_db
def test_every_operation_documents_the_503():
    schema = Client().get("/api/schema", {"format": "json"}).json()
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, route)


# --- WebSockets -----------------------------------------------------------------------------------------------------


async def open_socket(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"{path}?token={AccessToken.for_user(user)}")
    connected, _ = await communicator.connect(timeout=5)
    assert connected  # accepted, then closed: never an HTTP error on the handshake
    return communicator


async def assert_closed_for_outage(communicator: WebsocketCommunicator) -> None:
    message = await communicator.receive_json_from(timeout=5)
    if message["t"] == "server_ready":  # the outage may come after the handshake; the channel read fails next
        message = await communicator.receive_json_from(timeout=5)
    assert message == {
        "t": "error",
        "p": {
            "message": "A required service is unavailable; reconnect in a few seconds.",
            "code": "SERVICE_UNAVAILABLE",
            "recoverable": True,
        },
    }
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 1013}
    await communicator.disconnect()  # what the server does once the close handshake is over


@pytest.fixture
async def ws_user():
    yield await database_sync_to_async(UserFactory)()
    # The sync-to-async worker thread keeps its own connection; close it so the test database can be dropped.
    await database_sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/ws/events", "/ws/market-data"])
async def test_sockets_opened_during_a_redis_outage_close_with_1013_then_work_again(redis_server, ws_user, path):
    redis_server.stop()
    await assert_closed_for_outage(await open_socket(path, ws_user))

    redis_server.start()
    communicator = await open_socket(path, ws_user)
    assert (await communicator.receive_json_from(timeout=5))["t"] == "server_ready"
    if path == "/ws/events":
        assert (await communicator.receive_json_from(timeout=5))["t"] == "snapshot"
    await communicator.send_json_to({"t": "ping", "p": {}})
    assert (await communicator.receive_json_from(timeout=5))["t"] == "pong"
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_an_open_socket_is_closed_with_1013_when_redis_goes_away(redis_server, ws_user):
    communicator = await open_socket("/ws/events", ws_user)
    assert [(await communicator.receive_json_from(timeout=5))["t"] for _ in range(2)] == ["server_ready", "snapshot"]

    redis_server.stop()

    await assert_closed_for_outage(communicator)


@pytest.mark.django_db(transaction=True)
async def test_a_database_outage_during_the_handshake_is_1013_not_4401(ws_user, monkeypatch):
    from accounts import authentication

    def database_down(token):
        raise db.OperationalError("connection to server at 127.0.0.1, port 5432 failed: Connection refused")

    monkeypatch.setattr(authentication, "_user_for_validated_token", database_down)

    await assert_closed_for_outage(await open_socket("/ws/events", ws_user))


@pytest.mark.django_db(transaction=True)
async def test_a_database_outage_in_a_message_handler_is_a_recoverable_error(ws_user, monkeypatch):
    from accounts import selectors

    communicator = await open_socket("/ws/events", ws_user)
    assert [(await communicator.receive_json_from(timeout=5))["t"] for _ in range(2)] == ["server_ready", "snapshot"]

    def database_down(*, user):
        raise db.InterfaceError("connection already closed")

    monkeypatch.setattr(selectors, "events_snapshot", database_down)
    await communicator.send_json_to({"t": "request_snapshot", "p": {}})
    error = await communicator.receive_json_from(timeout=5)
    assert error["t"] == "error" and error["p"]["code"] == "SERVICE_UNAVAILABLE" and error["p"]["recoverable"]
    await communicator.send_json_to({"t": "ping", "p": {}})
    assert (await communicator.receive_json_from(timeout=5))["t"] == "pong"
    await communicator.disconnect()


# --- the real web process: PostgreSQL and Redis outages end to end --------------------------------------------------


def get(url: str, token: str) -> tuple[int, Message, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def assert_socket_closed_for_outage(url: str) -> None:
    with ws_connect(url, open_timeout=10) as socket_:
        message = json.loads(socket_.recv(timeout=10))
        if message["t"] == "server_ready":
            message = json.loads(socket_.recv(timeout=10))
        assert message["t"] == "error" and message["p"]["code"] == "SERVICE_UNAVAILABLE", message
        with pytest.raises(ConnectionClosed) as closed:
            socket_.recv(timeout=10)
    assert closed.value.rcvd.code == 1013


def assert_socket_works(url: str) -> None:
    with ws_connect(url, open_timeout=10) as socket_:
        assert json.loads(socket_.recv(timeout=10))["t"] == "server_ready"
        assert json.loads(socket_.recv(timeout=10))["t"] == "snapshot"


def database_accepts_connections(name: str, accept: bool) -> None:
    """Stage a database outage for this database only: refuse new connections and cut the open ones."""
    database = django_settings.DATABASES["default"]
    admin_dsn = f"host={database['HOST']} port={database['PORT']} user={database['USER']} dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(accept).lower()}')
        if not accept:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])


@pytest.mark.e2e
def test_a_postgresql_outage_answers_503_and_the_web_process_reconnects_after():
    with stack_database() as env, web_process(env) as web:
        base, name = web.base, env["DATABASE_URL"].rsplit("/", 1)[1]
        token = register(base)["access"]
        events = f"{web.ws_base}/ws/events?token={token}"
        assert get(f"{base}{NOTIFICATIONS}", token)[0] == 200

        database_accepts_connections(name, False)
        try:
            status, headers, body = get(f"{base}{NOTIFICATIONS}", token)
            assert (status, body["error_code"], headers["Retry-After"]) == (503, "SERVICE_UNAVAILABLE", "5"), body
            assert_socket_closed_for_outage(events)
        finally:
            database_accepts_connections(name, True)

        assert get(f"{base}{NOTIFICATIONS}", token)[0] == 200
        assert_socket_works(events)


@pytest.mark.e2e
def test_a_redis_outage_keeps_postgresql_reads_up_and_everything_recovers():
    with private_redis() as redis_server, stack_database(redis_url=redis_server.url) as env, web_process(env) as web:
        base, token = web.base, register(web.base)["access"]
        events = f"{web.ws_base}/ws/events?token={token}"
        assert_socket_works(events)

        redis_server.stop()
        assert get(f"{base}{NOTIFICATIONS}", token)[0] == 200
        status, headers, body = get(f"{base}{LTP}", token)
        assert (status, body["error_code"], headers["Retry-After"]) == (503, "SERVICE_UNAVAILABLE", "5"), body
        assert_socket_closed_for_outage(events)

        redis_server.start()
        deadline = time.monotonic() + 10
        while get(f"{base}{LTP}", token)[0] == 503:  # the cache reconnects on its next call
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert_socket_works(events)


@pytest.mark.e2e
def test_celery_tasks_fail_during_a_postgresql_outage_and_run_again_after():
    """The worker closes its database connection around every task (Celery's Django fix-up, CONN_MAX_AGE 0), so
    the first task after an outage opens a fresh one: no worker restart needed."""
    with stack_database() as env, tempfile.TemporaryFile() as output:
        name = env["DATABASE_URL"].rsplit("/", 1)[1]
        command = [sys.executable, "-m", "celery", "-A", "algoterm", "worker", "--pool", "solo", "-l", "INFO"]
        command += ["--without-mingle", "--without-gossip", "--hostname", f"outage-{os.getpid()}@%h"]
        worker = subprocess.Popen(command, cwd=ROOT, env={**env, "LOG_LEVEL": "INFO"}, stdout=output, stderr=output)
        sender = Celery("outage-test", broker=env["REDIS_URL"], set_as_current=False)
        sender.conf.broker_transport_options = {"global_keyprefix": f"{env['REDIS_KEY_PREFIX']}:celery:"}

        def log() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")

        def run_task() -> str:
            task_id = f"outage-{time.time_ns()}"
            sender.send_task(
                "accounts.tasks.purge_expired_tokens", task_id=task_id, queue=django_settings.TASK_QUEUE_DEFAULT
            )
            deadline = time.monotonic() + 30
            while True:
                for line in log().splitlines():
                    if f"[{task_id}] succeeded" in line:
                        return "succeeded"
                    if f"[{task_id}] raised" in line:
                        return "raised " + ("OperationalError" if "OperationalError" in line else line)
                assert worker.poll() is None and time.monotonic() < deadline, log()[-4000:]
                time.sleep(0.2)

        try:
            assert run_task() == "succeeded"
            database_accepts_connections(name, False)
            try:
                assert run_task() == "raised OperationalError"
            finally:
                database_accepts_connections(name, True)
            assert run_task() == "succeeded"
        finally:
            worker.terminate()
            worker.wait(timeout=20)
            sender.close()
