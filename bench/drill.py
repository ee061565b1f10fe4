"""The fault drill: the distributed stack (`manage.py serve` on PostgreSQL and Redis: web, worker, beat and the
simulated feed as supervised processes) under a client load like a mobile app's, while a worker is killed, the web
process is killed and Redis is restarted. Prints orders sent, acknowledged, doubled and lost, the 5xx answers, and
how long each fault took to heal.

Every client thread places its orders one by one, each with its own Idempotency-Key, and retries the same key on a
5xx, a connection error or 409 CONFLICT, as a real client does; a final answer is 201 or a 4xx other than 409.

Talks only to 127.0.0.1. Uses a PostgreSQL database of its own (DRILL_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench_drill: dropped, created and migrated by the run, dropped at the
end) and a Redis server of its own on a free port (started, killed and restarted by the drill), so it never touches
development data or the machine's Redis.

    .venv/bin/python bench/drill.py                  # 8 clients, 200 orders
    .venv/bin/python bench/drill.py --quick          # 4 clients, 40 orders: CI's run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.database import database_recreate  # noqa: E402

os.environ.setdefault("DRILL_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench_drill")
RETRY_STATUSES = {409, 500, 502, 503, 504}
START_SECONDS = 90
SETTLE_SECONDS = 90
ANSWER_DEADLINE_SECONDS = 150  # a client gives an order up after this long without a final answer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the stack: its own Redis server, its own database, `serve` in the distributed shape -------------------------


class PrivateRedis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None
        self.workdir = tempfile.mkdtemp(prefix="drill-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("the drill needs redis-server on PATH")
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the drill's Redis did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def stack_environment(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": os.environ["DRILL_DATABASE_URL"],
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": "drill",
        "DJANGO_ENV": "development",
        "DJANGO_SETTINGS_MODULE": "algoterm.settings",
        # The drill's own ports only: no broker simulators (the paper broker needs none) on their fixed ports.
        "BROKER_SIMULATORS": "false",
        "MARKET_FEED": "simulated",
        "MARKET_ALWAYS_OPEN": "true",
        # A load test would spend the plan's requests-per-minute budget at once and count 429s instead.
        "BILLING_PLAN_THROTTLE": "false",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONUNBUFFERED": "1",
    }


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def children_of(pid: int) -> list[tuple[int, str]]:
    """The processes whose parent is `pid`, with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return found


def child_pid(serve: subprocess.Popen, marker: str) -> int | None:
    for pid, command in children_of(serve.pid):
        if marker in command:
            return pid
    return None


# --- the clients --------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    connection_errors: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # key -> final status
    order_ids: dict[str, str] = field(default_factory=dict)  # key -> the order id answered
    successes: list[float] = field(default_factory=list)  # monotonic times of 2xx answers
    lock: threading.Lock = field(default_factory=threading.Lock)


def login(base: str, email: str, password: str) -> str:
    response = requests.post(f"{base}/api/auth/login", json={"email": email, "password": password}, timeout=30)
    response.raise_for_status()
    return response.json()["access"]


def client_loop(base: str, token: str, body_for, keys: list[str], tally: Tally, pace: float) -> None:
    """One client's orders, `pace` seconds apart, so the load spans every fault."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    for index, key in enumerate(keys):
        if index:
            time.sleep(pace)
        body = body_for(index)
        deadline = time.monotonic() + ANSWER_DEADLINE_SECONDS
        backoff = 0.2
        while time.monotonic() < deadline:
            try:
                response = session.post(f"{base}/api/orders", json=body, headers={"Idempotency-Key": key}, timeout=40)
            except requests.RequestException:
                with tally.lock:
                    tally.connection_errors += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 3.0)
                continue
            with tally.lock:
                tally.statuses[response.status_code] += 1
            reused = response.status_code == 409 and "IDEMPOTENCY_KEY_REUSED" in response.text
            if response.status_code in RETRY_STATUSES and not reused:
                time.sleep(backoff)
                backoff = min(backoff * 2, 3.0)
                continue
            with tally.lock:
                tally.answers[key] = response.status_code
                payload = response.json() if response.content else {}
                tally.order_ids[key] = payload.get("id") or payload.get("order_id") or ""
                if response.status_code < 300:
                    tally.successes.append(time.monotonic())
            break


# --- the faults ---------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    at: float  # monotonic time the fault happened
    healed_at: float | None = None

    @property
    def recovery(self) -> str:
        return f"{self.healed_at - self.at:.1f} s" if self.healed_at is not None else "not healed"


def wait_healthy(base: str, *, since: float, timeout: float = 90) -> float | None:
    """The time /api/health answered 200 again (database, Redis and a worker up)."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/api/health", timeout=5).status_code == 200:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return None


@contextlib.contextmanager
def demo_stack_served(
    *, env: dict[str, str], port: int, database_variable: str, log_path: str = "", start_seconds: float = START_SECONDS
):
    """The run's own database (named by `database_variable`) migrated and seeded with the demo, and `serve` on
    `port` until healthy; on the way out the stack is stopped and the database dropped, whatever happened."""
    database_recreate(database_variable)
    serve = None
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "sync_periodic_tasks")
        manage(env, "seed_demo")
        log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed with the stack)
        serve = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait_healthy(f"http://127.0.0.1:{port}", since=time.monotonic(), timeout=start_seconds) is None:
            raise SystemExit("the stack did not become healthy")
        yield serve
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.kill()
        database_recreate(database_variable, drop_only=True)


def first_success_after(tally: Tally, moment: float, *, timeout: float = 90) -> float | None:
    deadline = moment + timeout
    while time.monotonic() < deadline:
        with tally.lock:
            later = [t for t in tally.successes if t > moment]
        if later:
            return min(later)
        time.sleep(0.1)
    return None


def inject_faults(serve: subprocess.Popen, redis: PrivateRedis, base: str, tally: Tally, gap: float) -> list[Fault]:
    faults = []
    time.sleep(gap)
    worker = child_pid(serve, "worker@")  # the order worker, not the backtest worker
    if worker is not None:
        os.kill(worker, signal.SIGKILL)
        fault = Fault("worker killed (SIGKILL)", time.monotonic())
        # Healed when a worker answers the health check's ping again.
        time.sleep(1.0)
        fault.healed_at = wait_healthy(base, since=fault.at)
        faults.append(fault)
    time.sleep(gap)
    web = child_pid(serve, "uvicorn")
    if web is not None:
        os.kill(web, signal.SIGKILL)
        fault = Fault("web killed (SIGKILL)", time.monotonic())
        fault.healed_at = first_success_after(tally, fault.at)
        faults.append(fault)
    time.sleep(gap)
    redis.kill()
    time.sleep(3.0)
    redis.start()
    # Timed from Redis's return: what is measured is how long the stack takes to use it again.
    fault = Fault("Redis down 3 s, then back", time.monotonic())
    fault.healed_at = first_success_after(tally, fault.at)
    faults.append(fault)
    return faults


# --- the books afterwards ----------------------------------------------------------------------------------------


def settle_and_count(keys: list[str], tally: Tally, env: dict[str, str]) -> dict[str, int]:
    """Count from the database once reconciliation has settled every order: doubled and lost, by key and tag."""
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX", "DJANGO_ENV")})
    os.environ["DJANGO_SETTINGS_MODULE"] = "algoterm.settings"
    import django

    django.setup()
    from brokers.models import SimOrder
    from orders.models import Order, OrderStatus

    unsettled = (OrderStatus.SUBMITTING, OrderStatus.UNKNOWN, OrderStatus.PENDING)
    deadline = time.monotonic() + SETTLE_SECONDS
    while Order.objects.filter(status__in=unsettled).exists() and time.monotonic() < deadline:
        time.sleep(1)
    orders_by_key = Counter(
        Order.objects.filter(idempotency_record__key__in=keys).values_list("idempotency_record__key", flat=True)
    )
    tags = {order.broker_tag: order for order in Order.objects.all()}
    at_broker = Counter(SimOrder.objects.values_list("tag", flat=True))
    orphans = sum(count for tag, count in at_broker.items() if tag not in tags)
    repeated = sum(count - 1 for count in at_broker.values() if count > 1)
    doubled = orphans + repeated + sum(count - 1 for count in orders_by_key.values() if count > 1)
    accepted = {key for key, status in tally.answers.items() if status == 201}
    placed_keys = {
        key
        for key, tag in (
            (order.idempotency_record.key, order.broker_tag)
            for order in Order.objects.filter(idempotency_record__key__in=keys).select_related("idempotency_record")
        )
        if at_broker.get(tag)
    }
    # Lost: told "placed" but the broker has nothing; or never told anything; or never settled.
    lost = (
        len(accepted - placed_keys)
        + len(set(keys) - set(tally.answers))
        + Order.objects.filter(status__in=unsettled).count()
    )
    return {
        "at_broker": sum(at_broker.values()),
        "doubled": doubled,
        "lost": lost,
        "unsettled": Order.objects.filter(status__in=unsettled).count(),
    }


# --- the run ------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="4 clients, 40 orders, faults 2 s apart")
    parser.add_argument("--log", default="", help="write the stack's output to this file (default: discarded)")
    args = parser.parse_args()
    clients, total, gap = (4, 40, 2.0) if args.quick else (args.clients, args.orders, 4.0)
    # The faults take about 4 gaps and their recoveries; the clients' orders are spread over twice that.
    pace = 8 * gap / max(total // clients, 1)

    redis = PrivateRedis(free_port())
    redis.start()
    env = stack_environment(redis.url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        with demo_stack_served(env=env, port=port, database_variable="DRILL_DATABASE_URL", log_path=args.log) as serve:
            token = login(base, "trader@example.com", "Trader@Demo2026")
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            account = next(a for a in session.get(f"{base}/api/brokers/accounts", timeout=30).json()["items"])
            equities = session.get(f"{base}/api/instruments", params={"instrument_type": "EQ"}, timeout=30).json()
            symbol = equities["items"][0]["symbol"]

            def body_for(index: int) -> dict:
                # Buys and sells by turns, so the position stays small and no risk limit is reached.
                return {
                    "account_id": account["id"],
                    "symbol": symbol,
                    "side": "BUY" if index % 2 == 0 else "SELL",
                    "quantity": 1,
                    "order_type": "MARKET",
                    "product": "MIS",
                }

            keys = [f"drill-{uuid.uuid4().hex}" for _ in range(total)]
            per_client = [keys[i::clients] for i in range(clients)]
            tally = Tally()
            threads = [
                threading.Thread(target=client_loop, args=(base, token, body_for, chunk, tally, pace))
                for chunk in per_client
            ]
            load_started = time.monotonic()
            for thread in threads:
                thread.start()
            faults = inject_faults(serve, redis, base, tally, gap)
            for thread in threads:
                thread.join()
            load_seconds = time.monotonic() - load_started
            books = settle_and_count(keys, tally, env)
    finally:
        redis.close()

    five_hundreds = tally.statuses.get(500, 0)
    other_5xx = sum(count for status, count in tally.statuses.items() if status > 500)
    acknowledged = len(tally.answers)
    rows = [
        ("orders sent (one key each)", str(total)),
        ("acknowledged (final answer)", str(acknowledged)),
        ("  of which 201 placed", str(sum(1 for s in tally.answers.values() if s == 201))),
        ("  of which refused (4xx)", str(sum(1 for s in tally.answers.values() if 400 <= s < 500))),
        ("orders at the broker", str(books["at_broker"])),
        ("doubled", str(books["doubled"])),
        ("lost", str(books["lost"])),
        ("500 answers", str(five_hundreds)),
        ("other 5xx answers (retried)", str(other_5xx)),
        ("connection errors (retried)", str(tally.connection_errors)),
        ("answers by status", json.dumps(dict(sorted(tally.statuses.items())))),
        *((f"recovery: {fault.name}", fault.recovery) for fault in faults),
        ("load duration", f"{load_seconds:.1f} s ({total / load_seconds:.1f} orders/s)"),
        ("whole drill", f"{time.monotonic() - started:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nFault drill: {clients} clients, {total} orders, distributed stack (serve: web, worker, beat, feed)")
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  -----")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    healed = all(fault.healed_at is not None for fault in faults) and len(faults) == 3
    ok = books["doubled"] == 0 and books["lost"] == 0 and five_hundreds == 0 and healed
    print("\nverdict: " + ("PASS (0 doubled, 0 lost, 0 500s, every fault healed)" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
