"""Seed the demo: an admin, a trader, the trader's paper broker account, the instruments and a draft strategy
(idempotent: existing ones are kept). Refused in production, where the published demo passwords would be a way in."""

from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import user_provision
from algoterm.sandbox.demo import DEMO_USERS
from brokers.models import Broker
from brokers.selectors import broker_account_list
from brokers.services import broker_account_connect
from marketdata import calendar
from marketdata.candles import CandleBar, candles_upsert
from marketdata.instruments import instruments_load_demo
from marketdata.selectors import candle_history_exists, instrument_master_count
from strategies.selectors import strategy_list
from strategies.services import AccountInput, LegInput, StrategyInput, strategy_create


class Command(BaseCommand):
    help = "Create the demo admin and trader if they do not exist, and print the demo logins."

    def handle(self, *args, **options):
        if settings.DJANGO_ENV == "production":
            raise CommandError(
                "seed_demo creates accounts with published passwords and is refused with DJANGO_ENV=production; "
                "create the first admin with `manage.py createsuperuser`."
            )
        self._seed()

    @transaction.atomic
    def _seed(self) -> None:
        users = {}
        for spec in DEMO_USERS:
            user, created = user_provision(**spec)
            users[spec["email"]] = user
            state = "created" if created else "kept"
            self.stdout.write(f"  {spec['role']:<7} {spec['email']:<22} password {spec['password']:<16} ({state})")
        trader = users["trader@example.com"]
        self._seed_paper_account(trader)
        self._seed_instruments()
        self._seed_strategy(trader)
        self._seed_history()

    def _seed_instruments(self) -> None:

        count = instrument_master_count()
        if count:
            self.stdout.write(f"  instruments: {count} (kept)")
            return
        result = instruments_load_demo()
        self.stdout.write(f"  instruments: {result.total} demo instruments loaded in {result.seconds:.1f}s")

    def _seed_paper_account(self, trader: User) -> None:

        if broker_account_list(user=trader, broker=Broker.PAPER).exists():
            state = "kept"
        else:
            broker_account_connect(user=trader, broker=Broker.PAPER, credentials={}, label="Paper trading")
            state = "created"
        self.stdout.write(f"  paper broker account for {trader.email} ({state})")

    def _seed_strategy(self, trader: User) -> None:
        """A draft short straddle in the paper account, ready to start in paper mode or to backtest."""

        if strategy_list(user=trader).exists():
            self.stdout.write("  demo strategy (kept)")
            return
        account = broker_account_list(user=trader, broker=Broker.PAPER).first()
        legs = [
            LegInput(
                underlying="NIFTY",
                instrument="OPT",
                option_type=option_type,
                side="SELL",
                lots=1,
                stop_loss_unit="percent",
                stop_loss=25,
            )
            for option_type in ("CE", "PE")
        ]
        strategy_create(
            user=trader,
            data=StrategyInput(
                name="Demo short straddle",
                kind="time_based",
                entry_time=time(9, 20),
                exit_time=time(15, 15),
                accounts=[AccountInput(account.pk, 1)],
                legs=legs,
            ),
        )
        self.stdout.write("  demo strategy: a draft NIFTY short straddle (created)")

    def _seed_history(self, *, days: int = 30) -> None:
        """Synthetic 1-minute NIFTY 50 candles for the trading days before today, so a backtest has data at once
        (a seeded random walk: the same history on every machine)."""

        symbol, ist = "NSE:NIFTY 50", ZoneInfo("Asia/Kolkata")
        today = timezone.localdate(timezone=ist)
        if candle_history_exists(
            symbol=symbol, interval="1m", before=datetime.combine(today, datetime.min.time(), ist)
        ):
            self.stdout.write(f"  {symbol} history (kept)")
            return
        trading_days, day = [], today
        while len(trading_days) < days:
            day = calendar.previous_trading_day(day)
            trading_days.append(day)
        rng = np.random.default_rng(20260101)
        level, rows = 24000.0, []
        for day in sorted(trading_days):
            moves = rng.normal(0.0, 0.00045, size=375)
            closes = level * np.exp(np.cumsum(moves))
            opens = np.concatenate([[level], closes[:-1]])
            session = datetime.combine(day, datetime.min.time(), ist).replace(hour=9, minute=15)
            for minute in range(375):
                high = max(opens[minute], closes[minute]) * (1 + abs(rng.normal(0, 0.0002)))
                low = min(opens[minute], closes[minute]) * (1 - abs(rng.normal(0, 0.0002)))
                rows.append(
                    CandleBar(
                        symbol=symbol,
                        interval="1m",
                        start=session + timedelta(minutes=minute),
                        **{
                            name: Decimal(f"{value:.2f}")
                            for name, value in (
                                ("open", opens[minute]),
                                ("high", high),
                                ("low", low),
                                ("close", closes[minute]),
                            )
                        },
                        volume=0,
                    )
                )
            level = float(closes[-1])
        candles_upsert(candles=rows)
        self.stdout.write(f"  {symbol} history: {len(rows)} one-minute candles over {days} trading days (created)")
