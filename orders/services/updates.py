"""Broker news applied to our orders: status, terms and fills, and the positions the fills move."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.services import notification_create
from algoterm.api.errors import AppError
from algoterm.realtime import pushes_batched
from brokers.gateway import adapter_for
from brokers.prices import quote_for
from brokers.protocol import BrokerError, BrokerOrder, BrokerOrderStatus, OrderType, Side
from orders.locks import order_lock, position_lock
from orders.models import WORKING_STATUSES, LegRole, Order, OrderEvent, OrderSource, OrderStatus, Position, Trade
from orders.services.transitions import IST, PAISE, _events_save, _notify_rejection, _push_order, _transition
from orders.signals import fill_applied, position_changed, trade_recorded

logger = logging.getLogger(__name__)


STATUS_FROM_BROKER = {
    BrokerOrderStatus.PENDING: OrderStatus.OPEN,
    BrokerOrderStatus.OPEN: OrderStatus.OPEN,
    BrokerOrderStatus.TRIGGER_PENDING: OrderStatus.OPEN,
    BrokerOrderStatus.PARTIALLY_FILLED: OrderStatus.PARTIALLY_FILLED,
    BrokerOrderStatus.FILLED: OrderStatus.FILLED,
    BrokerOrderStatus.CANCELLED: OrderStatus.CANCELLED,
    BrokerOrderStatus.REJECTED: OrderStatus.REJECTED,
    BrokerOrderStatus.EXPIRED: OrderStatus.EXPIRED,
}


# What a fill makes due (the entry's exits, an OCO sibling, exits fitted to the position) places and changes orders,
# which sits above this module: the exits module connects it here when the package loads.
_fill_follow_ups: list[Callable[..., None]] = []


def fill_follow_up_connect(handler: Callable[..., None]) -> None:
    """Run `handler(order_id=...)` after the commit of every recorded fill (connecting again replaces it)."""
    _fill_follow_ups[:] = [handler]


def _fill_follow_up(*, order_id: str) -> None:
    for handler in _fill_follow_ups:
        handler(order_id=order_id)


def order_refresh(*, order: Order, adapter=None, settle_pending: bool = True) -> Order:
    """Ask the broker for the order now (best effort) and apply what it says."""
    if not order.broker_order_id:
        return order
    try:
        broker_order = (adapter or adapter_for(order.account)).order(order.broker_order_id)
    except BrokerError as error:
        logger.info("could not refresh %s from the broker: %s", order.pk, error.detail)
        return order
    return order_apply_update(
        order_id=order.pk, update=broker_order, source=OrderSource.BROKER, settle_pending=settle_pending
    )


def _fill_price_from_trade_book(order: Order, filled: int) -> Decimal | None:
    """The exact price of the fills between what we had recorded and `filled`, from the broker's trade book; None
    when the book cannot be read or does not cover them yet (the cumulative average is used then)."""
    if not order.broker_order_id:
        return None
    try:
        book = adapter_for(order.account).trades()
    except (BrokerError, AppError) as error:
        logger.info("trade book of %s unavailable: %s", order.account_id, error.detail)
        return None
    fills = sorted(
        (trade for trade in book if trade.broker_order_id == order.broker_order_id),
        key=lambda trade: (trade.traded_at is None, trade.traded_at, trade.trade_id),
    )
    if sum(trade.quantity for trade in fills) < filled:
        return None
    value, reached = Decimal("0"), 0
    for trade in fills:
        start, end = reached, reached + trade.quantity
        overlap = min(end, filled) - max(start, order.filled_quantity)
        if overlap > 0:
            value += trade.price * overlap
        reached = end
        if reached >= filled:
            break
    return (value / (filled - order.filled_quantity)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def _fill_price(order: Order, update: BrokerOrder, delta: int) -> Decimal:
    """The price of the newest fill: exact from the trade book when the order filled more than once (the
    cumulative average brokers report is rounded to paise), else from the cumulative average before and after."""
    if order.filled_quantity > 0 or update.filled_quantity < order.quantity:
        exact = _fill_price_from_trade_book(order, order.filled_quantity + delta)
        if exact is not None:
            return exact
    if update.average_price is None:
        return order.price or quote_for(order.symbol).last_price
    before = (order.average_price or Decimal("0")) * order.filled_quantity
    after = update.average_price * update.filled_quantity
    price = ((after - before) / delta).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    return price if price > 0 else update.average_price


@pushes_batched()
def order_apply_update(
    *, order_id: str, update: BrokerOrder, source: str, settle_pending: bool = False, fresh: bool = True
) -> Order:
    """The one way broker news changes an order: a postback, an order socket, a poll or reconciliation.

    Fills are the increase of the broker's cumulative filled quantity, so a replayed or stale update adds nothing.
    A final state never changes. While we wait for our own modify or cancel to land, a working state from the
    broker does not end the wait unless `settle_pending` (reconciliation, or the call that asked). Pushed updates
    (`fresh=False`: postbacks, sockets) may arrive late and out of order, so they never roll back the quantity and
    prices of a modification; what we read from the broker ourselves does.
    """
    with transaction.atomic():
        order = order_lock(order_id=order_id, related=("account", "user"))
        return _order_apply_update_locked(
            order, update=update, source=source, settle_pending=settle_pending, fresh=fresh, changed=False
        )


def _order_apply_update_locked(
    order: Order,
    *,
    update: BrokerOrder,
    source: str,
    settle_pending: bool,
    fresh: bool,
    changed: bool,
    events: list[OrderEvent] | None = None,
) -> Order:
    """`order_apply_update` on an order the caller has locked in its transaction. `changed`: the caller has moved
    the order already (it is saved and pushed here either way then); its `events` are inserted with ours."""
    events = [] if events is None else events
    if order.broker_order_id and update.broker_order_id and order.broker_order_id != update.broker_order_id:
        logger.warning(
            "update for %s names broker order %s, ours is %s",
            order.pk,
            update.broker_order_id,
            order.broker_order_id,
        )
        return _order_changes_save(order, events=events, trade=None) if changed else order
    revived = bool(update.broker_order_id) and _rejected_by_inference(order)
    if not order.broker_order_id and update.broker_order_id:
        order.broker_order_id = update.broker_order_id
    trade = None
    if revived:
        # We settled it as never placed, yet the broker holds it after all: the broker is the truth.
        events.append(
            OrderEvent(
                order=order,
                from_status=order.status,
                to_status=OrderStatus.OPEN,
                source=source,
                message="The broker has this order after all.",
                filled_quantity=order.filled_quantity,
            )
        )
        order.status = OrderStatus.OPEN
        changed = True
    takes_terms = fresh or update.filled_quantity > order.quantity
    if not order.is_final and takes_terms and update.quantity and update.quantity != order.quantity:
        if update.quantity >= max(order.filled_quantity, update.filled_quantity):
            order.quantity = update.quantity
            changed = True
    if not order.is_final and fresh:
        for name in ("price", "trigger_price"):
            value = getattr(update, name)
            if (
                value is not None
                and value > 0
                and getattr(order, name) != value
                and order.order_type != OrderType.MARKET
            ):
                setattr(order, name, value)
                changed = True
    if update.filled_quantity > order.filled_quantity:
        trade = _record_fill(order, update, min(update.filled_quantity, order.quantity))
        changed = True
    new_status = STATUS_FROM_BROKER[update.status]
    if order.filled_quantity >= order.quantity and order.quantity > 0:
        new_status = OrderStatus.FILLED
    waiting = order.status in (OrderStatus.PENDING_MODIFY, OrderStatus.PENDING_CANCEL)
    if waiting and new_status in WORKING_STATUSES and not settle_pending:
        new_status = order.status
    if new_status == OrderStatus.OPEN and order.filled_quantity > 0:
        new_status = OrderStatus.PARTIALLY_FILLED
    if _transition(order, new_status, source=source, message=update.status_message, events=events):
        changed = True
    if not changed:
        return order
    return _order_changes_save(order, events=events, trade=trade)


def _order_changes_save(order: Order, *, events: list[OrderEvent], trade: Trade | None) -> Order:
    """Save a changed order with its events, push it once, and leave what it makes due for after the commit."""
    order.updated_at = timezone.now()
    order.save()
    _events_save(events)
    _push_order(order)
    if order.status == OrderStatus.REJECTED:
        _notify_rejection(order)
    if order.status == OrderStatus.FILLED:
        # Its row commits with the fill (no transaction of its own); the push waits for the commit.
        notification_create(
            user=order.user,
            kind="order_filled",
            title=f"Filled: {order.side} {order.filled_quantity} {order.symbol} @ {order.average_price}",
            data={"order_id": order.pk},
        )
    if _needs_exits(order) or (trade is not None and not _only_grew(order, trade)):
        transaction.on_commit(lambda: _fill_follow_up(order_id=order.pk))
    return order


def _rejected_by_inference(order: Order) -> bool:
    """REJECTED by reconciliation because the broker had no record of it, never by the broker itself."""
    return (
        order.status == OrderStatus.REJECTED
        and not order.broker_order_id
        and order.events.filter(source=OrderSource.RECONCILE, to_status=OrderStatus.REJECTED).exists()
    )


def _only_grew(order: Order, trade: Trade) -> bool:
    """The fill of an entry that only added to its position (flat or on its side before): no exit can now close more
    than is held and no sibling waits on it, so it makes nothing due beyond its own exits."""
    position = getattr(trade, "position_after", None)
    if order.role != LegRole.ENTRY or position is None:
        return False
    signed = trade.quantity if trade.side == Side.BUY else -trade.quantity
    before = position.quantity - signed
    return before == 0 or (before > 0) == (signed > 0)


def _record_fill(order: Order, update: BrokerOrder, filled: int) -> Trade:
    delta = filled - order.filled_quantity
    price = _fill_price(order, update, delta)
    traded_at = update.updated_at or timezone.now()
    trade = Trade.objects.create(
        order=order,
        user_id=order.user_id,
        account_id=order.account_id,
        symbol=order.symbol,
        side=order.side,
        product=order.product,
        quantity=delta,
        price=price,
        cumulative_quantity=filled,
        traded_at=traded_at,
    )
    order.filled_quantity = filled
    order.average_price = update.average_price or price.quantize(PAISE)
    position = position_apply_fill(trade=trade)
    trade.position_after = position
    trade_recorded.send(sender=Trade, trade=trade)
    _fill_announce(user_id=order.user_id, order_id=order.pk, account_id=order.account_id)
    position_changed.send(sender=Position, position=position)
    return trade


def _fill_announce(*, user_id: str, order_id: str, account_id: str) -> None:
    """A fill changes the user's MTM (realized PnL, a new position) and the account's funds: said once it is
    committed (the risk engine looks again). A listener's error is logged by `send_robust` and never fails the fill."""
    transaction.on_commit(
        lambda: fill_applied.send_robust(sender=Trade, user_id=user_id, order_id=order_id, account_id=account_id)
    )


def _needs_exits(order: Order) -> bool:
    return (
        order.role == LegRole.ENTRY
        and order.exits_placed_at is None
        and (order.target is not None or order.stop_loss is not None)
        and order.filled_quantity > 0
        and order.is_final
    )


def position_apply_fill(*, trade: Trade) -> Position:
    """Apply one fill to the account's position in the instrument, under the position's row lock."""
    today = timezone.localtime(trade.traded_at, IST).date()
    try:
        position = position_lock(account_id=trade.account_id, symbol=trade.symbol, product=trade.product)
    except Position.DoesNotExist:
        try:
            with transaction.atomic():
                # The row we insert is ours, locked, until the commit.
                position = Position.objects.create(
                    account_id=trade.account_id,
                    symbol=trade.symbol,
                    product=trade.product,
                    user_id=trade.user_id,
                    trading_day=today,
                )
        except IntegrityError:  # a concurrent first fill made it: wait for its lock
            position = position_lock(account_id=trade.account_id, symbol=trade.symbol, product=trade.product)
    if today > position.trading_day:
        position.trading_day = today
        position.day_buy_quantity = position.day_sell_quantity = 0
        position.day_buy_value = position.day_sell_value = position.day_realized_pnl = Decimal("0")
    # A fill of an earlier day learnt of late (reconciliation) moves the position but not today's day fields.
    of_the_day = today == position.trading_day
    quantity, price = trade.quantity, trade.price
    signed = quantity if trade.side == Side.BUY else -quantity
    if of_the_day and trade.side == Side.BUY:
        position.day_buy_quantity += quantity
        position.day_buy_value += (price * quantity).quantize(PAISE)
    elif of_the_day:
        position.day_sell_quantity += quantity
        position.day_sell_value += (price * quantity).quantize(PAISE)
    held = position.quantity
    if held == 0 or (held > 0) == (signed > 0):
        position.average_price = (abs(held) * position.average_price + quantity * price) / (abs(held) + quantity)
        position.average_price = position.average_price.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
        position.quantity = held + signed
    else:
        closed = min(abs(held), quantity)
        direction = 1 if held > 0 else -1
        realized = (closed * (price - position.average_price) * direction).quantize(PAISE, rounding=ROUND_HALF_UP)
        position.realized_pnl += realized
        if of_the_day:
            position.day_realized_pnl += realized
        position.quantity = held + signed
        if position.quantity == 0:
            position.average_price = Decimal("0")
        elif (position.quantity > 0) != (held > 0):
            position.average_price = price
    position.updated_at = timezone.now()
    position.save()
    return position
