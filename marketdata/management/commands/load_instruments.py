from __future__ import annotations

import sys
from datetime import date

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from brokers.protocol import BrokerError
from brokers.selectors import broker_account_find
from marketdata.instruments import (
    InstrumentLoadError,
    LoadResult,
    instruments_load_demo,
    instruments_load_from_account,
    instruments_load_kite_csv,
)

PHASE_LABELS = {"validate": "checking", "write": "writing"}


class Command(BaseCommand):
    help = (
        "Load the instrument master from Kite's instrument CSV, a connected broker account's dump, or the generated "
        "demo universe. Every row is checked before anything is written; the write is one transaction, and "
        "instruments the dump no longer lists are marked inactive."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--csv", metavar="PATH", help="a Kite instrument dump (instruments.csv)")
        source.add_argument("--account", metavar="ACC_ID", help="a connected broker account that offers a dump")
        source.add_argument("--demo", action="store_true", help="the generated demo universe")
        parser.add_argument("--today", type=date.fromisoformat, help="demo: expiries relative to this YYYY-MM-DD")
        parser.add_argument("--partial", action="store_true", help="keep instruments the dump does not list active")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def handle(self, *args, csv: str | None, account: str | None, demo: bool, today, partial, no_progress, **options):
        bars: dict[str, tqdm] = {}

        def progress(phase: str, advanced: int, total: int | None) -> None:
            if no_progress:
                return
            if phase not in bars:
                bars[phase] = tqdm(total=total, unit="rows", desc=PHASE_LABELS.get(phase, phase), file=sys.stderr)
            bars[phase].update(advanced)

        try:
            if csv:
                result = instruments_load_kite_csv(source=csv, full=not partial, progress=progress)
            elif account:
                broker_account = broker_account_find(account_id=account)
                if broker_account is None:
                    raise CommandError(f"No broker account {account}.")
                result = instruments_load_from_account(account=broker_account, full=not partial, progress=progress)
            else:
                result = instruments_load_demo(today=today, progress=progress)
        except InstrumentLoadError as error:
            raise CommandError(str(error)) from None
        except BrokerError as error:
            raise CommandError(f"The broker could not give its instruments: {error.detail}") from None
        except OSError as error:
            raise CommandError(f"Cannot read {csv}: {error.strerror or error}") from None
        finally:
            for bar in bars.values():
                bar.close()
        self.stdout.write(self.style.SUCCESS(_summary(result)))


def _summary(result: LoadResult) -> str:
    return (
        f"{result.total} instruments loaded in {result.seconds:.1f}s: {result.created} new, {result.updated} updated, "
        f"{result.deactivated} marked inactive, {result.skipped} skipped (exchanges we do not trade)."
    )
