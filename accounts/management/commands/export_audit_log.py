"""Export the audit log as CSV, oldest first, streamed from the database in chunks with a progress bar."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from accounts.models import AuditEvent
from accounts.services import audit_record

IST = ZoneInfo("Asia/Kolkata")
COLUMNS = [
    "occurred_at",
    "id",
    "kind",
    "action",
    "actor_id",
    "actor_email",
    "target_type",
    "target_id",
    "ip",
    "request_id",
    "details",
]
CHUNK_SIZE = 2000


def _day(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"dates look like 2026-03-02; got {raw!r}") from None


def _ist_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=IST)


class Command(BaseCommand):
    help = (
        "Export the audit log as CSV (UTC ISO timestamps, details as JSON), oldest first; --from and --to are IST "
        "days, both included. --output - writes to standard output."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--output", required=True, metavar="FILE", help="the CSV file to write, or - for stdout")
        parser.add_argument("--kind", choices=AuditEvent.Kind.values, help="only events of this kind")
        parser.add_argument("--from", dest="first_day", type=_day, help="first IST day, YYYY-MM-DD")
        parser.add_argument("--to", dest="last_day", type=_day, help="last IST day, YYYY-MM-DD, included")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, output: str, kind: str | None, first_day, last_day, no_progress: bool, **options):
        if first_day and last_day and first_day > last_day:
            raise CommandError("--from is after --to.")
        events = AuditEvent.objects.order_by("occurred_at", "id")
        if kind:
            events = events.filter(kind=kind)
        if first_day:
            events = events.filter(occurred_at__gte=_ist_start(first_day))
        if last_day:
            events = events.filter(occurred_at__lt=_ist_start(last_day + timedelta(days=1)))
        total = events.count()
        rows = events.values_list(
            "occurred_at",
            "id",
            "kind",
            "action",
            "actor_id",
            "actor__email",
            "target_type",
            "target_id",
            "ip",
            "request_id",
            "details",
        ).iterator(chunk_size=CHUNK_SIZE)
        show = not no_progress and options["verbosity"] > 0
        if output == "-":
            written = self._write(rows, target=self.stdout, total=total, show=show)
        else:
            path = Path(output)
            if not path.parent.is_dir():
                raise CommandError(f"{path.parent}: no such directory.")
            partial = path.with_name(f".{path.name}.part")  # a failed export leaves no half-written file behind
            try:
                with partial.open("w", newline="", encoding="utf-8") as handle:
                    written = self._write(rows, target=handle, total=total, show=show)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        filters = {"kind": kind, "from": first_day and first_day.isoformat(), "to": last_day and last_day.isoformat()}
        audit_record(action="system.audit_export", details={**filters, "rows": written})
        self.stderr.write(self.style.SUCCESS(f"{written} audit event(s) exported to {output}."))

    @staticmethod
    def _write(rows, *, target, total: int, show: bool) -> int:
        writer = csv.writer(target)
        writer.writerow(COLUMNS)
        written = 0
        with tqdm(total=total, desc="exporting audit log", unit="events", file=sys.stderr, disable=not show) as bar:
            for occurred_at, *middle, details in rows:
                writer.writerow(
                    [
                        occurred_at.isoformat(),
                        *("" if value is None else value for value in middle),
                        json.dumps(details, sort_keys=True, default=str),
                    ]
                )
                written += 1
                if written % CHUNK_SIZE == 0:
                    bar.update(CHUNK_SIZE)
            bar.update(written - bar.n)
        return written
