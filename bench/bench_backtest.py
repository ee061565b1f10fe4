"""The backtester over a year of 1-minute candles: a short NIFTY ATM straddle (two weekly options, sold at the 09:20
bar's close, a 25% stop-loss per leg, out at 15:15), priced by Black-Scholes because no option candles are stored,
over one year of synthetic NIFTY spot candles (a seeded random walk, 375 bars on each 2026 NSE trading day).

Three measurements in the same run, on the same candles:

- `backtest_execute`: the engine, from its query to the finished result (statistics included).
- the same backtest written per bar in scalar Python, the way it reads without vectorising: Candle model rows from
  the ORM, a per-day query for each contract's own candles, and for every bar after the entry, until its stop fills,
  each leg's Black-Scholes price (math.erf) at the bar's high (call) or low (put) against the stop. Same semantics,
  so both must find the same trades and (but for rounding of the last paisa on a price) the same PnL. Its time after
  its rows are loaded is reported too, against the engine's time less the floor.
- the floor: only the engine's own loading step (`_minutes_load`: its one values_list query, fetched into numpy).

Talks only to 127.0.0.1. Uses its own PostgreSQL database (BENCH_BACKTEST_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/algoterm_bench_backtest: dropped, created and migrated by the run, dropped at
the end) and its own Redis key prefix (removed at the end), so it never touches development data.

    .venv/bin/python bench/bench_backtest.py                 # 5 engine runs, 2 per-bar loop runs
    .venv/bin/python bench/bench_backtest.py --runs 9 --loop-runs 1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.database import LOCAL_HOSTS, clean_redis, database_recreate  # noqa: E402
from bench.quick import sized  # noqa: E402

os.environ.setdefault("BENCH_BACKTEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/algoterm_bench_backtest")
os.environ["DATABASE_URL"] = os.environ["BENCH_BACKTEST_DATABASE_URL"]
os.environ["DJANGO_SETTINGS_MODULE"] = "algoterm.settings"
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("REDIS_KEY_PREFIX", f"bench-backtest-{os.getpid()}")
os.environ["DJANGO_ENV"] = "test"
os.environ.setdefault("LOG_LEVEL", "WARNING")

SPOT_SYMBOL = "NSE:NIFTY 50"
YEAR_START, YEAR_END = date(2026, 1, 1), date(2026, 12, 31)
BARS_PER_DAY = 375  # 09:15 to 15:29
START_LEVEL = 24_000.0
ANNUAL_VOLATILITY = 0.15
ENTRY, EXIT = clock_time(9, 20), clock_time(15, 15)
STOP_LOSS_PERCENT = Decimal(25)


def straddle():
    from strategies.definitions import ExitLevel, ExitUnit, Kind, LegDefinition, LegInstrument, StrategyDefinition

    stop = ExitLevel(ExitUnit.PERCENT, STOP_LOSS_PERCENT)
    legs = tuple(
        LegDefinition(
            underlying="NIFTY", instrument=LegInstrument.OPTION, side="SELL", lots=1, option_type=kind, stop_loss=stop
        )
        for kind in ("CE", "PE")
    )
    return StrategyDefinition(kind=Kind.TIME_BASED, legs=legs, entry_time=ENTRY, exit_time=EXIT)


# --- the candles ------------------------------------------------------------------------------------------------------


def seed_candles() -> tuple[int, int, float]:
    """A year of 1-minute spot candles, bulk-created; returns (days, bars, seconds)."""
    import numpy as np

    from marketdata.calendar import IST, is_trading_day
    from marketdata.models import Candle

    started = time.monotonic()
    rng = np.random.default_rng(20260101)
    per_minute = ANNUAL_VOLATILITY / math.sqrt(252 * BARS_PER_DAY)
    level = START_LEVEL
    days = bars = 0
    day = YEAR_START
    while day <= YEAR_END:
        if is_trading_day(day):
            opening = datetime.combine(day, clock_time(9, 15), tzinfo=IST)
            level *= math.exp(rng.normal(0, per_minute * 20))  # an overnight gap
            closes = level * np.exp(np.cumsum(rng.normal(0, per_minute, BARS_PER_DAY)))
            opens = np.concatenate(([level], closes[:-1]))
            wicks = np.abs(rng.normal(0, per_minute * 0.5, (2, BARS_PER_DAY)))
            highs = np.maximum(opens, closes) * (1 + wicks[0])
            lows = np.minimum(opens, closes) * (1 - wicks[1])
            Candle.objects.bulk_create(
                [
                    Candle(
                        symbol=SPOT_SYMBOL,
                        interval="1m",
                        start=opening + timedelta(minutes=minute),
                        open=Decimal(f"{opens[minute]:.2f}"),
                        high=Decimal(f"{highs[minute]:.2f}"),
                        low=Decimal(f"{lows[minute]:.2f}"),
                        close=Decimal(f"{closes[minute]:.2f}"),
                        volume=0,
                    )
                    for minute in range(BARS_PER_DAY)
                ]
            )
            level = float(closes[-1])
            days += 1
            bars += BARS_PER_DAY
        day += timedelta(days=1)
    return days, bars, time.monotonic() - started


# --- the three measurements -------------------------------------------------------------------------------------------


@dataclass
class Runs:
    seconds: list[float] = field(default_factory=list)
    after_load_seconds: list[float] = field(default_factory=list)  # the per-bar loop's work once its rows are in
    bars: int = 0
    trades: int = 0
    total_pnl: Decimal = Decimal(0)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def bars_per_second(self) -> float:
        return self.bars / statistics.median(self.seconds)


def engine_run(runs: Runs) -> None:
    from strategies.backtest import backtest_execute

    started = time.perf_counter()
    result = backtest_execute(
        definition=straddle(), start=YEAR_START, end=YEAR_END, capital=Decimal(1_000_000), volatility=0.15
    )
    runs.seconds.append(time.perf_counter() - started)
    runs.bars, runs.trades, runs.total_pnl = result.bars, len(result.trades), result.total_pnl


def load_run(runs: Runs) -> None:
    """The floor: the engine's own loading step (its one values_list query, fetched into numpy), nothing else."""
    from strategies.candles import _minutes_load

    started = time.perf_counter()
    minutes = _minutes_load(SPOT_SYMBOL, since=YEAR_START, until=YEAR_END)
    runs.seconds.append(time.perf_counter() - started)
    runs.bars = len(minutes.starts)


def _normal_cdf(value: float) -> float:
    return 0.5 * (1.0 + math.erf(value / math.sqrt(2.0)))


def _black_scholes(spot: float, strike: float, years: float, volatility: float, rate: float, is_call: bool) -> float:
    if years <= 0:
        return max(spot - strike, 0.0) if is_call else max(strike - spot, 0.0)
    root = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * volatility * volatility) * years) / (volatility * root)
    d2 = d1 - volatility * root
    discounted = strike * math.exp(-rate * years)
    if is_call:
        return spot * _normal_cdf(d1) - discounted * _normal_cdf(d2)
    return discounted * _normal_cdf(-d2) - spot * _normal_cdf(-d1)


def per_bar_loop_run(runs: Runs) -> None:
    """The straddle bar by bar in scalar Python (see the module docstring)."""
    from marketdata.calendar import IST, is_trading_day
    from marketdata.chain import expiry_moment, risk_free_rate
    from marketdata.instruments import DEMO_INDICES, kite_option_tradingsymbol
    from marketdata.models import Candle
    from strategies import legs as leg_choice
    from strategies.definitions import ExpiryChoice, StrikeChoice

    started = time.perf_counter()
    rate, volatility, year_seconds = risk_free_rate(), 0.15, 365 * 86400
    lot = next(index.lot_size for index in DEMO_INDICES if index.underlying == "NIFTY")
    by_day: dict[date, list] = {}
    for candle in Candle.objects.filter(
        symbol=SPOT_SYMBOL,
        interval="1m",
        start__gte=datetime.combine(YEAR_START, clock_time(0), tzinfo=IST),
        start__lt=datetime.combine(YEAR_END + timedelta(days=1), clock_time(0), tzinfo=IST),
    ).order_by("start"):
        by_day.setdefault(candle.start.astimezone(IST).date(), []).append(candle)
    loaded = time.perf_counter()
    trades, total, bars = 0, Decimal(0), 0
    for day, candles in by_day.items():
        if not is_trading_day(day):
            continue
        bars += len(candles)
        times = [candle.start.astimezone(IST).time() for candle in candles]
        entry = next((index for index, moment in enumerate(times) if moment >= ENTRY), None)
        exit_bar = next((index for index, moment in enumerate(times) if moment >= EXIT), len(candles) - 1)
        if entry is None or entry >= exit_bar:
            continue
        spot = candles[entry].close
        every, monthly = leg_choice.calendar_expiries(underlying="NIFTY", day=day)
        expiry = leg_choice.expiry_pick(choice=ExpiryChoice.CURRENT_WEEK, day=day, offered=every, monthly=monthly)
        strike = leg_choice.strike_pick(
            choice=StrikeChoice.ATM, spot=spot, strikes=leg_choice.strike_grid(underlying="NIFTY", spot=spot)
        )
        expires = expiry_moment(expiry=expiry).timestamp()
        for option_type in ("CE", "PE"):
            is_call = option_type == "CE"
            symbol = "NFO:" + kite_option_tradingsymbol(
                underlying="NIFTY", expiry=expiry, strike=strike, option_type=option_type, monthly=expiry in monthly
            )
            day_start = datetime.combine(day, clock_time(0), tzinfo=IST)
            if Candle.objects.filter(
                symbol=symbol, start__gte=day_start, start__lt=day_start + timedelta(days=1)
            ).exists():
                raise SystemExit("the bench stores no option candles")

            def price(
                candle, spot_field: str, at_end: bool, *, strike=strike, expires=expires, is_call=is_call
            ) -> float:
                moment = candle.start.timestamp() + (60 if at_end else 0)
                years = max(expires - moment, 0) / year_seconds
                underlying = float(getattr(candle, spot_field))
                return _black_scholes(underlying, float(strike), years, volatility, rate, is_call)

            entry_price = round(price(candles[entry], "close", True), 2)
            stop = entry_price + float(STOP_LOSS_PERCENT) * entry_price / 100
            exit_price = None
            for candle in candles[entry + 1 : exit_bar + 1]:
                adverse = price(candle, "high" if is_call else "low", True)
                if adverse >= stop - 1e-7:
                    exit_price = round(max(stop, price(candle, "open", False)), 2)
                    break
            if exit_price is None:
                exit_price = round(price(candles[exit_bar], "close", True), 2)
            trades += 1
            total += (Decimal(repr(entry_price)) - Decimal(repr(exit_price))) * lot
    finished = time.perf_counter()
    runs.seconds.append(finished - started)
    runs.after_load_seconds.append(finished - loaded)
    runs.bars, runs.trades, runs.total_pnl = bars, trades, total


def measure(*, runs: int, loop_runs: int) -> dict[str, Runs]:
    """Interleaved after one warm-up of each, so slow drift hits all three alike."""
    measured = {"engine": Runs(), "loop": Runs(), "load": Runs()}
    engine_run(Runs())
    load_run(Runs())
    for index in range(max(runs, loop_runs)):
        if index < runs:
            engine_run(measured["engine"])
            load_run(measured["load"])
        if index < loop_runs:
            per_bar_loop_run(measured["loop"])
    return measured


# --- the run ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=sized(5, 1), help="engine and load-floor runs")
    parser.add_argument("--loop-runs", type=int, default=sized(2, 1), help="per-bar loop runs (about 3 s each)")
    args = parser.parse_args()
    if urlparse(os.environ["REDIS_URL"]).hostname not in LOCAL_HOSTS:
        raise SystemExit("This benchmark only talks to a Redis on 127.0.0.1.")
    if not (1 <= args.runs <= 50 and 1 <= args.loop_runs <= 10):
        raise SystemExit("Keep --runs between 1 and 50 and --loop-runs between 1 and 10.")

    database_recreate("BENCH_BACKTEST_DATABASE_URL")
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        days, bars, seed_seconds = seed_candles()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        measured = measure(runs=args.runs, loop_runs=args.loop_runs)
        postgres = connection.pg_version // 10000
    finally:
        from django.db import connections

        connections.close_all()
        database_recreate("BENCH_BACKTEST_DATABASE_URL", drop_only=True)
        clean_redis()
    report(measured, days=days, bars=bars, seed_seconds=seed_seconds, postgres=postgres)


def report(measured: dict[str, Runs], *, days: int, bars: int, seed_seconds: float, postgres: int) -> None:
    engine, loop, load = measured["engine"], measured["loop"], measured["load"]
    print(
        f"\nBacktest of a short NIFTY ATM straddle (2 legs, Black-Scholes, 25% SL per leg, 09:20 -> 15:15) over "
        f"{bars:,} synthetic 1-minute candles ({days} NSE trading days of 2026, stored in {seed_seconds:.1f} s); "
        f"PostgreSQL {postgres} on 127.0.0.1, one process, {os.cpu_count()} CPUs"
    )
    print(f"| {'measurement':<58} | runs |  p50 ms |  min ms |     bars/s | trades | total PnL   |")
    print(f"|{'-' * 60}|-----:|--------:|--------:|-----------:|-------:|------------:|")
    rows = (
        ("backtest_execute: one query, numpy per day", engine, True),
        ("same backtest as a per-bar scalar Python loop (ORM rows)", loop, True),
        ("floor: load the candles into numpy, nothing else", load, False),
    )
    for label, runs, traded in rows:
        trades = f"{runs.trades:6d}" if traded else "     -"
        pnl = f"{runs.total_pnl:11,.2f}" if traded else f"{'-':>11}"
        print(
            f"| {label:<58} | {len(runs.seconds):4d} | {runs.p50_ms:7.0f} | {min(runs.seconds) * 1000:7.0f} "
            f"| {runs.bars_per_second:10,.0f} | {trades} | {pnl} |"
        )
    difference = abs(engine.total_pnl - loop.total_pnl)
    agree = engine.trades == loop.trades and engine.bars == loop.bars
    engine_work = engine.p50_ms - load.p50_ms
    loop_work = statistics.median(loop.after_load_seconds) * 1000
    print(
        f"per-bar loop / backtest_execute: p50 {loop.p50_ms / engine.p50_ms:.1f}x; "
        f"backtest_execute / load floor: p50 {engine.p50_ms / load.p50_ms:.2f}x."
    )
    print(
        f"after loading the candles: backtest_execute ~{engine_work:.0f} ms (its p50 less the floor's) vs the per-bar "
        f"loop's {loop_work:.0f} ms (timed from its rows in memory): {loop_work / engine_work:.1f}x."
    )
    print(
        ("Both found the same " if agree else "They DISAGREE: ")
        + f"{engine.trades} vs {loop.trades} trades over {engine.bars:,} vs {loop.bars:,} bars; their PnL differs by "
        f"{difference:,.2f} (Black-Scholes by scipy's ndtr vs math.erf, rounded to the paisa per price)."
    )


if __name__ == "__main__":
    main()
