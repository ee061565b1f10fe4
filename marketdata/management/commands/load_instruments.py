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
from marketdata.instruments.masters import MASTER_BROKERS, instrument_master_refresh
from marketdata.models import InstrumentMasterLoad

PHASE_LABELS = {"validate": "checking", "write": "writing"}


class Command(BaseCommand):
    help = (
        "Load the instrument master from Kite's instrument CSV, a connected broker account's dump, or the generated "
        "demo universe, or refresh a broker's published master (--broker dhan|fyers|zerodha) the way the daily "
        "refresh does: it keeps the current master when the download fails or looks wrong (--force skips that "
        "check). Every row is checked before anything is written; the write is one transaction."
    )

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--csv", metavar="PATH", help="a Kite instrument dump (instruments.csv)")
        source.add_argument("--account", metavar="ACC_ID", help="a connected broker account that offers a dump")
        source.add_argument("--demo", action="store_true", help="the generated demo universe")
        source.add_argument(
            "--broker",
            choices=MASTER_BROKERS,
            help="refresh this broker's master (zerodha: from --via-account, else the market-data account)",
        )
        parser.add_argument("--via-account", metavar="ACC_ID", help="--broker zerodha: the account to download with")
        parser.add_argument("--force", action="store_true", help="--broker: load even if the download looks wrong")
        parser.add_argument("--today", type=date.fromisoformat, help="demo: expiries relative to this YYYY-MM-DD")
        parser.add_argument("--partial", action="store_true", help="keep instruments the dump does not list active")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def handle(self, *args, csv: str | None, account: str | None, demo: bool, today, partial, no_progress, **options):
        if options.get("broker"):
            self._refresh(broker=options["broker"], via=options.get("via_account"), force=options["force"])
            return
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

    def _refresh(self, *, broker: str, via: str | None, force: bool) -> None:
        account = None
        if via:
            account = broker_account_find(account_id=via)
            if account is None or account.broker != broker:
                raise CommandError(f"No {broker} account {via}.")
        self.stderr.write(f"downloading the {broker} instrument master...")
        load = instrument_master_refresh(broker=broker, account=account, force=force)
        if load.outcome != InstrumentMasterLoad.Outcome.LOADED:
            raise CommandError(f"{broker}: {load.get_outcome_display()}. {load.message}")
        self.stdout.write(
            self.style.SUCCESS(
                f"{broker}: {load.rows} instruments: {load.created} new, {load.updated} updated, {load.removed} "
                f"removed, {load.skipped} skipped. {load.message}".strip()
            )
        )


def _summary(result: LoadResult) -> str:
    return (
        f"{result.total} instruments loaded in {result.seconds:.1f}s: {result.created} new, {result.updated} updated, "
        f"{result.deactivated} marked inactive, {result.skipped} skipped (exchanges we do not trade)."
    )
