"""Moving an order from one status to the next, and what each move tells the user; the roles and units the whole
package shares."""

from __future__ import annotations

import logging
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.utils import timezone

from accounts.models import Notification
from accounts.services import notification_create
from orders.models import LegRole, Order, OrderEvent, can_transition
from orders.signals import order_changed

logger = logging.getLogger(__name__)


IST = ZoneInfo("Asia/Kolkata")
PAISE = Decimal("0.01")
EXIT_ROLES = (LegRole.TARGET, LegRole.STOP_LOSS)
# Orders that protect a position are submitted by reconciliation when a crash kept them from the broker;
# a user's own entry is not, because the market has moved since they asked.
PROTECTIVE_ROLES = (LegRole.TARGET, LegRole.STOP_LOSS, LegRole.SQUARE_OFF)


def _transition(
    order: Order, new_status: str, *, source: str, message: str = "", events: list[OrderEvent] | None = None
) -> bool:
    """Move `order` (locked by the caller) to `new_status` with an event; False when the move is not legal. With
    `events`, the event is appended there for the caller to insert with the others (`_events_save`)."""
    if order.status == new_status:
        return False
    if order.pk and not can_transition(order.status, new_status):
        logger.info("ignored transition %s -> %s of %s (%s)", order.status, new_status, order.pk, source)
        return False
    event = OrderEvent(
        order=order,
        from_status=order.status if order.pk else "",
        to_status=new_status,
        source=source,
        message=message[:300],
        filled_quantity=order.filled_quantity,
    )
    if events is None:
        event.save(force_insert=True)
    else:
        events.append(event)
    order.status = new_status
    if message:
        order.status_message = message[:300]
    order.updated_at = timezone.now()
    return True


def _events_save(events: list[OrderEvent]) -> None:
    """Insert the events gathered by `_transition(..., events=...)`, in their order, in one statement."""
    if events:
        OrderEvent.objects.bulk_create(events)
        events.clear()


def _push_order(order: Order) -> None:
    """Tell the user of the order's change (the push goes out on commit, rendered by `orders.presenters`)."""
    order_changed.send(sender=Order, order=order)


def _notify_rejection(order: Order) -> None:
    notification_create(
        user=order.user,
        kind="order_rejected",
        title=f"Order rejected: {order.side} {order.quantity} {order.symbol}",
        body=order.status_message,
        level=Notification.Level.WARNING,
        data={"order_id": order.pk},
    )
