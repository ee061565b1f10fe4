"""Square-offs from the operators' console: one implementation for every admin page that offers them (users,
positions), each running the order service, auditing the operator's act and reporting through the admin's
messages."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages

from accounts.services import audit_record
from algoterm.api.errors import AppError
from orders.services import SquareOffResult


@dataclass(frozen=True)
class SquareOffJob:
    target: Any  # what the audit row points at (a user, a position)
    label: str  # how messages name it ("" for none)
    run: Callable[[], SquareOffResult]
    details: dict[str, Any] = field(default_factory=dict)


def square_off_selected(modeladmin, request, jobs: Iterable[SquareOffJob], *, audit_action: str, noun: str) -> None:
    placed, cancelled, untouched = 0, 0, 0
    for job in jobs:
        prefix = f"{job.label} " if job.label else ""
        try:
            result = job.run()
        except AppError as error:
            audit_record(
                action=audit_action,
                actor=request.user,
                target=job.target,
                details={**job.details, "outcome": "failed", "detail": str(error.detail)},
            )
            modeladmin.message_user(request, f"{job.label or job.target}: {error.detail}", level=messages.WARNING)
            continue
        audit_record(
            action=audit_action,
            actor=request.user,
            target=job.target,
            details={
                **job.details,
                "outcome": "failed" if result.failed else "done",
                "placed": [order.pk for order in result.placed],
                "cancelled": [order.pk for order in result.cancelled],
                "failed": result.failed,
            },
        )
        for failure in result.failed:
            label = failure.get("order_id") or failure.get("symbol")
            modeladmin.message_user(request, f"{prefix}{label}: {failure['detail']}", level=messages.WARNING)
        placed += len(result.placed)
        cancelled += len(result.cancelled)
        untouched += int(not result.placed and not result.cancelled and not result.failed)
    if placed or cancelled:
        modeladmin.message_user(
            request,
            f"Square-off: {placed} closing order(s) placed, {cancelled} pending order(s) cancelled.",
            level=messages.SUCCESS,
        )
    if untouched:
        modeladmin.message_user(request, f"{untouched} {noun}(s) had nothing to close or cancel.", level=messages.INFO)
