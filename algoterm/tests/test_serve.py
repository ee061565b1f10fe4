"""The stack as `make run` starts it, in both modes, driven over real HTTP and WebSocket connections."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def manage(env: dict, *args: str) -> None:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def running_stack(env: dict) -> Iterator[str]:
    """Migrate, seed and `manage.py serve` as `make run` does; yields the base URL once health answers 200."""
    manage(env, "migrate", "--noinput")
    manage(env, "seed_demo")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while http_status(f"{base}/api/health") != 200:
            assert server.poll() is None, "the stack exited during start-up"
            assert time.monotonic() - started < 60, "health never answered 200"
            time.sleep(0.2)
        print(f"stack healthy {time.monotonic() - started:.1f}s after start")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def http_status(url: str) -> int | None:
    try:
        return http("GET", url)[0]
    except (urllib.error.URLError, ConnectionError):
        return None


def exercise(base: str, ws_base: str) -> dict:
    """A newcomer's first minutes: register, log in, open /ws/events; then an admin deactivation reaches the
    live socket, and beat's heartbeat runs through the worker."""
    status, session = http(
        "POST",
        f"{base}/api/auth/register",
        {"name": "New Trader", "email": "new@example.com", "phone": "9876500000", "password": "Fresh-Start-2026"},
    )
    assert status == 201, session
    status, login = http("POST", f"{base}/api/auth/login", {"email": "new@example.com", "password": "Fresh-Start-2026"})
    assert status == 200
    status, me = http("GET", f"{base}/api/users/me", token=login["access"])
    assert status == 200 and me["unread_notifications"] == 1

    with ws_connect(f"{ws_base}/ws/events?token={login['access']}", open_timeout=10) as socket_:
        assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"
        socket_.send(json.dumps({"t": "ping", "p": {}}))
        assert json.loads(socket_.recv(timeout=5))["t"] == "pong"

        _, admin = http("POST", f"{base}/api/auth/login", {"email": "admin@example.com", "password": "Admin@Demo2026"})
        status, _ = http("PATCH", f"{base}/api/users/{me['id']}", {"status": "deactivated"}, token=admin["access"])
        assert status == 200
        message = json.loads(socket_.recv(timeout=5))
        assert message["t"] == "error" and message["p"]["code"] == "ACCOUNT_DEACTIVATED"

    status, _ = http("GET", f"{base}/api/users/me", token=login["access"])
    assert status == 403

    deadline = time.monotonic() + 40
    while True:
        _, health = http("GET", f"{base}/api/health")
        if health["components"]["scheduler"]["status"] == "up":
            return health
        assert time.monotonic() < deadline, health
        time.sleep(1)


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX")}
    env["LOG_LEVEL"] = "WARNING"
    return env


def connect_zerodha_through_the_demo_simulator(base: str) -> None:
    """The demo's promise: a 'zerodha' account connected end to end, login page included, with no internet."""
    from brokers.simulators.demo import DEMO_CREDENTIALS
    from brokers.tests.test_zerodha import submit_login_form

    _, login = http("POST", f"{base}/api/auth/login", {"email": "trader@example.com", "password": "Trader@Demo2026"})
    kite = DEMO_CREDENTIALS["kite"]
    status, started = http(
        "POST", f"{base}/api/brokers/connect", {"broker": "zerodha", "credentials": kite}, login["access"]
    )
    assert status == 201, started
    params = submit_login_form(started["login_url"], callback=f"{base}/api/brokers/callback/zerodha")
    status, account = http("GET", f"{base}/api/brokers/callback/zerodha?{urllib.parse.urlencode(params)}")
    assert status == 200 and account["status"] == "connected", account
    status, funds = http("GET", f"{base}/api/brokers/{account['id']}/funds", token=login["access"])
    assert status == 200 and funds["available_cash"] > 0


def test_embedded_stack_serves_everything_from_one_process(tmp_path):
    env = {
        **base_env(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "BROKER_SIMULATORS": "1",
        "KITE_SIMULATOR_PORT": str(free_port()),
        "DHAN_SIMULATOR_PORT": str(free_port()),
        "FYERS_SIMULATOR_PORT": str(free_port()),
    }
    with running_stack(env) as base:
        connect_zerodha_through_the_demo_simulator(base)
        health = exercise(base, base.replace("http", "ws", 1))
        assert health["mode"] == "embedded"
        assert health["components"]["workers"]["info"]["mode"] == "in-process"
        with urllib.request.urlopen(f"{base}/docs", timeout=10) as docs:
            assert docs.status == 200 and b"swagger-ui" in docs.read()


def test_distributed_stack_runs_web_worker_and_beat_processes():
    database = settings.DATABASES["default"]
    name = f"algoterm_e2e_{os.getpid()}"
    admin_dsn = f"host={database['HOST']} port={database['PORT']} user={database['USER']} dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        **base_env(),
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{name}",
        "REDIS_URL": settings.REDIS_URL,
        "REDIS_KEY_PREFIX": f"{settings.REDIS_KEY_PREFIX}-e2e",
    }
    try:
        with running_stack(env) as base:
            health = exercise(base, base.replace("http", "ws", 1))
            assert health["mode"] == "distributed"
            assert health["components"]["workers"]["info"]["count"] >= 1
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
