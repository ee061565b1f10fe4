"""A filled entry's target and stop-loss legs: placing them, OCO between them, fitting them to the position,
trailing the stop."""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from algoterm.api.errors import InvalidState, ValidationFailed
from algoterm.tasking import task_send_on_commit
from brokers.models import AccountStatus
from brokers.prices import quote_for
from brokers.protocol import BrokerError, OrderType, Side
from marketdata.instruments import instrument_get
from orders.locks import order_lock
from orders.models import LIVE_STATUSES, WORKING_STATUSES, LegRole, Order, OrderEvent, OrderSource, OrderStatus
from orders.services.exposure import (
    _exit_cover,
    _exit_groups_by_side,
    _exit_room,
    _held_from,
    _position_quantity,
)
from orders.services.modify_cancel import order_cancel, order_modify
from orders.services.placement import order_submit
from orders.services.transitions import EXIT_ROLES, PAISE, _events_save, _transition
from orders.services.updates import _needs_exits, fill_follow_up_connect

logger = logging.getLogger(__name__)


def order_fill_follow_up(*, order_id: str) -> None:
    """What a fill makes due, in the flow that recorded it: a filled entry's target and stop-loss go out now; an
    exit leg's fill shrinks or cancels its sibling; exits that would now close more than the position holds are
    shrunk or cancelled. Broker trouble here is logged and left to the queued task and to reconciliation."""
    order = Order.objects.get(pk=order_id)
    try:
        if order.role in EXIT_ROLES and order.parent_id:
            order_oco_settle(order_id=order.pk)
        exits_fit_position(account_id=order.account_id, symbol=order.symbol, product=order.product)
        if _needs_exits(order):
            order_exits_place(order_id=order.pk)
    except Exception:
        logger.exception("follow-up of the fill of %s failed; queued to retry", order_id)
        task_send_on_commit(
            name="orders.tasks.follow_up_fill", args=(order_id,), countdown=settings.ORDER_RECONCILE_DELAY_SECONDS
        )


def exits_fit_position(*, account_id: str, symbol: str, product: str) -> int:
    """Shrink or cancel working exit legs that would close more than the position now holds (closed by hand, by a
    square-off, the RMS or a strategy's exit): a stop left working on a flat position would open a naked one.
    The oldest entries keep their cover; returns how many legs were changed."""
    changed = 0
    groups_by_side = _exit_groups_by_side(account_id=account_id, symbol=symbol, product=product)
    if not any(groups_by_side.values()):
        return 0
    quantity = _position_quantity(account_id=account_id, symbol=symbol, product=product)
    for side in (Side.SELL, Side.BUY):
        room = _held_from(quantity, closing_side=side)
        for group in groups_by_side[side]:
            keep = min(_exit_cover(group), room)
            room -= keep
            for leg in group:
                if leg.pending_quantity <= keep:
                    continue
                try:
                    if keep == 0:
                        order_cancel(user=None, order=leg, source=OrderSource.SYSTEM)
                    else:
                        order_modify(
                            user=None, order=leg, quantity=leg.filled_quantity + keep, source=OrderSource.SYSTEM
                        )
                    changed += 1
                except (BrokerError, InvalidState, ValidationFailed) as error:
                    logger.warning("fitting exit %s to its position: %s", leg.pk, error.detail)
    return changed


def order_exits_place(*, order_id: str) -> list[Order]:
    """Place a filled entry's target and stop-loss legs, once: for the filled quantity, or for what is still held
    when part of the position was closed meanwhile (none when it is flat). Exits only ever reduce a position, so
    they never need margin."""
    with transaction.atomic():
        entry = order_lock(order_id=order_id, related=("user", "account"))
        if not _needs_exits(entry):
            return []
        if entry.account.status != AccountStatus.CONNECTED:
            # Sent now they would only be rejected, and lost: they stay owed until reconciliation after the login.
            logger.warning("exits of %s wait for a login to %s", entry.pk, entry.account_id)
            return []
        entry.exits_placed_at = timezone.now()
        entry.save(update_fields=["exits_placed_at"])
        exit_side = Side.SELL if entry.side == Side.BUY else Side.BUY
        quantity = min(
            entry.filled_quantity,
            _exit_room(
                account_id=entry.account_id,
                symbol=entry.symbol,
                product=entry.product,
                side=exit_side,
                exclude_parent=entry.pk,
            ),
        )
        if quantity <= 0:
            OrderEvent.objects.create(
                order=entry,
                from_status=entry.status,
                to_status=entry.status,
                source=OrderSource.SYSTEM,
                message="No target or stop-loss placed: the position was already closed.",
                filled_quantity=entry.filled_quantity,
            )
            return []
        legs = []
        if entry.target is not None:
            legs.append((LegRole.TARGET, OrderType.LIMIT, entry.target, None))
        if entry.stop_loss is not None:
            legs.append((LegRole.STOP_LOSS, OrderType.SL_M, None, entry.stop_loss))
        created = []
        events: list[OrderEvent] = []
        for role, order_type, price, trigger in legs:
            exit_order = Order(
                user=entry.user,
                account=entry.account,
                symbol=entry.symbol,
                side=exit_side,
                quantity=quantity,
                order_type=order_type,
                product=entry.product,
                price=price,
                trigger_price=trigger,
                source=OrderSource.SYSTEM,
                role=role,
                parent=entry,
                strategy_ref=entry.strategy_ref,
                status=OrderStatus.PENDING,
            )
            events.append(
                OrderEvent(
                    order=exit_order,
                    to_status=OrderStatus.PENDING,
                    source=OrderSource.SYSTEM,
                    message=f"{role.label} of {entry.pk}",
                )
            )
            _transition(exit_order, OrderStatus.SUBMITTING, source=OrderSource.SYSTEM, events=events)
            created.append(exit_order)
        # Both legs and their events in two INSERTs, committed as SUBMITTING before either is sent.
        Order.objects.bulk_create(created)
        _events_save(events)
    placed = []
    for exit_order in created:
        try:
            placed.append(order_submit(order=exit_order))
        except BrokerError as error:
            logger.warning("exit %s of %s failed: %s", exit_order.pk, order_id, error.detail)
    # The position may have been closed while the legs were on their way (a square-off's fill does not see legs
    # still being sent): fit them again now that they are at the broker.
    exits_fit_position(account_id=entry.account_id, symbol=entry.symbol, product=entry.product)
    return placed


def order_oco_settle(*, order_id: str) -> None:
    """An exit leg filled (partly): shrink its sibling to what is left, or cancel it when nothing is."""
    leg = Order.objects.select_related("account").get(pk=order_id)
    if leg.parent_id is None or leg.role not in EXIT_ROLES:
        return
    sibling = (
        Order.objects.filter(parent_id=leg.parent_id, role__in=EXIT_ROLES, status__in=LIVE_STATUSES)
        .exclude(pk=leg.pk)
        .first()
    )
    if sibling is None:
        return
    left = leg.quantity - leg.filled_quantity
    try:
        if leg.status == OrderStatus.FILLED or left <= 0:
            order_cancel(user=None, order=sibling, source=OrderSource.SYSTEM)
        elif sibling.quantity - sibling.filled_quantity > left:
            order_modify(user=None, order=sibling, quantity=sibling.filled_quantity + left, source=OrderSource.SYSTEM)
    except (BrokerError, InvalidState, ValidationFailed) as error:
        logger.warning("OCO settle of %s for %s: %s", sibling.pk, leg.pk, error.detail)


def stops_trail() -> int:
    """Raise (or, for shorts, lower) working stop-loss legs whose entry trails, as the price moves in favour."""
    moved = 0
    legs = Order.objects.filter(
        role=LegRole.STOP_LOSS, status__in=WORKING_STATUSES, parent__trailing_stop__isnull=False
    ).select_related("parent", "account")
    for leg in legs:
        trail = leg.parent.trailing_stop
        last = quote_for(leg.symbol).last_price
        instrument = instrument_get(symbol=leg.symbol)
        tick = Decimal(instrument.tick_size) if instrument else Decimal("0.05")
        if leg.side == Side.SELL:  # protecting a long
            candidate = ((last - trail) / tick).to_integral_value(rounding="ROUND_FLOOR") * tick
            better = candidate > (leg.trigger_price or Decimal("0"))
        else:
            candidate = ((last + trail) / tick).to_integral_value(rounding="ROUND_CEILING") * tick
            better = leg.trigger_price is None or candidate < leg.trigger_price
        if not better or candidate <= 0:
            continue
        try:
            order_modify(user=None, order=leg, trigger_price=candidate.quantize(PAISE), source=OrderSource.SYSTEM)
            moved += 1
        except (BrokerError, InvalidState, ValidationFailed) as error:
            logger.info("trailing %s: %s", leg.pk, error.detail)
    return moved


fill_follow_up_connect(order_fill_follow_up)
