"""Tick fan-out: WebSocket clients on /ws/market-data, each subscribed to a set of symbols, while a publisher sends
tick batches through the tick bus's fan-out (`marketdata.ticks.ticks_fan_out`: one Redis PUBLISH per batch, split per
connection by each web process's tick hub) to a real uvicorn server running WEB_CONCURRENCY processes (default: one
per CPU, as `serve` runs them). Measures ticks delivered per second (a `ticks` message carries several) and
tick-to-client latency, then the same topology on raw Redis pub/sub (one PUBLISH per tick, clients subscribed to
their symbols' channels) in the same run, and prints the ratios.

Two shapes by default, the issue's targets: 100 clients x 20 symbols x 10 ticks/s, and 500 clients x 20 symbols x
2 ticks/s (`--shape CLIENTSxRATE` runs one).

Talks only to 127.0.0.1 (Redis from REDIS_URL, default redis://127.0.0.1:6379/0; the server on a free local port),
uses a throw-away SQLite database and its own Redis key prefix, and stops by itself (every phase is time-bounded).

    .venv/bin/python bench/bench_tick_fanout.py
    .venv/bin/python bench/bench_tick_fanout.py --shape 500x2 --web-processes 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.quick import sized  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-fanout-{os.getpid()}")
os.environ.setdefault("DJANGO_ENV", "test")
os.environ.setdefault("LOG_LEVEL", "WARNING")
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
SERVER_START_SECONDS = 30
CONNECT_CONCURRENCY = 50


def symbols_of(universe: int) -> list[str]:
    return [f"NSE:BENCH{i:04d}" for i in range(universe)]


def client_symbols(client: int, *, universe: list[str], per_client: int) -> list[str]:
    # Spread evenly: every symbol has the same number of subscribers when clients * per_client is a multiple.
    return [universe[(client * per_client + j) % len(universe)] for j in range(per_client)]


# --- the publisher (a subprocess, so its CPU is not the clients') ---------------------------------------------------


async def publish(mode: str, *, universe: list[str], rate: float, seconds: float) -> dict:
    from datetime import UTC, datetime
    from decimal import Decimal

    from brokers.protocol import Quote
    from marketdata.quotes import quote_encode, quote_text
    from marketdata.ticks import ticks_fan_out

    if mode == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
        prefix = os.environ["REDIS_KEY_PREFIX"]
    print("publishing", flush=True)  # set up: the parent's warm-up starts now
    batches = 0
    started = time.monotonic()
    period = 1.0 / rate
    while time.monotonic() - started < seconds:
        due = started + batches * period
        if mode == "channels":
            now = datetime.now(tz=UTC)
            quotes = [Quote(symbol=s, last_price=Decimal("100.05"), timestamp=now) for s in universe]
            ticks_fan_out([quote_text(quote_encode(quote)) for quote in quotes])
        else:
            sent_at = time.time()
            pipe = client.pipeline(transaction=False)
            for symbol in universe:
                pipe.publish(f"{prefix}:raw:{symbol}", json.dumps({"symbol": symbol, "ltp": 100.05, "ts": sent_at}))
            await pipe.execute()
        batches += 1
        await asyncio.sleep(max(0.0, due + period - time.monotonic()))
    elapsed = time.monotonic() - started
    if mode == "redis":
        await client.aclose()
    return {"batches": batches, "ticks_per_second": batches * len(universe) / elapsed}


def run_publisher(args) -> None:
    import django

    django.setup()
    result = asyncio.run(publish(args.mode, universe=symbols_of(args.universe), rate=args.rate, seconds=args.seconds))
    print(json.dumps(result), flush=True)


def start_publisher(mode: str, args, seconds: float) -> subprocess.Popen:
    command = [sys.executable, __file__, "--role", "publisher", "--mode", mode, "--universe", str(args.universe)]
    command += ["--rate", str(args.rate), "--seconds", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, env=os.environ.copy())


# --- clients --------------------------------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.received = 0
        self.frames = 0
        self.latencies: list[float] = []
        self.measuring = False

    def record(self, sent_at: float) -> None:
        self.received += 1
        if self.measuring:
            self.latencies.append(time.time() - sent_at)


async def websocket_client(url: str, symbols: list[str], tally: Tally, ready: asyncio.Event, stop: asyncio.Event):
    from datetime import datetime

    import websockets

    async with websockets.connect(url, max_queue=None, ping_interval=None) as ws:
        await ws.recv()  # server_ready
        await ws.send(
            json.dumps({"t": "subscription", "p": {"action": "subscribe", "symbols": symbols, "mode": "ltp"}})
        )
        while json.loads(await ws.recv())["t"] != "snapshot":
            pass
        ready.set()
        while not stop.is_set():
            try:
                text = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            message = json.loads(text)
            tally.frames += 1
            if message["t"] == "ticks":
                for tick in message["p"]["ticks"]:
                    tally.record(datetime.fromisoformat(tick["timestamp"]).timestamp())
            elif message["t"] == "error":
                tally.errors = getattr(tally, "errors", 0) + 1


async def redis_client(symbols: list[str], tally: Tally, ready: asyncio.Event, stop: asyncio.Event):
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub()
    prefix = os.environ["REDIS_KEY_PREFIX"]
    await pubsub.subscribe(*(f"{prefix}:raw:{symbol}" for symbol in symbols))
    ready.set()
    while not stop.is_set():
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            tally.frames += 1
            tally.record(json.loads(message["data"])["ts"])
    await pubsub.aclose()
    await client.aclose()


async def run_phase(mode: str, args, *, url: str = "") -> dict:
    universe = symbols_of(args.universe)
    tally, stop = Tally(), asyncio.Event()
    readies = [asyncio.Event() for _ in range(args.clients)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(client: int):
        symbols = client_symbols(client, universe=universe, per_client=args.symbols_per_client)
        async with gate:
            task = asyncio.create_task(
                websocket_client(url, symbols, tally, readies[client], stop)
                if mode == "channels"
                else redis_client(symbols, tally, readies[client], stop)
            )
            await asyncio.wait([task, asyncio.create_task(readies[client].wait())], return_when="FIRST_COMPLETED")
        await task

    tasks = [asyncio.create_task(one(client)) for client in range(args.clients)]
    await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 120)
    publisher = start_publisher(mode, args, seconds=args.warmup + args.duration)
    await asyncio.to_thread(publisher.stdout.readline)  # "publishing": Django is set up
    await asyncio.sleep(args.warmup)
    tally.measuring, before, frames_before = True, tally.received, tally.frames
    await asyncio.sleep(args.duration)
    tally.measuring, delivered, frames = False, tally.received - before, tally.frames - frames_before
    published = json.loads(await asyncio.to_thread(lambda: publisher.communicate(timeout=60)[0]))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    subscribers_per_symbol = args.clients * args.symbols_per_client / args.universe
    latencies = sorted(tally.latencies) or [float("nan")]
    return {
        "published": published["ticks_per_second"],
        "expected": published["ticks_per_second"] * subscribers_per_symbol,
        "delivered": delivered / args.duration,
        "frames": frames / args.duration,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": getattr(tally, "errors", 0),
    }


# --- the server and the run -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_database_and_token(universe: list[str]) -> str:
    import django

    django.setup()
    from django.core.management import call_command
    from rest_framework_simplejwt.tokens import AccessToken

    from accounts.models import User
    from brokers.prices import quote_at
    from marketdata.quotes import quotes_put

    call_command("migrate", verbosity=0)
    user = User.objects.filter(email="bench@example.com").first() or User.objects.create_user(
        "bench@example.com", "Bench-Password-2026", name="Bench", phone="+919800000098"
    )
    quotes_put([quote_at(symbol, "100") for symbol in universe])  # known symbols, so subscriptions are accepted
    return str(AccessToken.for_user(user))


def start_server(port: int, *, workers: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "algoterm.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        + ["--lifespan", "off", "--no-access-log", "--log-level", "warning", "--workers", str(workers)],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("uvicorn exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("uvicorn did not start")


def clean_redis() -> None:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=f"{os.environ['REDIS_KEY_PREFIX']}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


SHAPES = ("100x10", "500x2")  # clients x ticks per second per symbol, 20 symbols each


def run_shape(args, token: str) -> tuple[dict, dict]:
    port = free_port()
    server = start_server(port, workers=args.web_processes)
    try:
        hub = asyncio.run(run_phase("channels", args, url=f"ws://127.0.0.1:{port}/ws/market-data?token={token}"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    raw = asyncio.run(run_phase("redis", args))
    return hub, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "publisher"], default="bench")
    parser.add_argument("--mode", choices=["channels", "redis"], default="channels")
    parser.add_argument("--shape", action="append", help="CLIENTSxRATE, e.g. 500x2 (default: both targets)")
    parser.add_argument("--symbols-per-client", type=int, default=20)
    parser.add_argument("--universe", type=int, default=100, help="distinct symbols")
    parser.add_argument("--web-processes", type=int, default=int(os.environ.get("WEB_CONCURRENCY", os.cpu_count())))
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=sized(10.0, 2.0))
    parser.add_argument("--rate", type=float, default=10.0, help=argparse.SUPPRESS)  # the publisher's
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if args.role == "publisher":
        run_publisher(args)
        return
    shapes = []
    for shape in args.shape or SHAPES:
        clients, _, rate = shape.partition("x")
        shapes.append((sized(int(clients), max(1, int(clients) // 10)), float(rate)))
    if not all(0 < clients <= 1000 and 0 < rate <= 100 for clients, rate in shapes) or not 0 < args.duration <= 120:
        raise SystemExit("Keep clients <= 1000, rate <= 100 and --duration <= 120.")

    token = prepare_database_and_token(symbols_of(args.universe))
    results = []
    for clients, rate in shapes:
        args.clients, args.rate = clients, rate
        results.append((clients, rate, *run_shape(args, token)))
    clean_redis()

    print(
        f"\ntick fan-out: {args.symbols_per_client} symbols of {args.universe} per client, {args.web_processes} web "
        f"processes, {args.duration:g}s measured after {args.warmup:g}s, {os.cpu_count()} CPUs"
    )
    print("| shape | path | ticks/s in | ticks/s due | ticks/s delivered | messages/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for clients, rate, hub, raw in results:
        for name, row in (("/ws/market-data", hub), ("raw Redis pub/sub", raw)):
            print(
                f"| {clients} x {rate:g}/s | {name} | {row['published']:.0f} | {row['expected']:.0f} "
                f"| {row['delivered']:.0f} | {row['frames']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |"
            )
    print("\n| shape | delivered, /ws/market-data / raw Redis (goal >= 0.5x) | p99 ms (goal < 250) | drops |")
    print("|---|---:|---:|---:|")
    for clients, rate, hub, raw in results:
        print(
            f"| {clients} x {rate:g}/s | {hub['delivered'] / raw['delivered']:.2f}x | {hub['p99_ms']:.1f} "
            f"| {hub['errors']} |"
        )


if __name__ == "__main__":
    main()
