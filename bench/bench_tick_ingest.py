"""Tick ingestion on one core: the feed's whole path for each batch (`marketdata.feeds.runner.PublishAndRecord`: the
quote cache, paper-order matching, the tick-driven risk trigger, the fan-out to the web processes, the 1-minute
candle builder with its stores), against writing the same quotes to the quote cache alone (encoded and stored in one
Redis round trip, `marketdata.quotes.quotes_put`), in the same run, with the ratio.

2,000 instruments tick in batches of 2,000 (a broker feed's burst: one tick each), stamped one second apart so
minutes close and their candles are stored as in a live session. Quotes are made before the clock starts; each path
runs single-threaded, so ticks per second of its wall time is its rate on one core (Redis and PostgreSQL run on
the other). Goals: >= 20,000 ticks/s, and <= 3x the cache write alone.

Talks only to 127.0.0.1. Uses its own PostgreSQL database (BENCH_TICKS_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench_ticks: dropped, created and migrated by the run, dropped at the
end) and its own Redis key prefix (removed at the end).

    .venv/bin/python bench/bench_tick_ingest.py
    .venv/bin/python bench/bench_tick_ingest.py --instruments 5000 --batches 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.database import LOCAL_HOSTS, clean_redis, database_recreate  # noqa: E402
from bench.quick import sized  # noqa: E402

os.environ.setdefault("BENCH_TICKS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench_ticks")
os.environ["DATABASE_URL"] = os.environ["BENCH_TICKS_DATABASE_URL"]
os.environ["DJANGO_SETTINGS_MODULE"] = "algoterm.settings"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-ticks-{os.getpid()}")
os.environ["DJANGO_ENV"] = "test"
os.environ["RMS_TICK_EVALUATION"] = "true"
os.environ.setdefault("LOG_LEVEL", "WARNING")


def batches_of(*, instruments: int, batches: int) -> list[list]:
    """`batches` batches, each one tick of every instrument, a second apart, prices on a walk."""
    import random
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from brokers.protocol import Quote

    generator = random.Random(7)
    symbols = [f"NSE:TICK{index:05d}" for index in range(instruments)]
    prices = {symbol: Decimal(generator.randint(100, 5000)) for symbol in symbols}
    volumes = dict.fromkeys(symbols, 0)
    start = datetime(2026, 12, 7, 3, 50, tzinfo=UTC)  # 09:20 IST
    made = []
    for step in range(batches):
        moment = start + timedelta(seconds=step)
        batch = []
        for symbol in symbols:
            prices[symbol] += Decimal(generator.choice((-5, 0, 5))) / 100
            volumes[symbol] += generator.randint(0, 500)
            price = prices[symbol]
            batch.append(
                Quote(
                    symbol=symbol,
                    last_price=price,
                    bid=price - Decimal("0.05"),
                    ask=price + Decimal("0.05"),
                    bid_quantity=100,
                    ask_quantity=120,
                    volume=volumes[symbol],
                    open=price,
                    high=price,
                    low=price,
                    close=price,
                    timestamp=moment,
                )
            )
        made.append(batch)
    return made


def timed(run, batches: list[list]) -> float:
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instruments", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=sized(130, 10), help="one second each (130: two closed minutes)")
    parser.add_argument("--runs", type=int, default=sized(3, 1), help="each path's best of this many")
    args = parser.parse_args()
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if not (0 < args.instruments <= 20000 and 0 < args.batches <= 1000):
        raise SystemExit("Keep --instruments <= 20000 and --batches <= 1000.")

    database_recreate("DATABASE_URL")
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from marketdata.candles import MinuteCandleBuilder
        from marketdata.feeds.runner import PublishAndRecord
        from marketdata.models import Candle
        from marketdata.quotes import quotes_put

        batches = batches_of(instruments=args.instruments, batches=args.batches)
        ticks = args.instruments * args.batches
        cache_only, whole = [], []
        for _ in range(args.runs):
            cache_only.append(timed(quotes_put, batches))
            Candle.objects.all().delete()
            whole.append(timed(PublishAndRecord(builder=MinuteCandleBuilder()), batches))
        candles = Candle.objects.count()
    finally:
        from django.db import connections

        connections.close_all()
        clean_redis()
        database_recreate("DATABASE_URL", drop_only=True)

    best_cache, best_whole = min(cache_only), min(whole)
    print(
        f"\ntick ingestion: {args.instruments} instruments x {args.batches} batches ({ticks} ticks), best of "
        f"{args.runs}, one thread; {candles} minute candles stored by the last run"
    )
    print("| path | seconds | ticks/s | us per tick |")
    print("|---|---:|---:|---:|")
    for name, seconds in (("quote cache write alone (floor)", best_cache), ("the feed's whole tick path", best_whole)):
        print(f"| {name} | {seconds:.2f} | {ticks / seconds:,.0f} | {seconds / ticks * 1e6:.1f} |")
    print(
        f"\nwhole path / cache write: {best_whole / best_cache:.2f}x (goal <= 3x); "
        f"{ticks / best_whole:,.0f} ticks/s (goal >= 20,000)"
    )


if __name__ == "__main__":
    main()
