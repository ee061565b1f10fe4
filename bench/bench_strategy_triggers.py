"""Strategy fan-out at one minute: from the strategies' shared entry time to their orders' submission to the broker.

A real `celery beat` (the DatabaseScheduler, with the code-defined minute dispatcher) and a real `celery worker`
(urgent and default queues, --concurrency processes) run on Redis against this benchmark's own PostgreSQL database.

Burst: --fires time-based strategies of as many users (each with a connected paper account and a short ATM NIFTY
straddle: two legs) are started through the services, all due at the same minute, the way many users pick 09:20.
The run waits for every order and reads the skew of each order's submission (`Order.submitted_at - minute`), last
and median, against the floor measured in the same run: the minute to the dispatcher's start (beat's and the
queue's own delay before our code runs).

Scale: --scale more running strategies (rows cloned from the burst's, spread over the same users) are all due at a
later minute; the figure is the minute to the dispatcher having claimed them all and sent every chunk
(`FireMinute.dispatched_at`), against the same floor. Their orders are not waited for.

The market is simulated as always open, so it can be run on any day. Talks only to 127.0.0.1. Uses its own
PostgreSQL database (BENCH_TRIGGERS_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/algoterm_bench_triggers:
dropped, created and migrated by the run, dropped at the end) and its own Redis key prefix (removed at the end).

    .venv/bin/python bench/bench_strategy_triggers.py                # 1,000 fires, then 10,000 due: 3-4 minutes
    .venv/bin/python bench/bench_strategy_triggers.py --fires 200 --scale 0
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.database import LOCAL_HOSTS, clean_redis, database_recreate  # noqa: E402
from bench.quick import sized  # noqa: E402

os.environ.setdefault("BENCH_TRIGGERS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench_triggers")
os.environ["DATABASE_URL"] = os.environ["BENCH_TRIGGERS_DATABASE_URL"]
os.environ["DJANGO_SETTINGS_MODULE"] = "algoterm.settings"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-triggers-{os.getpid()}")
os.environ["DJANGO_ENV"] = "test"
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "20")  # the workers' pools, as in production (not the test default)
os.environ["MARKET_ALWAYS_OPEN"] = "true"
os.environ["RMS_FUNDS_CHECK"] = "false"
os.environ.setdefault("LOG_LEVEL", "WARNING")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def seed_universe(day) -> None:
    from decimal import Decimal

    from brokers.prices import quote_at
    from marketdata.quotes import quotes_put
    from strategies.tests.factories import SPOT_SYMBOL, nifty_universe, option_symbol

    expiries = nifty_universe(day=day)
    quotes = [quote_at(SPOT_SYMBOL, Decimal(24510), depth=1_000_000)]
    for expiry in expiries["weekly"]:
        for strike in range(24200, 24850, 50):
            for option_type in ("CE", "PE"):
                quotes.append(quote_at(option_symbol(expiry, Decimal(strike), option_type), Decimal(90), depth=10**6))
    quotes_put(quotes)


def seed_burst(*, fires: int) -> list[str]:
    """`fires` users, each with a paper account and a started two-leg straddle (its times are set afterwards)."""
    from datetime import time as clock_time

    from accounts.models import User
    from brokers.services import broker_account_connect
    from strategies import services

    legs = [
        services.LegInput(underlying="NIFTY", instrument="OPT", option_type=option_type, side="SELL", lots=1)
        for option_type in ("CE", "PE")
    ]
    strategy_ids = []
    for n in range(fires):
        user = User.objects.create_user(
            email=f"trigger-bench-{n:05d}@example.com",
            password=None,
            name="Bench",
            phone=f"+9191{n:08d}",
            role="trader",
        )
        account = broker_account_connect(
            user=user, broker="paper", credentials={"opening_balance": "100000000"}, label="Paper"
        ).account
        strategy, _ = services.strategy_create(
            user=user,
            data=services.StrategyInput(
                name="Trigger bench",
                kind="time_based",
                entry_time=clock_time(0, 1),
                exit_time=clock_time(23, 59),
                weekdays=[0, 1, 2, 3, 4, 5, 6],
                accounts=[services.AccountInput(account.pk, 1)],
                legs=legs,
            ),
        )
        services.strategy_start(user=user, strategy_id=strategy.pk, mode="paper")
        strategy_ids.append(strategy.pk)
    return strategy_ids


def seed_scale(*, count: int, template_ids: list[str], entry_at: datetime) -> None:
    """`count` more running strategies due at `entry_at`: copies of the burst's rows (bulk, not the services)."""
    from strategies.models import Leg, Strategy, StrategyAccount, StrategyRun

    templates = list(Strategy.objects.filter(pk__in=template_ids).prefetch_related("legs", "accounts"))
    for start in range(0, count, 1000):
        strategies, legs, accounts, runs = [], [], [], []
        for n in range(start, min(count, start + 1000)):
            template = templates[n % len(templates)]
            strategy = Strategy(
                user_id=template.user_id,
                name=f"Scale {n}",
                kind=template.kind,
                status=template.status,
                entry_time=entry_at.time(),
                exit_time=(entry_at + timedelta(hours=1)).time(),
                weekdays=template.weekdays,
                product=template.product,
            )
            strategies.append(strategy)
            for leg in template.legs.all():
                legs.append((strategy, copy.copy(leg)))
            for entry in template.accounts.all():
                accounts.append((strategy, entry))
        Strategy.objects.bulk_create(strategies)
        for strategy, leg in legs:
            leg.pk, leg.strategy = None, strategy
        Leg.objects.bulk_create([leg for _, leg in legs])
        StrategyAccount.objects.bulk_create(
            [StrategyAccount(strategy=strategy, account_id=entry.account_id) for strategy, entry in accounts]
        )
        runs = [StrategyRun(strategy=strategy, mode="paper") for strategy in strategies]
        StrategyRun.objects.bulk_create(runs)


def celery(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "algoterm", *arguments, "-l", "WARNING"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def next_minute(*, lead_seconds: float) -> datetime:
    from zoneinfo import ZoneInfo

    from django.utils import timezone

    now = timezone.now().astimezone(ZoneInfo("Asia/Kolkata"))
    return (now + timedelta(seconds=60 + lead_seconds)).replace(second=0, microsecond=0)


def wait_until(moment: datetime) -> None:
    from django.utils import timezone

    time.sleep(max(0.0, (moment - timezone.now()).total_seconds()))


def floor_ms(minute: datetime) -> float:
    """The minute to the dispatcher's start: what beat and the queue cost before our code runs."""
    from strategies.models import FireMinute

    record = FireMinute.objects.get(minute=minute)
    return (record.started_at - minute).total_seconds() * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fires", type=int, default=sized(1000, 5), help="strategies (and users) due at once")
    parser.add_argument("--scale", type=int, default=sized(10_000, 0), help="running strategies due at a later minute")
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes on the urgent queue")
    args = parser.parse_args()
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if not 1 <= args.fires <= 5000 or not 0 <= args.scale <= 50_000:
        raise SystemExit("Keep --fires between 1 and 5,000 and --scale at most 50,000.")
    database_recreate("BENCH_TRIGGERS_DATABASE_URL")
    processes: list[subprocess.Popen] = []
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.utils import timezone

        call_command("migrate", verbosity=0)
        call_command("sync_periodic_tasks", verbosity=0)
        from algoterm.celery import app as celery_app
        from orders.models import Order
        from strategies.models import FireMinute, StrategyFire

        started = time.monotonic()
        seed_universe(timezone.localdate())
        # Seeding takes a while: the burst's minute is fixed after it, one whole minute ahead at least.
        strategy_ids = seed_burst(fires=args.fires)
        burst_at = next_minute(lead_seconds=15)
        from strategies.models import Strategy

        # Exits well after the run, entries at the burst's minute.
        Strategy.objects.filter(pk__in=strategy_ids).update(
            entry_time=burst_at.time(), exit_time=(burst_at - timedelta(minutes=30)).time()
        )
        sys.stdout.write(
            f"seeded {args.fires} strategies in {time.monotonic() - started:.0f} s; due at {burst_at:%H:%M} IST\n"
        )
        celery_app.control.purge()
        processes.append(
            celery(
                "worker",
                "-Q",
                "urgent,default",
                "--concurrency",
                str(args.concurrency),
                "--without-mingle",
                "--without-gossip",
            )
        )
        processes.append(celery("beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1"))
        wait_until(burst_at)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = Order.objects.filter(strategy_ref__in=strategy_ids, submitted_at__isnull=False).count()
            if done >= 2 * args.fires:
                break
            time.sleep(0.5)
        submitted = list(
            Order.objects.filter(strategy_ref__in=strategy_ids, submitted_at__isnull=False).values_list(
                "submitted_at", flat=True
            )
        )
        burst_floor = floor_ms(burst_at)
        claimed = list(
            StrategyFire.objects.filter(strategy_id__in=strategy_ids, scheduled_for=burst_at).values_list(
                "created_at", flat=True
            )
        )
        scale_row = None
        if args.scale:
            scale_at = next_minute(lead_seconds=20)
            seed_scale(count=args.scale, template_ids=strategy_ids, entry_at=scale_at)
            wait_until(scale_at)
            deadline = time.monotonic() + 60
            while not FireMinute.objects.filter(minute=scale_at, dispatched_at__isnull=False).exists():
                if time.monotonic() > deadline:
                    raise SystemExit("the scale minute was never dispatched")
                time.sleep(0.2)
            record = FireMinute.objects.get(minute=scale_at)
            scale_row = (record.fires, (record.dispatched_at - scale_at).total_seconds() * 1000, floor_ms(scale_at))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        from django.db import connections

        connections.close_all()
        database_recreate("BENCH_TRIGGERS_DATABASE_URL", drop_only=True)
        clean_redis()

    expected = 2 * args.fires
    if not submitted:
        raise SystemExit(f"none of {expected} orders was submitted in time")
    skews = [(moment - burst_at).total_seconds() * 1000 for moment in submitted]
    claims = [(moment - burst_at).total_seconds() * 1000 for moment in claimed]
    sys.stdout.write(
        f"\nstrategy fan-out: {args.fires} two-leg strategies of {args.fires} users due at one minute ({expected} "
        f"orders), then {args.scale} running strategies due at another; celery beat (DatabaseScheduler) + worker "
        f"({args.concurrency} processes) on Redis, paper broker, PostgreSQL on 127.0.0.1, {os.cpu_count()} CPUs\n"
    )
    sys.stdout.write(f"{'figure':<58}{'ms':>10}{'floor ms':>10}{'ratio':>8}\n")
    floor = max(burst_floor, 1.0)
    rows = [
        ("burst: minute -> last order submitted", max(skews), burst_floor),
        ("burst: minute -> median order submitted", statistics.median(skews), burst_floor),
        ("burst: minute -> last fire claimed", max(claims), burst_floor),
    ]
    if scale_row is not None:
        rows.append((f"scale: minute -> {scale_row[0]} strategies claimed and sent", scale_row[1], scale_row[2]))
    for label, value, row_floor in rows:
        ratio = value / max(row_floor, 1.0)
        sys.stdout.write(f"{label:<58}{value:>10.0f}{row_floor:>10.0f}{ratio:>8.1f}\n")
    sys.stdout.write(
        f"floor: the minute to the dispatcher's start (beat's tick and the queue); {floor:.0f} ms in the burst; "
        f"throughput {len(submitted) / max(max(skews) / 1000, 1e-9):.0f} orders/s\n"
    )
    if len(submitted) < expected:
        raise SystemExit(f"only {len(submitted)} of {expected} orders were submitted within 180 s of the minute")


if __name__ == "__main__":
    main()
