"""The stack as `make run` starts it, in both modes, driven over real HTTP and WebSocket connections."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
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
def running_stack(env: dict) -> Iterator[tuple[str, subprocess.Popen]]:
    """Migrate, seed and `manage.py serve` as `make run` does; yields the base URL and the serve process once health
    answers 200."""
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
        yield base, server
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
    """A newcomer's first minutes: register, log in, watch the feed's ticks on /ws/market-data, open /ws/events;
    then an admin deactivation reaches the live socket, and beat's heartbeat runs through the worker."""
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

    # The running feed's ticks reach a subscriber, whichever web process serves it.
    with ws_connect(f"{ws_base}/ws/market-data?token={login['access']}", open_timeout=10) as socket_:
        assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"
        subscription = {"action": "subscribe", "symbols": ["NSE:INFY", "NSE:NIFTY 50"], "mode": "ltp"}
        socket_.send(json.dumps({"t": "subscription", "p": subscription}))
        snapshot = json.loads(socket_.recv(timeout=10))  # quoted or missing: the feed may not have ticked yet
        assert snapshot["t"] == "snapshot", snapshot
        ticked: set[str] = set()
        deadline = time.monotonic() + 30
        while ticked != {"NSE:INFY", "NSE:NIFTY 50"}:
            assert time.monotonic() < deadline, ticked
            message = json.loads(socket_.recv(timeout=10))
            assert message["t"] == "ticks", message
            ticked |= {tick["symbol"] for tick in message["p"]["ticks"]}

    with ws_connect(f"{ws_base}/ws/events?token={login['access']}", open_timeout=10) as socket_:
        assert json.loads(socket_.recv(timeout=5))["t"] == "server_ready"
        assert json.loads(socket_.recv(timeout=5))["t"] == "snapshot"
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
    from algoterm.sandbox.demo import DEMO_CREDENTIALS
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


def child_pid(parent: int, marker: str) -> int:
    """The pid of `parent`'s child whose command line contains `marker`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # a process that ended while we looked
            continue
        if ppid == parent and marker.encode() in command:
            return int(stat.parent.name)
    raise AssertionError(f"no child of {parent} runs {marker}")


def children(parent: int) -> dict[int, bytes]:
    """`parent`'s child processes: pid to command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # a process that ended while we looked
            continue
        if ppid == parent:
            found[int(stat.parent.name)] = command
    return found


def web_parent(serve_pid: int) -> int | None:
    """uvicorn's parent process under serve, if one runs (a dead one, not yet reaped, has no command line)."""
    return next((pid for pid, command in children(serve_pid).items() if b"uvicorn" in command), None)


def accepting_process(server_port: int, client_port: int, candidates: set[int]) -> int | None:
    """Which of `candidates` holds the server end of the TCP connection from `client_port` to `server_port`: the
    kernel's socket table gives the socket's inode, each process's open files say who has it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
                if (local, remote) == (server_port, client_port):
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return pid
    return None


def several_web_processes_answer_on_one_port(base: str, *, serve_pid: int, expected: int) -> None:
    """WEB_CONCURRENCY processes accept connections on the one port: each connection's server end is traced to the
    process that holds it, until every web process has answered one."""
    web = child_pid(serve_pid, "uvicorn")
    workers = {pid for pid, command in children(web).items() if b"spawn_main" in command}
    assert len(workers) == expected, children(web)
    port = urllib.parse.urlsplit(base).port
    answered, held = set(), []
    try:
        for _ in range(200):
            connection = HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/api/health")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            held.append(connection)  # kept open, so the next one is accepted anew
            answered.add(accepting_process(port, connection.sock.getsockname()[1], workers))
            if answered >= workers:
                break
    finally:
        for connection in held:
            connection.close()
    assert answered == workers


def web_is_restarted_and_operators_alerted(base: str, *, serve_pid: int) -> None:
    """The outage the supervisor exists for: the web process dies, serve starts another, admins hear of it."""
    web = child_pid(serve_pid, "uvicorn")
    killed = time.monotonic()
    os.kill(web, signal.SIGKILL)
    # Until serve has noticed, the dead parent's workers may still answer: wait for a new parent too.
    while http_status(f"{base}/api/health") != 200 or web_parent(serve_pid) in (None, web):
        assert time.monotonic() - killed < 20, "the web process was not restarted"
        time.sleep(0.2)
    print(f"web answered again {time.monotonic() - killed:.1f}s after it was killed")
    _, admin = http("POST", f"{base}/api/auth/login", {"email": "admin@example.com", "password": "Admin@Demo2026"})
    status, notifications = http("GET", f"{base}/api/notifications?kind=system.process", token=admin["access"])
    assert status == 200
    [alert] = notifications["items"]
    assert alert["title"] == "web crashed and is restarting" and alert["level"] == "warning"
    assert alert["body"].startswith("web was killed by SIGKILL after ")


def test_serve_refuses_a_busy_web_port_in_one_line(django_db_setup):
    database = settings.DATABASES["default"]
    test_database = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "serve", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": test_database, "LOG_LEVEL": "WARNING", "BROKER_SIMULATORS": "0"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"CommandError: web cannot start: port {port} on 127.0.0.1 is already in use by another program "
        "(stop it, or serve on another port with --port or PORT)"
    )


@pytest.mark.django_db
def test_serve_runs_the_broker_simulators_as_optional_children_with_their_ports(settings):
    from algoterm.management.commands.serve import Command
    from algoterm.sandbox.demo import available_simulators

    settings.BROKER_SIMULATORS = True
    children = {child.name: child for child in Command()._distributed_children("0.0.0.0", 9000)}

    assert (children["web"].required, children["web"].ports) == (True, (("0.0.0.0", 9000),))
    assert children["worker"].required and children["beat"].required
    kite = settings.SIMULATOR_PORTS["kite"]
    if "kite" in available_simulators():
        assert children["kite-simulator"].ports == (("127.0.0.1", kite), ("127.0.0.1", kite + 10))
    simulators = [child for name, child in children.items() if name.endswith("-simulator")]
    assert "razorpay-simulator" in children and not any(child.required for child in simulators)


def test_operators_alert_notifies_every_active_admin_and_audits(transactional_db):
    from accounts.models import AuditEvent, Notification
    from accounts.tests.factories import AdminFactory, UserFactory
    from algoterm.management.commands.serve import operators_alert
    from algoterm.supervisor import ChildEvent, EventKind

    admin, _retired_admin, trader = AdminFactory(), AdminFactory(is_active=False), UserFactory()
    event = ChildEvent(
        EventKind.RESTARTING, "worker", "worker exited with code 1 after 3.2s up; restarting in 2s", 2, delay=2.0
    )
    # As the supervisor calls it: on a thread of its own, with a database connection of its own.
    alerting = threading.Thread(target=operators_alert, args=(event,))
    alerting.start()
    alerting.join(timeout=10)

    [notification] = Notification.objects.filter(kind="system.process")
    assert notification.user == admin
    assert (notification.title, notification.level) == ("worker crashed and is restarting", "warning")
    assert notification.body == event.message
    assert notification.data == {
        "process": "worker",
        "event": "restarting",
        "restarts_in_window": 2,
        "restart_in_seconds": 2.0,
    }
    assert not trader.notifications.exists()
    audit = AuditEvent.objects.get(action="system.process_restart")
    assert (audit.kind, audit.actor, audit.target_type, audit.target_id) == ("system", None, "process", "worker")
    assert audit.details["message"] == event.message


def test_embedded_stack_serves_everything_from_one_process(tmp_path):
    env = {
        **base_env(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "BROKER_SIMULATORS": "1",
        "MARKET_FEED": "simulated",
        "MARKET_ALWAYS_OPEN": "true",  # the feed trades whatever the wall clock says
        "KITE_SIMULATOR_PORT": str(free_port()),
        "DHAN_SIMULATOR_PORT": str(free_port()),
        "FYERS_SIMULATOR_PORT": str(free_port()),
    }
    with running_stack(env) as (base, _):
        connect_zerodha_through_the_demo_simulator(base)
        health = exercise(base, base.replace("http", "ws", 1))
        assert health["mode"] == "embedded"
        assert health["components"]["workers"]["info"]["mode"] == "in-process"
        with urllib.request.urlopen(f"{base}/docs", timeout=10) as docs:
            assert docs.status == 200 and b"swagger-ui" in docs.read()


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own for a process a test starts; yields its URL, drops it after."""
    database = settings.DATABASES["default"]
    admin_dsn = f"host={database['HOST']} port={database['PORT']} user={database['USER']} dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_distributed_stack_runs_web_worker_and_beat_processes():
    with scratch_database(f"algoterm_e2e_{os.getpid()}") as database_url:
        env = {
            **base_env(),
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL,
            "REDIS_KEY_PREFIX": f"{settings.REDIS_KEY_PREFIX}-e2e",
            "WEB_CONCURRENCY": "2",
            "DATABASE_POOL_MAX_SIZE": "20",  # as in production (the test environment's default is no pool)
            "MARKET_FEED": "simulated",
            "MARKET_ALWAYS_OPEN": "true",  # the feed trades whatever the wall clock says
        }
        with running_stack(env) as (base, server):
            health = exercise(base, base.replace("http", "ws", 1))
            assert health["mode"] == "distributed"
            assert health["components"]["workers"]["info"]["count"] >= 1
            several_web_processes_answer_on_one_port(base, serve_pid=server.pid, expected=2)
            # Killing uvicorn's parent takes its workers with it: otherwise they would keep the port.
            web_is_restarted_and_operators_alerted(base, serve_pid=server.pid)
            several_web_processes_answer_on_one_port(base, serve_pid=server.pid, expected=2)
