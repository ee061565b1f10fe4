"""Import candles from CSV files: `symbol,timestamp,open,high,low,close,volume[,oi]`, all or nothing per file."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from algoterm.api.errors import ValidationFailed
from marketdata.candles import DAY, MINUTE, candles_import_csv


class Command(BaseCommand):
    help = "Import 1-minute (or daily) candles from CSV; re-importing a file overwrites the same candles."

    def add_arguments(self, parser) -> None:
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument("--interval", choices=[MINUTE, DAY], default=MINUTE)
        parser.add_argument("--batch-size", type=int, default=5000)

    def handle(self, *args, paths: list[Path], interval: str, batch_size: int, **options) -> None:
        for path in paths:
            if not path.is_file():
                raise CommandError(f"{path}: no such file.")
            with path.open(newline="", encoding="utf-8-sig") as handle:
                total_lines = max(0, sum(1 for _ in handle) - 1)
                handle.seek(0)
                with tqdm(total=total_lines, desc=path.name, unit="rows", disable=options["verbosity"] == 0) as bar:

                    def advance(rows: int, bar=bar) -> None:
                        bar.update(rows - bar.n)

                    try:
                        result = candles_import_csv(
                            lines=handle, interval=interval, batch_size=batch_size, on_progress=advance
                        )
                    except ValidationFailed as error:
                        details = "; ".join(
                            f"{where}: {' '.join(messages)}" for where, messages in error.errors.items()
                        )
                        raise CommandError(f"{path}: {error.detail} {details}") from None
            self.stdout.write(f"{path}: {result.rows} rows, {result.created} new, {result.updated} updated")
