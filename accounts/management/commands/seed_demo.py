"""Seed the demo: an admin, a trader, the trader's paper broker account, the instruments and a draft strategy
(idempotent: existing ones are kept)."""

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Role, User

DEMO_USERS = [
    {
        "email": "admin@example.com",
        "password": "Admin@Demo2026",
        "name": "Demo Admin",
        "phone": "+919800000001",
        "role": Role.ADMIN,
    },
    {
        "email": "trader@example.com",
        "password": "Trader@Demo2026",
        "name": "Demo Trader",
        "phone": "+919800000002",
        "role": Role.TRADER,
    },
]


class Command(BaseCommand):
    help = "Create the demo admin and trader if they do not exist, and print the demo logins."

    @transaction.atomic
    def handle(self, *args, **options):
        for spec in DEMO_USERS:
            fields = {key: value for key, value in spec.items() if key not in ("email", "password")}
            if User.objects.filter(email=spec["email"]).exists():
                state = "kept"
            elif spec["role"] == Role.ADMIN:
                User.objects.create_superuser(spec["email"], spec["password"], **fields)
                state = "created"
            else:
                User.objects.create_user(spec["email"], spec["password"], **fields)
                state = "created"
            self.stdout.write(f"  {spec['role']:<7} {spec['email']:<22} password {spec['password']:<16} ({state})")
        self._seed_paper_account(User.objects.get(email="trader@example.com"))
        self._seed_instruments()
        self._seed_strategy(User.objects.get(email="trader@example.com"))

    def _seed_instruments(self) -> None:
        from marketdata.instruments import instruments_load_demo
        from marketdata.models import Instrument

        if Instrument.objects.exists():
            self.stdout.write(f"  instruments: {Instrument.objects.count()} (kept)")
            return
        result = instruments_load_demo()
        self.stdout.write(f"  instruments: {result.total} demo instruments loaded in {result.seconds:.1f}s")

    def _seed_paper_account(self, trader: User) -> None:
        from brokers.models import Broker
        from brokers.selectors import broker_account_list
        from brokers.services import broker_account_connect

        if broker_account_list(user=trader, broker=Broker.PAPER).exists():
            state = "kept"
        else:
            broker_account_connect(user=trader, broker=Broker.PAPER, credentials={}, label="Paper trading")
            state = "created"
        self.stdout.write(f"  paper broker account for {trader.email} ({state})")

    def _seed_strategy(self, trader: User) -> None:
        """A draft short straddle in the paper account, ready to start in paper mode or to backtest."""
        from datetime import time

        from brokers.models import Broker
        from brokers.selectors import broker_account_list
        from strategies.models import Strategy
        from strategies.services import AccountInput, LegInput, StrategyInput, strategy_create

        if Strategy.objects.filter(user=trader).exists():
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
