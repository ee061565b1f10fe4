"""Square off every user holding an open position, as the system: the operators' last resort when something is
wrong platform-wide. Each user goes through the RMS manual square-off (cancel pending orders, close at market).
It stops nothing from trading again: halt the platform (or the users) first when new orders must be refused too."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from accounts.models import User
from accounts.selectors import user_list_by_ids
from accounts.services import audit_record
from algoterm.api.errors import AppError
from rms import services


class Command(BaseCommand):
    help = (
        "Square off every user with an open position (pending orders cancelled, positions closed at market), with the "
        "system as the actor. --dry-run lists who would be squared off and changes nothing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list the users and their MTM, change nothing")
        parser.add_argument("--reason", default="emergency square-off", help="recorded in the audit log")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, dry_run: bool, reason: str, no_progress: bool, **options) -> None:
        book = services.mtm_book()
        holding = {
            user_id: (int(count), float(mtm))
            for user_id, count, mtm in zip(book.user_ids, book.open_positions, book.mtm, strict=True)
            if count > 0
        }
        users = user_list_by_ids(user_ids=list(holding))
        if not users:
            self.stdout.write(self.style.SUCCESS("No user holds an open position; nothing to do."))
            return
        if dry_run:
            for user in users:
                count, mtm = holding[user.pk]
                self.stdout.write(f"  would square off {user.email:<40} {count:>4} open position(s)  MTM {mtm:>14,.2f}")
            self.stdout.write(
                self.style.WARNING(f"Dry run: {len(users)} user(s) would be squared off; nothing changed.")
            )
            return
        placed, cancelled, failures = 0, 0, []
        show = not no_progress and options["verbosity"] > 0
        with tqdm(total=len(users), desc="squaring off", unit="users", file=sys.stderr, disable=not show) as bar:
            for user in users:
                outcome = self._square_off(user=user, reason=reason)
                placed += outcome["placed"]
                cancelled += outcome["cancelled"]
                failures += [f"{user.email}: {problem}" for problem in outcome["failed"]]
                bar.update(1)
        for failure in failures:
            self.stderr.write(f"  failed: {failure}")
        summary = (
            f"{len(users)} user(s) squared off: {placed} closing order(s) placed, {cancelled} pending order(s) "
            f"cancelled, {len(failures)} failure(s)."
        )
        if failures:
            raise CommandError(f"{summary} Run it again: a square-off places only what is still uncovered.")
        self.stdout.write(self.style.SUCCESS(summary))

    def _square_off(self, *, user: User, reason: str) -> dict:
        try:
            result = services.user_square_off(actor=None, user=user)
        except AppError as error:
            audit_record(
                action="system.emergency_square_off",
                target=user,
                details={"reason": reason, "outcome": "failed", "detail": str(error.detail)},
            )
            return {"placed": 0, "cancelled": 0, "failed": [str(error.detail)]}
        audit_record(
            action="system.emergency_square_off",
            target=user,
            details={
                "reason": reason,
                "outcome": "failed" if result.failed else "done",
                "placed": [order.pk for order in result.placed],
                "cancelled": [order.pk for order in result.cancelled],
                "failed": result.failed,
            },
        )
        return {
            "placed": len(result.placed),
            "cancelled": len(result.cancelled),
            "failed": [f"{f.get('order_id') or f.get('symbol')}: {f['detail']}" for f in result.failed],
        }
