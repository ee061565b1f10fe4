"""Seed the demo: an admin, a trader and the trader's paper broker account (idempotent: existing ones are kept)."""

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
