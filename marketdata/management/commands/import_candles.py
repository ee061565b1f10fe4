"""Import candles from CSV files (`symbol,timestamp,open,high,low,close,volume[,oi]`, all or nothing per file) or
from a connected broker account's historical data (`--account --symbol --from --to`)."""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from algoterm.api.errors import AppError, ValidationFailed
from brokers.selectors import broker_account_find
from marketdata.candles import DAY, MINUTE, candles_import_csv, candles_import_from_broker, ist_day_start


def _calendar_day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"dates look like 2026-03-02; got {raw!r}") from None


class Command(BaseCommand):
    help = (
        "Import 1-minute (or daily) candles from CSV files, or from a broker account's historical data for one symbol "
        "and a range of days; re-importing overwrites the same candles."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="*", type=Path, help="CSV files (leave out with --account)")
        parser.add_argument("--interval", choices=[MINUTE, DAY], default=MINUTE)
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--account", dest="account_id", help="a connected broker account's id (acc_...)")
        parser.add_argument("--symbol", help="with --account: EXCHANGE:TRADINGSYMBOL, e.g. NSE:INFY")
        parser.add_argument("--from", dest="first_day", type=_calendar_day, help="with --account: first day (IST)")
        parser.add_argument("--to", dest="last_day", type=_calendar_day, help="with --account: last day, included")

    def handle(self, *args, paths: list[Path], interval: str, batch_size: int, **options) -> None:
        show_progress = options["verbosity"] > 0
        if options["account_id"]:
            if paths:
                raise CommandError("Give CSV files or --account, not both.")
            self._import_from_broker(interval=interval, show_progress=show_progress, **options)
            return
        if not paths:
            raise CommandError("Give CSV files to import, or --account with --symbol, --from and --to.")
        for path in paths:
            self._import_csv(path=path, interval=interval, batch_size=batch_size, show_progress=show_progress)

    def _import_csv(self, *, path: Path, interval: str, batch_size: int, show_progress: bool) -> None:
        if not path.is_file():
            raise CommandError(f"{path}: no such file.")
        with path.open(newline="", encoding="utf-8-sig") as handle:
            total_lines = max(0, sum(1 for _ in handle) - 1)
            handle.seek(0)
            with tqdm(total=total_lines, desc=path.name, unit="rows", disable=not show_progress) as bar:

                def advance(rows: int) -> None:
                    bar.update(rows - bar.n)

                try:
                    result = candles_import_csv(
                        lines=handle, interval=interval, batch_size=batch_size, on_progress=advance
                    )
                except ValidationFailed as error:
                    raise CommandError(f"{path}: {_described(error)}") from None
        self.stdout.write(f"{path}: {result.rows} rows, {result.created} new, {result.updated} updated")

    def _import_from_broker(
        self,
        *,
        account_id: str,
        symbol: str | None,
        first_day: date | None,
        last_day: date | None,
        interval: str,
        show_progress: bool,
        **options,
    ) -> None:
        if not symbol or first_day is None or last_day is None:
            raise CommandError("--account needs --symbol, --from and --to.")
        account = broker_account_find(account_id=account_id, include_disconnected=False)
        if account is None:
            raise CommandError(f"No broker account {account_id}.")
        label = f"{symbol.strip().upper()} {interval}"
        with tqdm(desc=label, unit="chunks", disable=not show_progress) as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                result = candles_import_from_broker(
                    account=account,
                    symbol=symbol,
                    interval=interval,
                    start=ist_day_start(first_day),
                    end=ist_day_start(last_day + timedelta(days=1)),
                    on_progress=advance,
                )
            except AppError as error:
                raise CommandError(f"{label} from {account.label}: {_described(error)}") from None
        self.stdout.write(
            f"{label} from {account.label}: {result.rows} rows, {result.created} new, {result.updated} updated"
        )


def _described(error: AppError) -> str:
    details = "; ".join(f"{where}: {' '.join(messages)}" for where, messages in (error.errors or {}).items())
    return f"{error.detail} {details}".strip()
