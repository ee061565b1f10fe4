"""Delete stored 1-minute candles older than a number of IST days, in batches, with a progress bar.

Daily candles are kept (they are small and backtests read years of them); ticks are never stored, only the latest
quote per symbol in the cache, so there is nothing else to purge. --dry-run counts and changes nothing."""

from __future__ import annotations

import sys
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Max, Min
from django.utils import timezone
from tqdm import tqdm

from marketdata.candles import IST, MINUTE, candles_purge, ist_day_start
from marketdata.models import Candle


class Command(BaseCommand):
    help = (
        "Delete 1-minute candles that started before the IST day N days ago (daily candles are kept), in batches "
        "with a progress bar. --dry-run counts what would go and changes nothing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--older-than-days", type=int, required=True, metavar="N", help="keep today and the N days before it"
        )
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
        parser.add_argument("--batch-size", type=int, default=5000, help="rows deleted per statement")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, older_than_days: int, dry_run: bool, batch_size: int, no_progress: bool, **options):
        if older_than_days < 1:
            raise CommandError("--older-than-days must be at least 1 (today's candles are never purged).")
        if batch_size < 1:
            raise CommandError("--batch-size must be positive.")
        cutoff = ist_day_start(timezone.localtime(timezone.now(), IST).date() - timedelta(days=older_than_days))
        old = Candle.objects.filter(interval=MINUTE, start__lt=cutoff).order_by()
        found = old.aggregate(
            rows=Count("pk"), symbols=Count("symbol", distinct=True), first=Min("start"), last=Max("start")
        )
        total = found["rows"]
        scope = f"1-minute candles before {cutoff:%Y-%m-%d %H:%M} IST"
        if not total:
            self.stdout.write(self.style.SUCCESS(f"No {scope}; nothing to purge."))
            return
        span = f"{total} {scope} ({found['symbols']} symbol(s), {found['first']:%Y-%m-%d} to {found['last']:%Y-%m-%d})"
        if dry_run:
            self.stdout.write(self.style.WARNING(f"Dry run: would delete {span}; nothing changed."))
            return
        show = not no_progress and options["verbosity"] > 0
        with tqdm(total=total, desc="purging candles", unit="rows", file=sys.stderr, disable=not show) as bar:
            deleted = candles_purge(before=cutoff, batch_size=batch_size, progress=bar.update)
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted} {scope}."))
