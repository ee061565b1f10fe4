from django.core.management.base import BaseCommand
from django.utils import timezone

from brokers.models import AccountStatus, BrokerAccount
from brokers.services import broker_session_check, broker_sessions_expire_due


class Command(BaseCommand):
    help = "Expire broker sessions past their daily end and check the rest at their brokers."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing, call no broker")

    def handle(self, *args, dry_run: bool, **options):
        due = broker_sessions_expire_due(dry_run=dry_run)
        verb = "would expire" if dry_run else "expired"
        for account in due:
            self.stdout.write(f"  {verb:<12} {account.pk}  {account.broker:<8} {account.label}")
        connected = list(BrokerAccount.objects.filter(status=AccountStatus.CONNECTED).order_by("broker"))
        if not dry_run:
            for index, account in enumerate(connected, start=1):
                verdict = broker_session_check(account=account)
                self.stdout.write(f"  [{index}/{len(connected)}] {account.pk}  {account.broker:<8} {verdict}")
        self.stdout.write(
            self.style.SUCCESS(f"{len(due)} {verb}; {len(connected)} connected, checked at {timezone.now():%H:%M:%S}.")
        )
