"""Strategy trigger skew: from a strategy's scheduled entry time to its order's submission to the broker.

50 time-based strategies (50 users, each with a connected paper account and one ATM NIFTY call leg) are started
through the service, so each has its django-celery-beat entry in Asia/Kolkata. A real `celery beat` (the
DatabaseScheduler) and a real `celery worker` (2 processes) run on Redis against this benchmark's own PostgreSQL
database. All 50 entries are due at the same minute, the way many users pick 09:20; the run waits for the 50 fires
and reads, per fire, (a) the skew to the order's submission (`Order.submitted_at - scheduled time`) and, measured in
the same run as the comparison, (b) the skew to the fire task's claim row (`StrategyFire.created_at - scheduled
time`): what beat and the queue cost before our code starts. The ratio (a)/(b) says how much the leg resolution,
RMS check and paper broker add to the clock's own delay.

Cron days are opened to every day of the week for the run (the market is simulated as always open), so it can be
run on any day. Talks only to 127.0.0.1. Uses its own PostgreSQL database (BENCH_TRIGGERS_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench_triggers: dropped, created and migrated by the run, dropped at the
end) and its own Redis key prefix (removed at the end).

    .venv/bin/python bench/bench_strategy_triggers.py              # 50 fires, about 1-2 minutes
    .venv/bin/python bench/bench_strategy_triggers.py --fires 100
"""

from __future__ import annotations

import argparse
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
os.environ["MARKET_ALWAYS_OPEN"] = "true"
os.environ["RMS_FUNDS_CHECK"] = "false"
os.environ.setdefault("LOG_LEVEL", "WARNING")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def seed(*, fires: int, entry_at: datetime) -> list[str]:
    """Users, paper accounts, the NIFTY universe with quotes, and `fires` started strategies due at `entry_at`."""
    from decimal import Decimal

    from django_celery_beat.models import CrontabSchedule

    from accounts.models import User
    from brokers.prices import quote_at
    from brokers.services import broker_account_connect
    from marketdata.quotes import quotes_put
    from strategies import services
    from strategies.tests.factories import SPOT_SYMBOL, nifty_universe, option_symbol

    day = entry_at.date()
    expiries = nifty_universe(day=day)
    quotes = [quote_at(SPOT_SYMBOL, Decimal(24510), depth=1_000_000)]
    for expiry in expiries["weekly"]:
        for strike in range(24200, 24850, 50):
            for option_type in ("CE", "PE"):
                quotes.append(quote_at(option_symbol(expiry, Decimal(strike), option_type), Decimal(90), depth=10**6))
    quotes_put(quotes)
    strategy_ids = []
    for n in range(fires):
        user = User.objects.create_user(
            email=f"trigger-bench-{n:03d}@example.com",
            password="bench-password-1",
            name="Bench",
            phone=f"+9191{n:08d}",
            role="trader",
        )
        account = broker_account_connect(
            user=user, broker="paper", credentials={"opening_balance": "10000000"}, label="Paper"
        ).account
        strategy, _ = services.strategy_create(
            user=user,
            data=services.StrategyInput(
                name="Trigger bench",
                kind="time_based",
                entry_time=entry_at.time().replace(second=0, microsecond=0),
                exit_time=(entry_at + timedelta(hours=1)).time().replace(second=0, microsecond=0),
                accounts=[services.AccountInput(account.pk, 1)],
                legs=[services.LegInput(underlying="NIFTY", instrument="OPT", option_type="CE", side="BUY", lots=1)],
            ),
        )
        services.strategy_start(user=user, strategy_id=strategy.pk, mode="paper")
        strategy_ids.append(strategy.pk)
    CrontabSchedule.objects.update(day_of_week="*")
    return strategy_ids


def celery(*arguments: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "algoterm", *arguments, "-l", "WARNING"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fires", type=int, default=sized(50, 5))
    args = parser.parse_args()
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if not 1 <= args.fires <= 500:
        raise SystemExit("Keep --fires between 1 and 500.")
    database_recreate("BENCH_TRIGGERS_DATABASE_URL")
    processes: list[subprocess.Popen] = []
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.utils import timezone

        call_command("migrate", verbosity=0)
        call_command("sync_periodic_tasks", verbosity=0)
        from zoneinfo import ZoneInfo

        now = timezone.now().astimezone(ZoneInfo("Asia/Kolkata"))
        # At least 40 s ahead, so beat has read the new entries before they fall due.
        entry_at = (now + timedelta(seconds=100)).replace(second=0, microsecond=0)
        print(f"seeding {args.fires} strategies due at {entry_at:%H:%M} IST ...", flush=True)
        strategy_ids = seed(fires=args.fires, entry_at=entry_at)
        processes.append(celery("worker", "--concurrency", "2", "--without-mingle", "--without-gossip"))
        processes.append(celery("beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1"))
        from orders.models import Order
        from strategies.models import StrategyFire

        deadline = time.monotonic() + (entry_at - timezone.now()).total_seconds() + 120
        while time.monotonic() < deadline:
            done = Order.objects.filter(strategy_ref__in=strategy_ids, submitted_at__isnull=False).count()
            if done >= args.fires:
                break
            time.sleep(1)
        fires = list(StrategyFire.objects.filter(strategy_id__in=strategy_ids, action="entry"))
        submitted = dict(
            Order.objects.filter(strategy_ref__in=strategy_ids, submitted_at__isnull=False).values_list(
                "strategy_ref", "submitted_at"
            )
        )
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

    to_claim = {fire.strategy_id: (fire.created_at - fire.scheduled_for).total_seconds() * 1000 for fire in fires}
    to_submit = {
        fire.strategy_id: (submitted[fire.strategy_id] - fire.scheduled_for).total_seconds() * 1000
        for fire in fires
        if fire.strategy_id in submitted
    }
    if len(to_submit) < args.fires:
        raise SystemExit(f"only {len(to_submit)} of {args.fires} fires submitted an order in time")
    in_fire = [to_submit[key] - to_claim[key] for key in to_submit]
    print(
        f"\nstrategy trigger skew: {args.fires} entries due at one minute, celery beat (DatabaseScheduler) + worker "
        f"(2 processes) on Redis, paper broker, PostgreSQL on 127.0.0.1, {os.cpu_count()} CPUs"
    )
    print(f"{'':<48}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    rows = [
        ("scheduled time -> order submitted (measured)", list(to_submit.values())),
        ("scheduled time -> fire task claims (comparison)", list(to_claim.values())),
        ("claim -> order submitted (our fire code)", in_fire),
    ]
    for label, values in rows:
        print(f"{label:<48}{percentile(values, 0.5):>10.0f}{percentile(values, 0.99):>10.0f}{max(values):>10.0f}")
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        ratio = percentile(list(to_submit.values()), fraction) / max(
            percentile(list(to_claim.values()), fraction), 1e-9
        )
        print(f"ratio submitted/claimed {name}: {ratio:.2f}")
    print(
        f"the first fire was claimed {min(to_claim.values()):.0f} ms after its time (beat's own delay); the rest "
        f"queue behind it on the 2 worker processes (mean {statistics.fmean(in_fire):.0f} ms of our code per fire)"
    )


if __name__ == "__main__":
    main()
