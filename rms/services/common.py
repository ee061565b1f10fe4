"""What every part of the RMS shares: the reasons it gives, the state each breach leaves, the trading day and the
user's state row for it."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.utils import timezone

from algoterm.locking import row_locked
from algoterm.realtime import ops_publish
from orders.hooks import EXIT_EXCEEDS_POSITION
from rms.models import RmsEvent, RmsState, TradingState

IST = ZoneInfo("Asia/Kolkata")
PAISE = Decimal("0.01")


class Reason:
    PLATFORM_HALTED = "PLATFORM_HALTED"  # an operator stopped trading platform-wide (algoterm.system)
    TRADING_HALTED = "TRADING_HALTED"
    OUTSIDE_TRADING_WINDOW = "OUTSIDE_TRADING_WINDOW"
    MAX_LOTS_EXCEEDED = "MAX_LOTS_EXCEEDED"
    MAX_ORDER_VALUE_EXCEEDED = "MAX_ORDER_VALUE_EXCEEDED"
    MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
    MAX_ORDERS_PER_DAY = "MAX_ORDERS_PER_DAY"
    DAILY_LOSS_LIMIT_HIT = "DAILY_LOSS_LIMIT_HIT"
    REDUCE_ONLY = "REDUCE_ONLY"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    PRODUCT_NOT_ALLOWED = "PRODUCT_NOT_ALLOWED"
    SEGMENT_NOT_ALLOWED = "SEGMENT_NOT_ALLOWED"
    USER_DEACTIVATED = "USER_DEACTIVATED"  # the owner's account was deactivated
    ROLE_CANNOT_TRADE = "ROLE_CANNOT_TRADE"  # the owner's role is view-only
    EXIT_EXCEEDS_POSITION = EXIT_EXCEEDS_POSITION  # the order pipeline's own: an exit grown past its position
    # breaches
    DAILY_PROFIT_TARGET_HIT = "DAILY_PROFIT_TARGET_HIT"
    PROFIT_LOCK_HIT = "PROFIT_LOCK_HIT"
    AUTO_SQUARE_OFF = "AUTO_SQUARE_OFF"
    OPERATOR_HALT = "OPERATOR_HALT"


# What each breach leaves the user able to do for the rest of the day.
STATE_AFTER = {
    Reason.DAILY_LOSS_LIMIT_HIT: TradingState.HALTED,
    Reason.DAILY_PROFIT_TARGET_HIT: TradingState.REDUCING,
    Reason.PROFIT_LOCK_HIT: TradingState.REDUCING,
    Reason.OPERATOR_HALT: TradingState.HALTED,
}
SEVERITY = {TradingState.NORMAL: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


def trading_day(at: datetime | None = None) -> date:
    return timezone.localtime(at or timezone.now(), IST).date()


def state_today(*, user_id: str, day: date | None = None, lock: bool = False) -> RmsState:
    day = day or trading_day()
    state, _ = RmsState.objects.get_or_create(user_id=user_id, trading_day=day)
    if lock:
        state = row_locked(RmsState.objects.all(), pk=state.pk)
    return state


# What the operators' /ws/ops `risk` topic carries, live and in its snapshot: the risk engine acting on a user.
OPS_EVENT_KINDS = (RmsEvent.Kind.BREACH, RmsEvent.Kind.SQUARE_OFF, RmsEvent.Kind.AUTO_SQUARE_OFF)


def rms_event_ops_view(event: RmsEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "kind": event.kind,
        "user_id": event.user_id,
        "reason": event.reason,
        "mtm": event.mtm,
        "details": event.details,
        "actor": event.actor_id,
        "created_at": event.created_at,
    }


def rms_event_record(**fields: Any) -> RmsEvent:
    """Every breach and square-off is recorded here, and told to the operators (`risk_event` on /ws/ops `risk`)
    after commit."""
    event = RmsEvent.objects.create(**fields)
    if event.kind in OPS_EVENT_KINDS:
        ops_publish(topic="risk", message_type="risk_event", payload=rms_event_ops_view(event))
    return event
