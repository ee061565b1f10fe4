"""The order pipeline over HTTP: POST /api/orders (a MARKET order, validated, paced, sent to the paper broker,
filled, with its trade, position and pushes) and GET /api/positions (500 open positions, with quotes and PnL),
through a real uvicorn server on PostgreSQL and Redis, at concurrency 1 and 16; each against a floor measured in the
same run (`/api/bench-floor`, mounted by bench/floor_urls.py in the bench server only: the same middleware and JWT
authentication, then one INSERT or one SELECT), with the ratio.

Talks only to 127.0.0.1. Uses its own PostgreSQL database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench: dropped, created and migrated by the run, dropped at the end)
and its own Redis key prefix (removed at the end), so it never touches development data.

    .venv/bin/python bench/bench_orders.py                 # 5 s measured per row after 1 s of warm-up
    .venv/bin/python bench/bench_orders.py --seconds 15
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.database import LOCAL_HOSTS, clean_redis, database_recreate  # noqa: E402
from bench.quick import sized  # noqa: E402

os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench")
os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
os.environ["DJANGO_SETTINGS_MODULE"] = "algoterm.settings"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-orders-{os.getpid()}")
os.environ["DJANGO_ENV"] = "test"
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "20")  # the server's pools, as in production (not the test default)
os.environ.setdefault("LOG_LEVEL", "WARNING")
# A load test would spend the plan's requests-per-minute budget in a second and measure 429s instead.
os.environ["BILLING_PLAN_THROTTLE"] = "false"

SERVER_START_SECONDS = 30
FLOOR_URLCONF = "bench.floor_urls"
PAPER_ACCOUNTS = 32  # orders go round-robin, so each account stays under the 9 orders/s pacing
OPENING_BALANCE = "100000000"  # the paper broker's maximum, so no order is refused for funds
ORDER_SYMBOLS = 10
BOOK_ACCOUNTS, BOOK_SYMBOLS = 5, 100  # 5 x 100 = 500 open positions
PRICE = "100"


# --- the server (subprocesses, as production runs them: WEB_CONCURRENCY uvicorn processes, default one per CPU, each
# with its connection pool; their CPU is not the clients') --------------------------------------------------------


def floor_application():
    """The ASGI application each web process builds (a uvicorn factory): the product's, with the floor routes."""
    import django
    from django.conf import settings

    django.setup()
    settings.ROOT_URLCONF = FLOOR_URLCONF  # the product's routes plus the floor; set before any URL is resolved
    from algoterm.asgi import application

    return application


def web_processes() -> int:
    import django

    django.setup()
    from algoterm.management.commands.serve import web_concurrency

    return web_concurrency()


def run_server(port: int) -> None:
    workers = web_processes()
    import uvicorn

    from algoterm.api.ws import server_ping_options

    uvicorn.run(
        "bench.bench_orders:floor_application",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        lifespan="off",
        access_log=False,
        log_level="warning",
        log_config=None,
        **server_ping_options(),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, __file__, "--role", "server", "--port", str(port)], cwd=ROOT, env=os.environ.copy()
    )
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the bench server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise SystemExit("the bench server did not start")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# --- the database: created, migrated and dropped by the run -----------------------------------------------------------


@dataclass
class Fixture:
    trader_token: str
    book_token: str
    accounts: list[str]
    symbols: list[str]
    migrate_seconds: float


def prepare() -> Fixture:
    import django

    django.setup()
    from datetime import date
    from decimal import Decimal

    from django.core.management import call_command
    from django.db import connection
    from rest_framework_simplejwt.tokens import AccessToken

    from accounts.models import User
    from bench.floor_urls import FLOOR_TABLE_SQL
    from billing.models import Plan, Subscription, SubscriptionStatus
    from brokers.prices import quote_at
    from brokers.services import broker_account_connect
    from marketdata.models import Instrument, InstrumentType
    from marketdata.quotes import quotes_put
    from orders.models import Position

    started = time.monotonic()
    call_command("migrate", verbosity=0)
    migrate_seconds = time.monotonic() - started
    with connection.cursor() as cursor:
        cursor.execute(FLOOR_TABLE_SQL)

    symbols = [f"NSE:BENCH{i:03d}" for i in range(BOOK_SYMBOLS)]
    Instrument.objects.bulk_create(
        Instrument(
            symbol=symbol,
            exchange="NSE",
            segment="NSE",
            tradingsymbol=symbol.split(":", 1)[1],
            instrument_type=InstrumentType.EQ,
            lot_size=1,
            tick_size=Decimal("0.05"),
        )
        for symbol in symbols
    )
    quotes_put([quote_at(symbol, PRICE, depth=1_000_000) for symbol in symbols])

    # The bench's users spread orders over more paper accounts than any public plan allows: a plan of its own.
    plan = Plan.objects.create(
        code="bench",
        name="Bench",
        max_broker_accounts=PAPER_ACCOUNTS + BOOK_ACCOUNTS,
        max_running_strategies=10,
        live_trading=True,
        api_requests_per_minute=10**6,
        websocket_symbols=1000,
        is_active=False,
    )

    def user(email: str, phone: str) -> User:
        created = User.objects.create_user(email, "Bench-Password-2026", name="Bench", phone=phone)
        Subscription.objects.create(user=created, plan=plan, status=SubscriptionStatus.ACTIVE)
        return created

    def paper(owner: User, index: int) -> str:
        credentials = {"opening_balance": OPENING_BALANCE}
        return broker_account_connect(
            user=owner, broker="paper", credentials=credentials, label=f"Bench {index}"
        ).account.pk

    trader = user("bench-orders@example.com", "+919800000097")
    accounts = [paper(trader, index) for index in range(PAPER_ACCOUNTS)]
    # The position book is seeded directly (the pipeline that writes positions is what the POST rows measure).
    book = user("bench-book@example.com", "+919800000096")
    book_accounts = [paper(book, index) for index in range(BOOK_ACCOUNTS)]
    today = date.today()
    Position.objects.bulk_create(
        Position(
            user=book,
            account_id=account,
            symbol=symbol,
            product="MIS",
            quantity=(1 + (a * BOOK_SYMBOLS + s) % 50) * (1 if s % 3 else -1),
            average_price=Decimal("99.50"),
            realized_pnl=Decimal("12.50"),
            trading_day=today,
            day_buy_quantity=60,
            day_sell_quantity=10,
            day_buy_value=Decimal("5970.00"),
            day_sell_value=Decimal("1000.00"),
            day_realized_pnl=Decimal("12.50"),
        )
        for a, account in enumerate(book_accounts)
        for s, symbol in enumerate(symbols)
    )
    connection.close()
    return Fixture(
        trader_token=str(AccessToken.for_user(trader)),
        book_token=str(AccessToken.for_user(book)),
        accounts=accounts,
        symbols=symbols[:ORDER_SYMBOLS],
        migrate_seconds=migrate_seconds,
    )


def pipeline_facts() -> dict:
    """What the server did, read back from the database after the run."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM orders_order GROUP BY status ORDER BY status")
        statuses = dict(cursor.fetchall())
        cursor.execute(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) OVER (PARTITION BY account_id ORDER BY created_at "
            "RANGE BETWEEN interval '1 second' PRECEDING AND CURRENT ROW) AS n FROM orders_order) AS windows"
        )
        peak = cursor.fetchone()[0]
    version = connection.pg_version
    connection.close()
    return {"statuses": statuses, "peak_per_account_second": peak, "postgres": version // 10000}


# --- the clients ------------------------------------------------------------------------------------------------------


class Session:
    """One keep-alive HTTP/1.1 connection per client thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def send(self, method: str, path: str, body: dict | None, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)  # of requests started inside the window
    completed: int = 0  # requests that ended inside the window, whenever they started
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else float("nan")

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds


def run_phase(port: int, request, *, concurrency: int, warmup: float, seconds: float) -> Phase:
    """`concurrency` threads send back to back for `warmup + seconds`; latency is sampled from the requests that
    start inside the measured window, throughput from those that end inside it."""
    phase, lock = Phase(seconds=seconds), threading.Lock()
    gate = threading.Barrier(concurrency + 1)
    window: dict[str, float] = {}

    def client() -> None:
        session = Session(port)
        gate.wait()
        try:
            while (started := time.perf_counter()) < window["end"]:
                try:
                    status, body = request(session)
                    problem = "" if status in (200, 201) else f"{status} {body[:300]!r}"
                except (OSError, http.client.HTTPException) as error:
                    problem = repr(error)
                ended = time.perf_counter()
                with lock:
                    if problem:
                        phase.errors += int(ended >= window["start"])
                        phase.first_error = phase.first_error or problem
                        continue
                    if started >= window["start"]:
                        phase.latencies.append(ended - started)
                    if window["start"] <= ended <= window["end"]:
                        phase.completed += 1
        finally:
            session.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    window["start"] = time.perf_counter() + warmup
    window["end"] = window["start"] + seconds
    gate.wait()
    for thread in threads:
        thread.join(timeout=seconds + warmup + 120)
    return phase


def requests_for(fixture: Fixture, *, idempotency_key: bool):
    order_numbers = itertools.count()

    def order_body() -> dict:
        n = next(order_numbers)  # atomic under the GIL
        round_, slot = divmod(n, len(fixture.accounts))
        return {
            "account_id": fixture.accounts[slot],
            "symbol": fixture.symbols[(n // 7) % len(fixture.symbols)],
            "side": "BUY" if round_ % 2 == 0 else "SELL",  # each account alternates: its positions stay small
            "quantity": 1,
            "order_type": "MARKET",
            "product": "MIS",
        }

    def headers(token: str) -> dict[str, str]:
        values = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if idempotency_key:
            values["Idempotency-Key"] = uuid.uuid4().hex
        return values

    def place(session: Session):
        status, body = session.send("POST", "/api/orders", order_body(), headers(fixture.trader_token))
        if status == 201 and json.loads(body)["status"] != "FILLED":
            return 599, body  # a MARKET order on paper fills within the request; anything else is a failure here
        return status, body

    return {
        "floor_post": lambda s: s.send("POST", "/api/bench-floor", order_body(), headers(fixture.trader_token)),
        "orders": place,
        "floor_get": lambda s: s.send("GET", "/api/bench-floor", None, headers(fixture.book_token)),
        "positions": lambda s: s.send("GET", "/api/positions", None, headers(fixture.book_token)),
    }


def check_book(port: int, fixture: Fixture) -> int:
    session = Session(port)
    status, body = session.send("GET", "/api/positions", None, {"Authorization": f"Bearer {fixture.book_token}"})
    session.close()
    if status != 200:
        raise SystemExit(f"GET /api/positions answered {status}: {body[:300]!r}")
    return json.loads(body)["totals"]["open_positions"]


# --- the run ----------------------------------------------------------------------------------------------------------

LABELS = {
    "floor_post": "floor: JWT + INSERT one row",
    "orders": "POST /api/orders (MARKET -> paper fill)",
    "floor_get": "floor: JWT + SELECT one row",
    "positions": "GET /api/positions (500 open)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "server"], default="bench")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=sized(5.0, 1.0), help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=sized(1.0, 0.3), help="unmeasured seconds before each row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--no-idempotency-key", action="store_true", help="send POSTs without an Idempotency-Key header"
    )
    args = parser.parse_args()
    if args.role == "server":
        run_server(args.port)
        return
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if not (0 < args.seconds <= 60 and 0 <= args.warmup <= 30 and all(0 < c <= 64 for c in args.concurrency)):
        raise SystemExit("Keep --seconds <= 60, --warmup <= 30 and --concurrency <= 64.")

    database_recreate("BENCH_DATABASE_URL")
    server = None
    try:
        fixture = prepare()
        port = free_port()
        server = start_server(port)
        open_positions = check_book(port, fixture)
        requests = requests_for(fixture, idempotency_key=not args.no_idempotency_key)
        results: dict[tuple[str, int], Phase] = {}
        for concurrency in args.concurrency:
            # Each measured row is followed by its floor, so slow drift (growing tables) hits both.
            for name in ("floor_post", "orders", "floor_get", "positions"):
                results[(name, concurrency)] = run_phase(
                    port, requests[name], concurrency=concurrency, warmup=args.warmup, seconds=args.seconds
                )
        stop_server(server)
        server = None
        facts = pipeline_facts()
    finally:
        if server is not None:
            stop_server(server)
        from django.db import connections

        connections.close_all()
        database_recreate("BENCH_DATABASE_URL", drop_only=True)
        clean_redis()

    report(args, results, fixture, facts, open_positions)


def report(args, results: dict[tuple[str, int], Phase], fixture: Fixture, facts: dict, open_positions: int) -> None:
    processes = web_processes()
    from django.conf import settings

    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    web = f"uvicorn ({processes} process{'es' if processes > 1 else ''}, {'a' if pool else 'no'} connection pool each)"
    print(
        f"\norder pipeline over HTTP: {web} -> Django -> paper broker, PostgreSQL "
        f"{facts['postgres']} and Redis on 127.0.0.1, {args.seconds:g}s measured per row after "
        f"{args.warmup:g}s warm-up, {os.cpu_count()} CPUs"
    )
    print("| request                                  | conc | samples |  p50 ms |  p99 ms |   req/s | errors |")
    print("|------------------------------------------|-----:|--------:|--------:|--------:|--------:|-------:|")
    for (name, concurrency), phase in results.items():
        print(
            f"| {LABELS[name]:<40} | {concurrency:4d} | {len(phase.latencies):7d} | {phase.p50_ms:7.1f} "
            f"| {phase.p99_ms:7.1f} | {phase.per_second:7.1f} | {phase.errors:6d} |"
        )
    print()
    for concurrency in args.concurrency:
        orders, floor_post = results[("orders", concurrency)], results[("floor_post", concurrency)]
        positions, floor_get = results[("positions", concurrency)], results[("floor_get", concurrency)]
        print(
            f"concurrency {concurrency:>2}: POST /api/orders / floor: p50 {orders.p50_ms / floor_post.p50_ms:.1f}x, "
            f"p99 {orders.p99_ms / floor_post.p99_ms:.1f}x, orders/s {orders.per_second / floor_post.per_second:.2f}x"
            f" of the floor's; GET /api/positions / floor: p50 {positions.p50_ms / floor_get.p50_ms:.1f}x, "
            f"p99 {positions.p99_ms / floor_get.p99_ms:.1f}x"
        )
    statuses = ", ".join(f"{status} {count}" for status, count in facts["statuses"].items())
    print(
        f"note: orders go round-robin over {PAPER_ACCOUNTS} paper accounts, as pacing caps each account at 9 orders/s "
        f"(busiest account: {facts['peak_per_account_second']} in any 1 s); 1-share MARKET MIS orders "
        f"{'with' if not args.no_idempotency_key else 'without'} an Idempotency-Key; orders by status: {statuses}."
    )
    print(
        f"note: the position book ({open_positions} open: {BOOK_ACCOUNTS} accounts x {BOOK_SYMBOLS} symbols) is "
        f"seeded directly; Django runs sync views on one thread per uvicorn process, so requests beyond the processes "
        f"queue; migrate took {fixture.migrate_seconds:.1f}s."
    )
    for (name, concurrency), phase in results.items():
        if phase.errors:
            print(f"first error, {LABELS[name]} at {concurrency}: {phase.first_error}")


if __name__ == "__main__":
    main()
