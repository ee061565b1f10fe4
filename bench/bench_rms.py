"""The risk monitor: (a) one set-based sweep (`rms.services.sweep(act=False)`: the day's symbols, one quote fetch, MTM
summed per account in one SQL aggregate, then the profiles and states) over 10,000 users x 5 open positions on 200
symbols (the bound: under 200 ms), against the same evaluation written as a per-user ORM loop (per user: its
positions, its quotes, a Decimal sum, its profile and its state), in the same run, with the ratio; both must find the
same breaches. The loop costs milliseconds per
user, so each of its runs evaluates every 10th user (1,000) and its time is projected to all of them (the users'
work grows with their number; the one query that finds them is counted once); `--loop-users 10000` times the loop
over everyone (about 40 s a run on 2 CPUs). (b) A breaching tick to the
RMS's square-off order: a paper account holds 100 shares with a 1,000-rupee loss limit, a tick through
`marketdata.ticks.ticks_publish` moves the price 20 below, and the time from the publish to the square-off order's
SUBMITTING row (and to the broker's acceptance) is measured, against the floor of the same tick publish on a symbol
nobody holds, with the ratio. Tick-driven evaluation runs with Celery eager, in this process: the task a worker
would run, without the queue hop.

Talks only to 127.0.0.1. Uses its own PostgreSQL database (BENCH_RMS_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench_rms: dropped, created and migrated by the run, dropped at the end)
and its own Redis key prefix (removed at the end), so it never touches development data.

    .venv/bin/python bench/bench_rms.py                       # 10,000 users, 5 loop / 9 sweep runs, 50 ticks
    .venv/bin/python bench/bench_rms.py --users 2000 --ticks 100
    .venv/bin/python bench/bench_rms.py --loop-users 10000 --loop-runs 3   # the loop over every user (minutes)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.database import LOCAL_HOSTS, clean_redis, database_recreate  # noqa: E402
from bench.quick import sized  # noqa: E402

os.environ.setdefault("BENCH_RMS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench_rms")
os.environ["DATABASE_URL"] = os.environ["BENCH_RMS_DATABASE_URL"]
os.environ["DJANGO_SETTINGS_MODULE"] = "algoterm.settings"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-rms-{os.getpid()}")
os.environ["DJANGO_ENV"] = "test"  # no default trading window or auto square-off: the clock never interferes
os.environ["RMS_TICK_EVALUATION"] = "true"
os.environ.setdefault("LOG_LEVEL", "WARNING")

SYMBOLS = 200
POSITIONS_PER_USER = 5
TICK_SYMBOL, FLOOR_SYMBOL = "NSE:RMSTICK", "NSE:RMSFLOOR"
ENTRY, BREACH_PRICE, HELD, LOSS_LIMIT = "100", "80", 100, "1000"


# --- the database: created, migrated and dropped by the run -----------------------------------------------------------


# --- (a) the population -----------------------------------------------------------------------------------------------


@dataclass
class Population:
    users: int
    positions: int
    symbols: int
    states: int
    seed_seconds: float
    migrate_seconds: float


def seed_population(*, users: int, migrate_seconds: float) -> Population:
    """Users, paper accounts, 5 open positions each, profiles and some of today's states, all by bulk_create; the
    quotes of the 200 symbols go to the quote cache. Seeded from a fixed random state, so every run is the same."""
    from decimal import Decimal

    from accounts.models import User
    from brokers.models import AccountStatus, BrokerAccount
    from brokers.prices import quote_at
    from marketdata.quotes import quotes_put
    from orders.models import Position
    from rms.models import RiskProfile, RmsState, TradingState
    from rms.services import profile_validate, trading_day

    started = time.monotonic()
    rng = random.Random(20260101)
    day = trading_day()
    symbols = [f"NSE:RMSB{i:03d}" for i in range(SYMBOLS)]
    prices = {symbol: Decimal(100 + 5 * i) + Decimal("0.05") * (i % 20) for i, symbol in enumerate(symbols)}
    quotes_put([quote_at(symbol, price, depth=1_000_000) for symbol, price in prices.items()])

    people = [
        User(email=f"rms-bench-{n:05d}@example.com", name="Bench", phone=f"+9190{n:08d}", password="!")
        for n in range(users)
    ]
    User.objects.bulk_create(people, batch_size=2000)
    accounts = [
        BrokerAccount(owner=user, broker="paper", label="Bench", client_id=f"RB{n:05d}", status=AccountStatus.CONNECTED)
        for n, user in enumerate(people)
    ]
    BrokerAccount.objects.bulk_create(accounts, batch_size=2000)

    positions = []
    for n, (user, account) in enumerate(zip(people, accounts, strict=True)):
        for k in range(POSITIONS_PER_USER):
            symbol = symbols[(n * 7 + k * 41) % SYMBOLS]  # 5 different symbols per user
            quantity = rng.choice((-1, 1)) * 5 * rng.randint(1, 20)
            positions.append(
                Position(
                    user=user,
                    account=account,
                    symbol=symbol,
                    product="MIS" if k % 2 else "NRML",
                    quantity=quantity,
                    average_price=prices[symbol] + Decimal(rng.randint(-300, 300)) / 100,
                    trading_day=day,
                    day_buy_quantity=max(quantity, 0),
                    day_sell_quantity=max(-quantity, 0),
                    day_realized_pnl=Decimal(rng.randint(-20000, 20000)) / 100 if k == 0 else Decimal("0"),
                )
            )
    Position.objects.bulk_create(positions, batch_size=5000)

    profiles, states = [], []
    for n, user in enumerate(people):
        values = {
            "max_daily_loss": rng.choice((Decimal("400"), Decimal("600"), Decimal("800"), None)),
            "daily_profit_target": rng.choice((Decimal("700"), Decimal("1000"), None)),
            "max_orders_per_day": 1000,
            "max_open_positions": 100,
        }
        if n % 4 == 0:  # a profit lock at 300 that keeps 100, trailing 50 for every 100 more
            values |= {
                "profit_lock_at": Decimal("300"),
                "profit_lock_amount": Decimal("100"),
                "trailing_profit_every": Decimal("100"),
                "trailing_profit_step": Decimal("50"),
            }
        assert not profile_validate(values), values
        profiles.append(RiskProfile(user=user, **values))
        if n % 10 == 0:  # some already have a day behind them: a lock raised, a breach handled
            status = (TradingState.NORMAL, TradingState.NORMAL, TradingState.REDUCING, TradingState.HALTED)[n % 4]
            states.append(
                RmsState(user=user, trading_day=day, status=status, locked_profit=Decimal("200") if n % 20 else None)
            )
    RiskProfile.objects.bulk_create(profiles, batch_size=5000)
    RmsState.objects.bulk_create(states, batch_size=5000)
    return Population(
        users=users,
        positions=len(positions),
        symbols=SYMBOLS,
        states=len(states),
        seed_seconds=time.monotonic() - started,
        migrate_seconds=migrate_seconds,
    )


# --- (a) the two evaluations ------------------------------------------------------------------------------------------


def set_based(now) -> tuple[set[tuple[str, str]], int]:
    from rms.services import sweep

    result = sweep(now=now, act=False)
    return {(breach.user_id, breach.reason) for breach in result.breaches}, result.evaluated


@dataclass
class LoopPass:
    breaches: set[tuple[str, str]]
    users: list[str]  # the users evaluated (every `every`-th of those with positions today)
    population: int  # every user with positions today
    select_seconds: float  # finding the users: once per pass whatever the sample
    per_user_seconds: float  # the users' own queries, quote fetches and sums

    @property
    def projected_seconds(self) -> float:
        """The pass over every user: the per-user part grows with the users, the selection does not."""
        return self.select_seconds + self.per_user_seconds * self.population / len(self.users)


def per_user_loop(now, *, every: int = 1) -> LoopPass:
    """The same evaluation as the sweep, one user at a time, the way it reads without a set-based design."""
    from decimal import Decimal

    from django.db.models import Q

    from marketdata.quotes import quotes_get
    from orders.models import Position
    from rms.models import RiskProfile, RmsState, TradingState
    from rms.services import PAISE, Reason, profit_lock_level, trading_day

    started = time.perf_counter()
    day = trading_day(now)
    of_today = Q(trading_day=day) | ~Q(quantity=0)
    breaches = set()
    population = sorted(Position.objects.filter(of_today).order_by().values_list("user_id", flat=True).distinct())
    selected = time.perf_counter()
    users = population[::every]
    for user_id in users:
        positions = list(Position.objects.filter(of_today, user_id=user_id))
        quotes = quotes_get(sorted({position.symbol for position in positions}))  # as the sweep: feed quotes only
        mtm = Decimal("0")
        for position in positions:
            if position.symbol in quotes:
                mtm += (quotes[position.symbol].last_price - position.average_price) * position.quantity
            if position.trading_day == day:
                mtm += position.day_realized_pnl
        mtm = mtm.quantize(PAISE)
        profile = RiskProfile.objects.filter(user_id=user_id, account__isnull=True).first()
        state = RmsState.objects.filter(user_id=user_id, trading_day=day).first()
        status = state.status if state else TradingState.NORMAL
        if status == TradingState.HALTED:
            continue
        loss = profile.max_daily_loss if profile else None
        target = profile.daily_profit_target if profile else None
        reason = None
        if loss is not None and mtm <= -loss:
            reason = Reason.DAILY_LOSS_LIMIT_HIT
        elif status == TradingState.REDUCING:
            continue
        elif target is not None and mtm >= target:
            reason = Reason.DAILY_PROFIT_TARGET_HIT
        else:
            level = profit_lock_level(mtm=mtm, limits=profile) if profile else None
            locked = state.locked_profit if state else None
            if level is not None and (locked is None or level > locked):
                locked = level
            if locked is not None and mtm < locked:
                reason = Reason.PROFIT_LOCK_HIT
        if reason:
            breaches.add((user_id, reason))
    return LoopPass(
        breaches=breaches,
        users=users,
        population=len(population),
        select_seconds=selected - started,
        per_user_seconds=time.perf_counter() - selected,
    )


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)  # the loop's: projected to every user
    queries: int = 0
    evaluated: int = 0
    breaches: set = field(default_factory=set)
    last_pass: LoopPass | None = None

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000


def measure_sweep(*, sweep_runs: int, loop_runs: int, loop_users: int) -> dict[str, Runs]:
    """Interleaved (a warm-up sweep, then loop, sweep, loop, ...), so slow drift hits both sides. The loop evaluates
    every n-th user (`loop_users` of them) and its time is projected to all: per user it costs the same."""
    from django.db import connection
    from django.utils import timezone

    now = timezone.now()
    runs = {"sweep": Runs(), "loop": Runs()}
    counted = [0]

    def count(execute, sql, params, many, context):
        counted[0] += 1
        return execute(sql, params, many, context)

    _, users = set_based(now)  # warm-up: PostgreSQL's buffers, the imports
    every = max(1, users // max(1, loop_users))
    order = []
    for index in range(max(sweep_runs, loop_runs)):
        if index < loop_runs:
            order.append("loop")
        if index < sweep_runs:
            order.append("sweep")
    with connection.execute_wrapper(count):
        for name in order:
            counted[0] = 0
            if name == "sweep":
                started = time.perf_counter()
                breaches, evaluated = set_based(now)
                runs[name].seconds.append(time.perf_counter() - started)
            else:
                loop = per_user_loop(now, every=every)
                runs[name].seconds.append(loop.projected_seconds)
                breaches, evaluated, runs[name].last_pass = loop.breaches, len(loop.users), loop
            runs[name].queries, runs[name].evaluated, runs[name].breaches = counted[0], evaluated, breaches
    return runs


# --- (b) a breaching tick to the square-off order ---------------------------------------------------------------------


@dataclass
class TickRuns:
    to_submitting: list[float] = field(default_factory=list)  # tick publish -> square-off order written SUBMITTING
    to_open: list[float] = field(default_factory=list)  # -> the broker accepted it (OPEN, submitted_at)
    publish: list[float] = field(default_factory=list)  # the breaching ticks_publish call, start to return
    floor: list[float] = field(default_factory=list)  # ticks_publish of a symbol nobody holds
    filled: int = 0
    events: int = 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


def measure_ticks(*, ticks: int) -> TickRuns:
    from decimal import Decimal

    from accounts.models import Role, User
    from algoterm.celery import app
    from brokers.prices import quote_at
    from brokers.services import broker_account_connect
    from marketdata.models import Instrument, InstrumentType
    from marketdata.quotes import quotes_put
    from marketdata.ticks import ticks_publish
    from orders import services as order_services
    from orders.models import LegRole, Order, OrderEvent, OrderSource, OrderStatus
    from rms import services
    from rms.models import RmsEvent, TradingState

    app.conf.task_always_eager = True  # evaluate_symbols runs inside ticks_publish, as a worker would run it
    for symbol in (TICK_SYMBOL, FLOOR_SYMBOL):
        Instrument.objects.create(
            symbol=symbol,
            exchange="NSE",
            segment="NSE",
            tradingsymbol=symbol.split(":", 1)[1],
            instrument_type=InstrumentType.EQ,
            lot_size=1,
            tick_size=Decimal("0.05"),
        )
    operator = User.objects.create(
        email="rms-bench-operator@example.com", name="Ops", phone="+919799999998", role=Role.ADMIN, password="!"
    )
    trader = User.objects.create(
        email="rms-bench-trader@example.com", name="Bench", phone="+919799999999", password="!"
    )
    account = broker_account_connect(
        user=trader, broker="paper", credentials={"opening_balance": "100000000"}, label="RMS bench"
    ).account
    services.profile_update(actor=trader, user=trader, data={"max_daily_loss": Decimal(LOSS_LIMIT)})
    buy = order_services.OrderSpec(
        account_id=account.pk, symbol=TICK_SYMBOL, side="BUY", quantity=HELD, order_type="MARKET", product="MIS"
    )

    runs = TickRuns()
    for run in range(ticks + 1):  # the first is a warm-up
        # Reset: today's state back to NORMAL with a fresh loss budget (a resume measures the day's MTM rules from
        # the MTM at that moment, the previous run's realized loss included), then 100 shares bought at 100.
        services.user_resume(actor=operator, user=trader)
        quotes_put([quote_at(TICK_SYMBOL, ENTRY, depth=1_000_000)])
        entry = order_services.order_place(user=trader, spec=buy)
        assert entry.status == OrderStatus.FILLED, entry

        floor_tick = quote_at(FLOOR_SYMBOL, BREACH_PRICE, depth=1_000_000)
        floor_started = time.perf_counter()
        ticks_publish([floor_tick])
        floor = time.perf_counter() - floor_started

        tick = quote_at(TICK_SYMBOL, BREACH_PRICE, depth=1_000_000)
        published_at = time.time()
        started = time.perf_counter()
        ticks_publish([tick])
        publish = time.perf_counter() - started

        closing = Order.objects.get(
            user=trader, source=OrderSource.RMS, role=LegRole.SQUARE_OFF, created_at__gte=entry.created_at
        )
        submitting = OrderEvent.objects.get(order=closing, to_status=OrderStatus.SUBMITTING).created_at
        state = services.state_today(user_id=trader.pk)
        assert state.status == TradingState.HALTED and not state.square_off_pending, state
        if run == 0:
            continue
        runs.to_submitting.append(submitting.timestamp() - published_at)
        runs.to_open.append(closing.submitted_at.timestamp() - published_at)
        runs.publish.append(publish)
        runs.floor.append(floor)
        runs.filled += closing.status == OrderStatus.FILLED
    runs.events = RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.BREACH).count()
    return runs


# --- the run ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=sized(10_000, 300))
    parser.add_argument("--sweep-runs", type=int, default=sized(9, 2))
    parser.add_argument("--loop-runs", type=int, default=sized(5, 1))
    parser.add_argument(
        "--loop-users",
        type=int,
        default=sized(1000, 100),
        help="users the per-user loop evaluates per run (every n-th user)",
    )
    parser.add_argument("--ticks", type=int, default=sized(50, 5), help="breaching ticks (each with its floor tick)")
    args = parser.parse_args()
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if not (1 <= args.users <= 20_000 and 1 <= args.sweep_runs <= 50 and 1 <= args.loop_runs <= 20):
        raise SystemExit("Keep --users <= 20000, --sweep-runs <= 50 and --loop-runs <= 20.")
    if not (1 <= args.ticks <= 500 and 1 <= args.loop_users <= args.users):
        raise SystemExit("Keep --ticks <= 500 and --loop-users between 1 and --users.")

    database_recreate("BENCH_RMS_DATABASE_URL")
    try:
        import django

        django.setup()
        import logging

        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)  # a line per eager task otherwise
        from django.core.management import call_command
        from django.db import connection

        started = time.monotonic()
        call_command("migrate", verbosity=0)
        population = seed_population(users=args.users, migrate_seconds=time.monotonic() - started)
        sweeps = measure_sweep(sweep_runs=args.sweep_runs, loop_runs=args.loop_runs, loop_users=args.loop_users)
        ticks = measure_ticks(ticks=args.ticks)
        postgres = connection.pg_version // 10000
    finally:
        from django.db import connections

        connections.close_all()
        database_recreate("BENCH_RMS_DATABASE_URL", drop_only=True)
        clean_redis()

    report(population, sweeps, ticks, postgres)


def report(population: Population, sweeps: dict[str, Runs], ticks: TickRuns, postgres: int) -> None:
    sweep, loop = sweeps["sweep"], sweeps["loop"]
    print(
        f"\nRMS monitor: {population.users:,} users x {POSITIONS_PER_USER} open positions ({population.positions:,}) "
        f"on {population.symbols} symbols, quotes in Redis, PostgreSQL {postgres} on 127.0.0.1, one process, "
        f"{os.cpu_count()} CPUs"
    )
    sample = loop.last_pass
    timed = len(sample.users)
    print(f"| {'evaluation of every user':<49} | timed on | runs | p50 ms | min ms | max ms | queries |")
    print(f"|{'-' * 51}|---------:|-----:|-------:|-------:|-------:|--------:|")
    for label, runs, users in (
        ("sweep(act=False): set-based, MTM summed in SQL", sweep, sweep.evaluated),
        ("per-user ORM loop: 3 queries + 1 quote fetch each", loop, timed),
    ):
        print(
            f"| {label:<49} | {users:8,d} | {len(runs.seconds):4d} | {runs.p50_ms:6.0f} "
            f"| {min(runs.seconds) * 1000:6.0f} | {max(runs.seconds) * 1000:6.0f} | {runs.queries:7,d} |"
        )
    sampled = set(sample.users)
    sweep_on_sample = {breach for breach in sweep.breaches if breach[0] in sampled}
    agree = sweep_on_sample == loop.breaches and sample.population == sweep.evaluated
    reasons: dict[str, int] = {}
    for _, reason in sweep.breaches:
        reasons[reason] = reasons.get(reason, 0) + 1
    projected = "" if timed == sample.population else f", its time projected from {timed:,} to {sample.population:,}"
    print(
        f"per-user loop / sweep: p50 {loop.p50_ms / sweep.p50_ms:.1f}x (the loop: "
        f"{sample.per_user_seconds / timed * 1000:.2f} ms per user{projected}); quote fetches for every user: 1 vs "
        f"{sample.population:,}, queries: {sweep.queries} vs {1 + (loop.queries - 1) * sample.population // timed:,}."
    )
    print(
        f"breaches found by the sweep: {len(sweep.breaches):,} ("
        + ", ".join(f"{reason} {count:,}" for reason, count in sorted(reasons.items()))
        + f"); on the {timed:,} users the loop evaluated it found "
        + (f"the same {len(loop.breaches):,}." if agree else "OTHERS: the two evaluations DISAGREE.")
    )
    if not agree:
        only_sweep, only_loop = sweep_on_sample - loop.breaches, loop.breaches - sweep_on_sample
        print(f"  only the sweep: {sorted(only_sweep)[:5]} ({len(only_sweep)}); only the loop: {sorted(only_loop)[:5]}")

    print(
        f"\nbreaching tick -> RMS square-off order: ticks_publish with tick-driven evaluation, Celery eager in this "
        f"process (no queue hop), {len(ticks.to_submitting)} ticks after 1 warm-up, {population.positions:,} other "
        f"positions in the table"
    )
    print("| from the tick's publish to ...                                  |  p50 ms |  p99 ms |  max ms |")
    print("|-----------------------------------------------------------------|--------:|--------:|--------:|")
    rows = (
        ("square-off order row written SUBMITTING", ticks.to_submitting),
        ("square-off order accepted by the paper broker (OPEN)", ticks.to_open),
        ("ticks_publish returned (breach, square-off, fill, fan-out done)", ticks.publish),
        ("floor: ticks_publish of a symbol nobody holds", ticks.floor),
    )
    for label, values in rows:
        print(
            f"| {label:<63} | {percentile(values, 0.5):7.1f} | {percentile(values, 0.99):7.1f} "
            f"| {max(values) * 1000:7.1f} |"
        )
    samples = len(ticks.to_submitting)
    p99_rank = "largest" if int(samples * 0.99) >= samples - 1 else f"{samples - int(samples * 0.99)}th largest"
    floor50, floor99 = percentile(ticks.floor, 0.5), percentile(ticks.floor, 0.99)
    print(
        f"tick -> SUBMITTING / floor: p50 {percentile(ticks.to_submitting, 0.5) / floor50:.1f}x, "
        f"p99 {percentile(ticks.to_submitting, 0.99) / floor99:.1f}x; tick -> OPEN / floor: "
        f"p50 {percentile(ticks.to_open, 0.5) / floor50:.1f}x, p99 {percentile(ticks.to_open, 0.99) / floor99:.1f}x"
    )
    print(
        f"note: each run resets the trader (user_resume, which gives a fresh loss budget; {HELD} shares bought at "
        f"{ENTRY} through the order pipeline) and "
        f"publishes {BREACH_PRICE} against a {LOSS_LIMIT}-rupee loss limit; "
        f"{ticks.filled} of {len(ticks.to_submitting)} square-offs filled, {ticks.events} breach events. With "
        f"{len(ticks.to_submitting)} samples p99 is the {p99_rank} value. A worker adds the Redis queue hop; "
        f"eager also delays the tick's fan-out until the evaluation is done."
    )
    print(
        f"note: seeding {population.positions:,} positions took {population.seed_seconds:.1f}s (bulk_create), "
        f"migrate {population.migrate_seconds:.1f}s; {population.states:,} users start the day with a state "
        f"(a lock raised, REDUCING or HALTED)."
    )


if __name__ == "__main__":
    main()
