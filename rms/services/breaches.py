"""Breach handling: a breach is recorded and the user squared off once per user and day under the state row's lock;
a square-off a dead worker left half-done is resumed by the next sweep. Also the daily auto square-off of MIS."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.selectors import user_by_id
from accounts.services import audit_record, notification_create
from algoterm import realtime
from orders.models import OrderSource
from orders.services import positions_square_off
from rms.models import RmsEvent, RmsState, TradingState
from rms.services.common import SEVERITY, STATE_AFTER, Reason, rms_event_record, state_today, trading_day

# Longer than a square-off takes; a worker that dies holding the claim delays the resumption this long at most.
SQUARE_OFF_CLAIM_SECONDS = 120


def breach_handle(
    *, user_id: str, reason: str, mtm: Decimal, day: date | None = None, actor: User | None = None
) -> bool:
    """Record the breach and square the user off, once: the state row's lock makes overlapping sweeps agree on
    one winner; False when this breach (or a stronger one) was already handled today."""
    day = day or trading_day()
    new_status = STATE_AFTER[reason]
    with transaction.atomic():
        state = state_today(user_id=user_id, day=day, lock=True)
        if SEVERITY[state.status] >= SEVERITY[new_status]:
            return False
        state.status, state.reason = new_status, reason
        state.breach_mtm, state.breached_at = mtm, timezone.now()
        state.square_off_pending, state.square_off_done_at = True, None
        state.updated_at = timezone.now()
        state.save()
        event = rms_event_record(
            user_id=user_id,
            kind=RmsEvent.Kind.BREACH,
            reason=reason,
            mtm=mtm,
            actor=actor,
            details={"state": new_status},
        )
        audit_record(
            action="rms.breach",
            actor=actor,
            target_type="user",
            target_id=user_id,
            details={"reason": reason, "mtm": str(mtm), "state": new_status},
        )
        user = _user(user_id)
        notification_create(
            user=user,
            kind="rms_breach",
            title=f"Risk limit hit: {reason.replace('_', ' ').lower()}",
            body=f"MTM {mtm}. Pending orders are being cancelled and positions squared off; "
            f"{'only exits are allowed' if new_status == TradingState.REDUCING else 'trading is halted'} today.",
            level=Notification.Level.WARNING,
            data={"reason": reason, "state": new_status, "event_id": event.pk},
        )
        realtime.push_to_user(
            user_id=user_id,
            message_type="rms_alert",
            payload={"kind": "breach", "reason": reason, "state": new_status, "mtm": mtm, "event_id": event.pk},
        )
    breach_square_off(user_id=user_id, day=day)
    return True


def breach_square_off(*, user_id: str, day: date | None = None) -> None:
    """Cancel and square off everything of a breached user (idempotent), then mark the breach settled.

    One worker at a time: a sweep or tick evaluation that finds it running elsewhere leaves it to that worker, and
    one that arrives after it finished finds nothing pending. A worker that dies leaves the flag set and its claim
    expires, so a later sweep finishes the job."""
    day = day or trading_day()
    claim = f"rms:breach-square-off:{user_id}"
    if not cache.add(claim, True, timeout=SQUARE_OFF_CLAIM_SECONDS):
        return
    try:
        if not RmsState.objects.filter(user_id=user_id, trading_day=day, square_off_pending=True).exists():
            return
        result = positions_square_off(user=_user(user_id), source=OrderSource.RMS)
        with transaction.atomic():
            state = state_today(user_id=user_id, day=day, lock=True)
            if not result.failed:
                state.square_off_pending = False
                state.square_off_done_at = timezone.now()
                state.save()
            rms_event_record(
                user_id=user_id,
                kind=RmsEvent.Kind.SQUARE_OFF,
                reason=state.reason,
                details={
                    "placed": [o.pk for o in result.placed],
                    "cancelled": [o.pk for o in result.cancelled],
                    "failed": result.failed,
                },
            )
    finally:
        cache.delete(claim)


def auto_square_off(*, user_id: str, mtm: Decimal, day: date) -> None:
    """Close the user's intraday (MIS) positions at their auto square-off time, once a day."""
    with transaction.atomic():
        state = state_today(user_id=user_id, day=day, lock=True)
        if state.auto_square_off_done_at is not None:
            return
        state.auto_square_off_done_at = timezone.now()
        state.save()
    try:
        result = positions_square_off(user=_user(user_id), product="MIS", source=OrderSource.RMS)
    except Exception:  # not run at all (the user's own square-off held the lock): the next sweep tries again
        RmsState.objects.filter(user_id=user_id, trading_day=day).update(auto_square_off_done_at=None)
        raise
    rms_event_record(
        user_id=user_id,
        kind=RmsEvent.Kind.AUTO_SQUARE_OFF,
        reason=Reason.AUTO_SQUARE_OFF,
        mtm=mtm,
        details={"placed": [o.pk for o in result.placed], "failed": result.failed},
    )
    realtime.push_to_user(user_id=user_id, message_type="rms_alert", payload={"kind": "auto_square_off", "mtm": mtm})
    if result.failed:
        with transaction.atomic():  # let the next sweep try what failed
            RmsState.objects.filter(user_id=user_id, trading_day=day).update(auto_square_off_done_at=None)


def _user(user_id: str) -> User:
    user = user_by_id(user_id=user_id)
    if user is None:
        raise User.DoesNotExist(f"No user {user_id}.")
    return user
