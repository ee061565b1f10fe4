"""Halting and resuming users from the operators' console: one implementation for every admin page that offers it
(users, daily risk states), each calling the RMS services and reporting through the admin's messages."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib import messages

from accounts.models import User
from accounts.services import audit_record
from algoterm.api.errors import AppError
from rms import services
from rms.models import RmsState, TradingState


def halt_selected(modeladmin, request, users: Iterable[User], *, audit_action: str = "") -> None:
    """Halt each user for today (pending orders cancelled, positions squared off); `audit_action` adds the
    operator's own audit row beside the RMS's."""
    halted, already, unsettled = 0, 0, []
    for user in users:
        try:
            done = services.user_halt(actor=request.user, user=user)
        except AppError as error:
            if audit_action:
                audit_record(
                    action=audit_action,
                    actor=request.user,
                    target=user,
                    details={"outcome": "failed", "detail": str(error.detail)},
                )
            modeladmin.message_user(request, f"{user.email}: {error.detail}", level=messages.WARNING)
            continue
        if audit_action:
            audit_record(
                action=audit_action,
                actor=request.user,
                target=user,
                details={"outcome": "done" if done else "already halted"},
            )
        halted += int(done)
        already += int(not done)
        if RmsState.objects.filter(user=user, trading_day=services.trading_day(), square_off_pending=True).exists():
            unsettled.append(user.email)
    if halted:
        modeladmin.message_user(
            request,
            f"{halted} user(s) halted for today: pending orders cancelled, positions squared off.",
            level=messages.SUCCESS,
        )
    if already:
        modeladmin.message_user(request, f"{already} user(s) were already halted today.", level=messages.INFO)
    for email in unsettled:
        modeladmin.message_user(
            request,
            f"{email}: the square-off did not complete; the next sweep retries it (see the RMS events).",
            level=messages.WARNING,
        )


def resume_selected(modeladmin, request, users: Iterable[User], *, audit_action: str = "") -> None:
    """Let each halted or reducing user trade again today."""
    resumed, normal = [], 0
    for user in users:
        today = RmsState.objects.filter(user=user, trading_day=services.trading_day()).first()
        previous = today.status if today else TradingState.NORMAL
        if previous == TradingState.NORMAL:
            normal += 1
            continue
        try:
            services.user_resume(actor=request.user, user=user)
        except AppError as error:
            modeladmin.message_user(request, f"{user.email}: {error.detail}", level=messages.WARNING)
            continue
        if audit_action:
            audit_record(action=audit_action, actor=request.user, target=user, details={"from": previous})
        resumed.append(f"{user.email} (was {previous})")
    if resumed:
        modeladmin.message_user(
            request, f"{len(resumed)} user(s) may trade again today: {', '.join(resumed)}.", level=messages.SUCCESS
        )
    if normal:
        modeladmin.message_user(request, f"{normal} user(s) were not halted or reducing today.", level=messages.INFO)
