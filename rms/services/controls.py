"""Manual controls: an operator's (or the RMS route's) square-off, halt and resume of a user."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_record
from algoterm import realtime
from orders.models import OrderSource
from orders.services import SquareOffResult, positions_square_off
from rms.models import RmsEvent, RmsState, TradingState
from rms.services.breaches import breach_handle
from rms.services.common import Reason, rms_event_record, state_today
from rms.services.monitor import user_mtm


def user_square_off(*, actor: User | None, user: User, account_id: str | None = None) -> SquareOffResult:
    """The RMS route's manual square-off: everything (or one account), through the order pipeline as `rms`."""
    result = positions_square_off(user=user, account_id=account_id, source=OrderSource.RMS)
    rms_event_record(
        user=user,
        kind=RmsEvent.Kind.SQUARE_OFF,
        reason="MANUAL",
        actor=actor,
        details={"account_id": account_id, "placed": [o.pk for o in result.placed], "failed": result.failed},
    )
    return result


def user_halt(*, actor: User, user: User, reason: str = Reason.OPERATOR_HALT) -> bool:
    """An operator halts a user for the day: pending orders cancelled, positions squared off."""
    return breach_handle(user_id=user.pk, reason=reason, mtm=user_mtm(user=user), actor=actor)


@transaction.atomic
def user_resume(*, actor: User, user: User) -> RmsState:
    """An operator resets today's state to NORMAL. The day's MTM rules start afresh from the MTM now (otherwise
    a loss already realized would breach again at the next sweep), and the profit lock with them."""
    state = state_today(user_id=user.pk, lock=True)
    previous = state.status
    state.status, state.reason, state.square_off_pending = TradingState.NORMAL, "", False
    state.mtm_baseline = user_mtm(user=user, day=state.trading_day)
    state.locked_profit = None
    state.updated_at = timezone.now()
    state.save()
    RmsEvent.objects.create(
        user=user,
        kind=RmsEvent.Kind.RESUME,
        actor=actor,
        mtm=state.mtm_baseline,
        details={"from": previous, "mtm_baseline": str(state.mtm_baseline)},
    )
    audit_record(action="rms.resume", actor=actor, target=user, details={"from": previous})
    realtime.push_to_user(user_id=user.pk, message_type="rms_alert", payload={"kind": "resume", "state": "NORMAL"})
    return state
