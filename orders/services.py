"""Every write of the order pipeline: place, modify, cancel, apply broker updates, reconcile, exits, square-off.

Placing is deliberately not one transaction: the order is committed as SUBMITTING *before* the broker is called, so
a crash or a lost answer leaves a row that reconciliation settles from the broker's order book by our tag. Nothing
here ever sends an order to a broker twice.

Row locks, so concurrent placing, fills, exits, reconciliation and the RMS never deadlock: a transaction locks at
most one order row, then that order's position row, in that order, and nothing else of ours: `of=("self",)` on every
`select_for_update` with a join, so the joined account and user rows are never locked. Broker calls (and with them
the paper exchange's own account locks) happen outside these transactions, except reads of the broker's books.
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.services import audit_record, notification_create
from algoterm import realtime
from algoterm.api.errors import AppError, ErrorCode, InvalidState, NotFound, RiskRejected, ValidationFailed
from algoterm.config import freeze_quantity
from algoterm.failpoints import failpoint
from billing.services import require_live_trading
from brokers.adapters.base import (
    BrokerError,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerRateLimited,
    InvalidInput,
    ModifyRequest,
    OrderRejected,
    OrderRequest,
    OrderType,
    Product,
    SessionExpired,
    Side,
    Validity,
)
from brokers.gateway import adapter_for, require_connected
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.prices import quote_for
from brokers.protection import CircuitOpen
from brokers.selectors import broker_account_get
from marketdata.instruments import instrument_get
from marketdata.models import InstrumentType
from orders.models import (
    FINAL_STATUSES,
    LIVE_STATUSES,
    WORKING_STATUSES,
    IdempotencyRecord,
    LegRole,
    Order,
    OrderEvent,
    OrderSource,
    OrderStatus,
    Position,
    Trade,
    can_transition,
)
from rms.services import OrderIntent, Reason, check_order

logger = logging.getLogger(__name__)
IST = ZoneInfo("Asia/Kolkata")
PAISE = Decimal("0.01")

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
EXIT_ROLES = (LegRole.TARGET, LegRole.STOP_LOSS)
# Orders that protect a position are submitted by reconciliation when a crash kept them from the broker;
# a user's own entry is not, because the market has moved since they asked.
PROTECTIVE_ROLES = (LegRole.TARGET, LegRole.STOP_LOSS, LegRole.SQUARE_OFF)


# --- validation --------------------------------------------------------------------------------------------------


@dataclass
class OrderSpec:
    """One order as asked for, before it is validated."""

    account_id: str
    symbol: str
    side: str
    quantity: int
    order_type: str
    product: str
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: str = Validity.DAY
    target: Decimal | None = None
    stop_loss: Decimal | None = None
    trailing_stop: Decimal | None = None
    tag: str = ""


@dataclass
class ValidatedOrder:
    spec: OrderSpec
    account: BrokerAccount
    lot_size: int
    tick_size: Decimal
    reference_price: Decimal
    errors: dict[str, list[str]] = field(default_factory=dict)


def _add(errors: dict[str, list[str]], name: str, message: str) -> None:
    errors.setdefault(name, []).append(message)


def _on_tick(value: Decimal, tick: Decimal) -> bool:
    return (value / tick) == (value / tick).to_integral_value()


def _check_prices(
    errors: dict[str, list[str]],
    *,
    side: str,
    order_type: str,
    price: Decimal | None,
    trigger_price: Decimal | None,
    tick_size: Decimal,
) -> None:
    """The price rules of each order type, and the tick size."""
    if order_type == OrderType.MARKET:
        if price is not None:
            _add(errors, "price", "Market orders take no price.")
        if trigger_price is not None:
            _add(errors, "trigger_price", "Market orders take no trigger price.")
    elif order_type == OrderType.LIMIT:
        if price is None:
            _add(errors, "price", "Limit orders need a price.")
        if trigger_price is not None:
            _add(errors, "trigger_price", "Limit orders take no trigger price; use SL for a stop-limit.")
    elif order_type == OrderType.SL:
        if price is None:
            _add(errors, "price", "SL orders need a limit price.")
        if trigger_price is None:
            _add(errors, "trigger_price", "SL orders need a trigger price.")
        if price is not None and trigger_price is not None:
            if side == Side.BUY and trigger_price > price:
                _add(errors, "trigger_price", "A buy stop's trigger must be at or below its limit price.")
            if side == Side.SELL and trigger_price < price:
                _add(errors, "trigger_price", "A sell stop's trigger must be at or above its limit price.")
    elif order_type == OrderType.SL_M:
        if price is not None:
            _add(errors, "price", "SL-M orders take no limit price.")
        if trigger_price is None:
            _add(errors, "trigger_price", "SL-M orders need a trigger price.")
    for name, value in (("price", price), ("trigger_price", trigger_price)):
        if value is None:
            continue
        if value <= 0:
            _add(errors, name, "Must be positive.")
        elif not _on_tick(value, tick_size):
            _add(errors, name, f"Must be a multiple of the tick size {tick_size.normalize()}.")


def order_validate(*, user: User, spec: OrderSpec, prefix: str = "") -> ValidatedOrder:
    """Everything we can know before the broker sees the order; 400 with every problem at once."""
    errors: dict[str, list[str]] = {}
    account = broker_account_get(user=user, account_id=spec.account_id)
    instrument = instrument_get(symbol=spec.symbol)
    lot_size, tick_size, freeze = 1, Decimal("0.05"), None
    if instrument is None:
        _add(errors, "symbol", f"Unknown instrument {spec.symbol}.")
    elif not instrument.is_active or instrument.instrument_type == InstrumentType.INDEX:
        _add(errors, "symbol", f"{spec.symbol} does not trade.")
    elif instrument.expiry is not None and instrument.expiry < timezone.localdate(timezone=IST):
        _add(errors, "symbol", f"{spec.symbol} expired on {instrument.expiry.isoformat()}.")
    else:
        lot_size, tick_size = instrument.lot_size, Decimal(instrument.tick_size)
        if instrument.instrument_type != InstrumentType.EQ:
            freeze = freeze_quantity(underlying=instrument.underlying)
        if spec.product == Product.CNC and instrument.instrument_type != InstrumentType.EQ:
            _add(errors, "product", "CNC (delivery) is for equity; use NRML or MIS for derivatives.")
        if spec.product == Product.NRML and instrument.instrument_type == InstrumentType.EQ:
            _add(errors, "product", "NRML is for derivatives; use CNC or MIS for equity.")
    if spec.quantity <= 0:
        _add(errors, "quantity", "Must be positive.")
    elif spec.quantity % lot_size:
        _add(errors, "quantity", f"Must be a multiple of the lot size {lot_size}.")
    elif freeze is not None and spec.quantity > freeze:
        _add(
            errors,
            "quantity",
            f"Above the exchange's freeze quantity of {freeze} units per order for {instrument.underlying}; "
            "split it into orders of at most that many.",
        )
    _check_prices(
        errors,
        side=spec.side,
        order_type=spec.order_type,
        price=spec.price,
        trigger_price=spec.trigger_price,
        tick_size=tick_size,
    )
    if spec.validity == Validity.IOC and spec.order_type in (OrderType.SL, OrderType.SL_M):
        _add(errors, "validity", "Stop orders cannot be IOC.")
    reference = spec.price or spec.trigger_price or quote_for(spec.symbol).last_price
    _check_exits(errors, spec=spec, reference=reference, tick_size=tick_size)
    if errors:
        raise ValidationFailed(
            "The order is invalid.", errors={f"{prefix}{key}": value for key, value in errors.items()}
        )
    return ValidatedOrder(spec=spec, account=account, lot_size=lot_size, tick_size=tick_size, reference_price=reference)


def _check_exits(errors: dict[str, list[str]], *, spec: OrderSpec, reference: Decimal, tick_size: Decimal) -> None:
    for name in ("target", "stop_loss", "trailing_stop"):
        value = getattr(spec, name)
        if value is None:
            continue
        if value <= 0:
            _add(errors, name, "Must be positive.")
        elif not _on_tick(value, tick_size):
            _add(errors, name, f"Must be a multiple of the tick size {tick_size.normalize()}.")
    buying = spec.side == Side.BUY
    if spec.target is not None and (spec.target <= reference if buying else spec.target >= reference):
        _add(
            errors,
            "target",
            f"A {spec.side.lower()} order's target must be {'above' if buying else 'below'} its price ({reference}).",
        )
    if spec.stop_loss is not None and (spec.stop_loss >= reference if buying else spec.stop_loss <= reference):
        _add(
            errors,
            "stop_loss",
            f"A {spec.side.lower()} order's stop-loss must be {'below' if buying else 'above'}"
            f" its price ({reference}).",
        )
    if spec.trailing_stop is not None and spec.stop_loss is None:
        _add(errors, "trailing_stop", "A trailing stop needs a stop_loss to trail.")


def _reduces_position(
    *, account: BrokerAccount, symbol: str, product: str, side: str, quantity: int, exclude_order_id: str | None = None
) -> bool:
    held = (
        Position.objects.filter(account=account, symbol=symbol, product=product)
        .values_list("quantity", flat=True)
        .first()
        or 0
    )
    signed = quantity if side == Side.BUY else -quantity
    if held == 0 or (held > 0) == (signed > 0):
        return False
    # Exits already working count against what is held: two sells of a whole long would together open a short.
    # A position's target and stop-loss legs are one exit between them (OCO), and they leave when it is closed.
    working = Order.objects.filter(
        account=account, symbol=symbol, product=product, side=side, status__in=LIVE_STATUSES
    ).exclude(role__in=EXIT_ROLES)
    if exclude_order_id is not None:
        working = working.exclude(pk=exclude_order_id)
    return abs(signed) + sum(order.pending_quantity for order in working) <= abs(held)


# --- transitions -------------------------------------------------------------------------------------------------


def _transition(order: Order, new_status: str, *, source: str, message: str = "") -> bool:
    """Move `order` (locked by the caller) to `new_status` with an event; False when the move is not legal."""
    if order.status == new_status:
        return False
    if order.pk and not can_transition(order.status, new_status):
        logger.info("ignored transition %s -> %s of %s (%s)", order.status, new_status, order.pk, source)
        return False
    OrderEvent.objects.create(
        order=order,
        from_status=order.status if order.pk else "",
        to_status=new_status,
        source=source,
        message=message[:300],
        filled_quantity=order.filled_quantity,
    )
    order.status = new_status
    if message:
        order.status_message = message[:300]
    order.updated_at = timezone.now()
    return True


def _push_order(order: Order) -> None:
    from orders.serializers import OrderOutput

    realtime.push_to_user(user_id=order.user_id, message_type="order_update", payload=OrderOutput(order).data)


def _enqueue(task_name: str, *args: Any, countdown: float | None = None) -> None:
    """Run a follow-up task once the current transaction commits."""
    from orders import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.apply_async(args=args, countdown=countdown))


# --- placing -----------------------------------------------------------------------------------------------------

# The Idempotency-Key claim the current request acts under; orders placed meanwhile are recorded against it.
_idempotency_record_id: ContextVar[int | None] = ContextVar("idempotency_record_id", default=None)


@contextlib.contextmanager
def orders_placed_under(*, record_id: int):
    token = _idempotency_record_id.set(record_id)
    try:
        yield
    finally:
        _idempotency_record_id.reset(token)


def risk_gate(*, user: User, intent: OrderIntent, role: str) -> None:
    """The one gate in front of the broker for everything that adds exposure: placing (the API, bulk legs,
    strategy fires, webhooks, re-entries, all through `order_place`) and modifications that grow an order (checked
    as the order will stand). Raises 422 RISK_REJECTED, or 403 PLAN_REQUIRED for live exposure without the plan."""
    check_order(user=user, intent=intent)
    if intent.account.broker != Broker.PAPER and role == LegRole.ENTRY and not intent.reduces_position:
        # Only new exposure needs the plan: exits (the user's, a strategy's, the RMS's) always go out.
        require_live_trading(user=user)


def order_place(
    *,
    user: User,
    spec: OrderSpec,
    source: str = OrderSource.API,
    role: str = LegRole.ENTRY,
    parent: Order | None = None,
    strategy_ref: str = "",
) -> Order:
    """Validate, check risk, commit the order as SUBMITTING, then hand it to the broker within this call.

    Raises 422 ORDER_REJECTED when the broker refuses (the REJECTED order stays in the history); a lost answer
    leaves the order UNKNOWN for reconciliation and returns it.
    """
    validated = order_validate(user=user, spec=spec)
    require_connected(validated.account)
    reduces = _reduces_position(
        account=validated.account, symbol=spec.symbol, product=spec.product, side=spec.side, quantity=spec.quantity
    )
    risk_gate(
        user=user,
        intent=OrderIntent(
            account=validated.account,
            symbol=spec.symbol,
            side=spec.side,
            quantity=spec.quantity,
            lot_size=validated.lot_size,
            order_type=spec.order_type,
            product=spec.product,
            reference_price=validated.reference_price,
            reduces_position=reduces or role in PROTECTIVE_ROLES,
            source=source,
        ),
        role=role,
    )
    order = _order_create(
        user=user, validated=validated, source=source, role=role, parent=parent, strategy_ref=strategy_ref
    )
    failpoint("orders.place.created")
    order = order_submit(order=order)
    if order.status == OrderStatus.REJECTED:
        # Accepted, then refused (the paper exchange's funds check, a broker's RMS): as much a rejection as one
        # refused outright, and the caller is told so.
        raise OrderRejected(order.status_message or None, extra={"order_id": order.pk})
    return order


@transaction.atomic
def _order_create(
    *, user: User, validated: ValidatedOrder, source: str, role: str, parent: Order | None, strategy_ref: str
) -> Order:
    spec = validated.spec
    order = Order(
        user=user,
        account=validated.account,
        symbol=spec.symbol,
        side=spec.side,
        quantity=spec.quantity,
        order_type=spec.order_type,
        product=spec.product,
        price=spec.price,
        trigger_price=spec.trigger_price,
        validity=spec.validity,
        target=spec.target,
        stop_loss=spec.stop_loss,
        trailing_stop=spec.trailing_stop,
        tag=spec.tag,
        source=source,
        role=role,
        parent=parent,
        strategy_ref=strategy_ref,
        idempotency_record_id=_idempotency_record_id.get(),
        status=OrderStatus.PENDING,
    )
    order.save(force_insert=True)
    OrderEvent.objects.create(order=order, to_status=OrderStatus.PENDING, source=source)
    _transition(order, OrderStatus.SUBMITTING, source=source)
    order.save()
    audit_record(
        action="order.place",
        actor=user if source == OrderSource.API else None,
        target=order,
        details={"symbol": order.symbol, "side": order.side, "quantity": order.quantity, "source": source},
    )
    return order


def _request_for(order: Order) -> OrderRequest:
    return OrderRequest(
        symbol=order.symbol,
        side=Side(order.side),
        quantity=order.quantity,
        order_type=OrderType(order.order_type),
        product=Product(order.product),
        price=order.price,
        trigger_price=order.trigger_price,
        validity=Validity(order.validity),
        tag=order.broker_tag,
        algo_id=order.account.algo_id or settings.BROKER_DEFAULT_ALGO_ID,
    )


def order_submit(*, order: Order) -> Order:
    """Hand a SUBMITTING order to its broker, once. Errors that prove the order never reached the broker reject
    it; an answer we did not get makes it UNKNOWN."""
    if Order.objects.filter(pk=order.pk).exclude(status=OrderStatus.SUBMITTING, broker_order_id="").exists():
        # Settled while we stalled (reconciliation rejected it, or found it at the broker): sending it now would
        # make an order at the broker that nothing of ours tracks.
        order.refresh_from_db()
        return order
    try:
        adapter = adapter_for(order.account)
        broker_order_id = adapter.place_order(_request_for(order))
    except (SessionExpired, BrokerRateLimited, InvalidInput, OrderRejected) as error:
        _order_settle_refused(order_id=order.pk, error=error)
        if isinstance(error, InvalidInput):
            raise OrderRejected(error.detail, extra={"order_id": order.pk}) from None
        error.extra.setdefault("order_id", order.pk)
        raise
    except CircuitOpen as error:
        _order_settle_refused(order_id=order.pk, error=error)
        error.extra.setdefault("order_id", order.pk)
        raise
    except BrokerError as error:
        return _order_mark_unknown(order_id=order.pk, error=error)
    failpoint("orders.submit.sent")
    order = _order_mark_accepted(order_id=order.pk, broker_order_id=broker_order_id)
    failpoint("orders.submit.accepted")
    order_refresh(order=order, adapter=adapter)
    order.refresh_from_db()
    return order


@transaction.atomic
def _order_settle_refused(*, order_id: str, error: BrokerError) -> Order:
    order = Order.objects.select_for_update().get(pk=order_id)
    if order.status == OrderStatus.SUBMITTING:
        _transition(order, OrderStatus.REJECTED, source=OrderSource.BROKER, message=error.detail)
        order.save()
        _push_order(order)
        _notify_rejection(order)
    return order


@transaction.atomic
def _order_mark_unknown(*, order_id: str, error: BrokerError) -> Order:
    order = Order.objects.select_for_update().get(pk=order_id)
    if order.status == OrderStatus.SUBMITTING:
        _transition(
            order, OrderStatus.UNKNOWN, source=OrderSource.BROKER, message=f"No answer from the broker: {error.detail}"
        )
        order.save()
        _push_order(order)
        _enqueue("reconcile_account", order.account_id, countdown=settings.ORDER_RECONCILE_DELAY_SECONDS)
    return order


@transaction.atomic
def _order_mark_accepted(*, order_id: str, broker_order_id: str) -> Order:
    order = Order.objects.select_for_update(of=("self",)).select_related("account").get(pk=order_id)
    if not order.broker_order_id:
        order.broker_order_id = broker_order_id
    order.submitted_at = timezone.now()
    _transition(order, OrderStatus.OPEN, source=OrderSource.BROKER, message="")
    order.save()
    _push_order(order)
    return order


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


def _notify_rejection(order: Order) -> None:
    notification_create(
        user=order.user,
        kind="order_rejected",
        title=f"Order rejected: {order.side} {order.quantity} {order.symbol}",
        body=order.status_message,
        level=Notification.Level.WARNING,
        data={"order_id": order.pk},
    )


# --- broker updates ----------------------------------------------------------------------------------------------


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
        order = Order.objects.select_for_update(of=("self",)).select_related("account", "user").get(pk=order_id)
        if order.broker_order_id and update.broker_order_id and order.broker_order_id != update.broker_order_id:
            logger.warning(
                "update for %s names broker order %s, ours is %s",
                order.pk,
                update.broker_order_id,
                order.broker_order_id,
            )
            return order
        revived = bool(update.broker_order_id) and _rejected_by_inference(order)
        if not order.broker_order_id and update.broker_order_id:
            order.broker_order_id = update.broker_order_id
        changed = False
        trade = None
        if revived:
            # We settled it as never placed, yet the broker holds it after all: the broker is the truth.
            OrderEvent.objects.create(
                order=order,
                from_status=order.status,
                to_status=OrderStatus.OPEN,
                source=source,
                message="The broker has this order after all.",
                filled_quantity=order.filled_quantity,
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
        if _transition(order, new_status, source=source, message=update.status_message):
            changed = True
        if not changed:
            return order
        order.updated_at = timezone.now()
        order.save()
        _push_order(order)
        if order.status == OrderStatus.REJECTED:
            _notify_rejection(order)
        if order.status == OrderStatus.FILLED:
            notification_create(
                user=order.user,
                kind="order_filled",
                title=f"Filled: {order.side} {order.filled_quantity} {order.symbol} @ {order.average_price}",
                data={"order_id": order.pk},
            )
        if trade is not None or _needs_exits(order):
            transaction.on_commit(lambda: order_fill_follow_up(order_id=order.pk))
    return order


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
        _enqueue("follow_up_fill", order_id, countdown=settings.ORDER_RECONCILE_DELAY_SECONDS)


def _rejected_by_inference(order: Order) -> bool:
    """REJECTED by reconciliation because the broker had no record of it, never by the broker itself."""
    return (
        order.status == OrderStatus.REJECTED
        and not order.broker_order_id
        and order.events.filter(source=OrderSource.RECONCILE, to_status=OrderStatus.REJECTED).exists()
    )


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
    from orders.serializers import PositionOutput, TradeOutput

    realtime.push_to_user(user_id=order.user_id, message_type="trade", payload=TradeOutput(trade).data)
    _risk_reevaluate(user_id=order.user_id)
    realtime.push_to_user(
        user_id=order.user_id, message_type="position_update", payload=PositionOutput(position, context={}).data
    )
    return trade


def _risk_reevaluate(*, user_id: str) -> None:
    """A fill changes the user's MTM (realized PnL, a new position): the risk engine looks again after commit."""
    from rms.tasks import evaluate_users

    def enqueue() -> None:
        try:
            evaluate_users.delay([user_id])
        except Exception:  # the beat sweep evaluates everyone anyway; a fill must not fail on this
            logger.exception("risk re-evaluation after a fill could not be queued")

    transaction.on_commit(enqueue)


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
    Position.objects.get_or_create(
        account_id=trade.account_id,
        symbol=trade.symbol,
        product=trade.product,
        defaults={"user_id": trade.user_id, "trading_day": today},
    )
    position = Position.objects.select_for_update().get(
        account_id=trade.account_id, symbol=trade.symbol, product=trade.product
    )
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


# --- modify and cancel -------------------------------------------------------------------------------------------


def _broker_id_or_conflict(order: Order) -> str:
    if not order.broker_order_id:
        raise InvalidState(f"Order {order.pk} is {order.status} and not at the broker yet; retry shortly.")
    return order.broker_order_id


def order_modify(
    *,
    user: User | None,
    order: Order,
    quantity: int | None = None,
    price: Decimal | None = None,
    trigger_price: Decimal | None = None,
    order_type: str | None = None,
    source: str = OrderSource.API,
) -> Order:
    """Change a working order at the broker; 409 INVALID_STATE when it is no longer working."""
    with transaction.atomic():
        locked = Order.objects.select_for_update(of=("self",)).select_related("account", "user").get(pk=order.pk)
        _require_changeable_by(locked, source=source)
        if locked.status not in WORKING_STATUSES:
            raise InvalidState(f"Order {locked.pk} is {locked.status} and cannot be modified.")
        broker_order_id = _broker_id_or_conflict(locked)
        new_type = order_type or locked.order_type
        new_price = (
            price if price is not None else (locked.price if new_type in (OrderType.LIMIT, OrderType.SL) else None)
        )
        new_trigger = (
            trigger_price
            if trigger_price is not None
            else (locked.trigger_price if new_type in (OrderType.SL, OrderType.SL_M) else None)
        )
        new_quantity = quantity if quantity is not None else locked.quantity
        errors: dict[str, list[str]] = {}
        instrument = instrument_get(symbol=locked.symbol)
        lot_size = instrument.lot_size if instrument else 1
        tick_size = Decimal(instrument.tick_size) if instrument else Decimal("0.05")
        if new_quantity <= locked.filled_quantity:
            _add(errors, "quantity", f"Must be more than the {locked.filled_quantity} already filled.")
        elif new_quantity % lot_size:
            _add(errors, "quantity", f"Must be a multiple of the lot size {lot_size}.")
        freeze = freeze_quantity(underlying=instrument.underlying) if instrument is not None else None
        if freeze is not None and new_quantity > freeze:
            _add(errors, "quantity", f"Above the exchange's freeze quantity of {freeze} units per order.")
        _check_prices(
            errors,
            side=locked.side,
            order_type=new_type,
            price=new_price,
            trigger_price=new_trigger,
            tick_size=tick_size,
        )
        if errors:
            raise ValidationFailed("The modification is invalid.", errors=errors)
        _modify_gate(
            order=locked,
            quantity=new_quantity,
            order_type=new_type,
            price=new_price,
            trigger_price=new_trigger,
            lot_size=lot_size,
            source=source,
        )
        previous = locked.status
        _transition(locked, OrderStatus.PENDING_MODIFY, source=source)
        locked.save()
    request = ModifyRequest(
        quantity=new_quantity if new_quantity != locked.quantity else None,
        price=new_price if new_price != locked.price else None,
        trigger_price=new_trigger if new_trigger != locked.trigger_price else None,
        order_type=OrderType(new_type) if new_type != locked.order_type else None,
    )
    adapter = adapter_for(locked.account)
    try:
        adapter.modify_order(broker_order_id, request)
    except (InvalidInput, OrderRejected) as error:
        _order_restore(
            order_id=locked.pk, status=previous, source=source, message=f"Modification refused: {error.detail}"
        )
        order_refresh(order=locked, adapter=adapter)
        raise OrderRejected(error.detail, extra={"order_id": locked.pk}) from None
    except BrokerError:
        _enqueue_now("reconcile_account", locked.account_id)
        raise
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=locked.pk)
        locked.quantity, locked.price, locked.trigger_price, locked.order_type = (
            new_quantity,
            new_price,
            new_trigger,
            new_type,
        )
        locked.save()
        audit_record(action="order.modify", actor=user, target=locked, details={"source": source})
    order_refresh(order=locked, adapter=adapter)
    locked.refresh_from_db()
    if locked.status == OrderStatus.PENDING_MODIFY:
        _order_restore(order_id=locked.pk, status=previous, source=source, message="")
        locked.refresh_from_db()
    return locked


# Square-off orders the risk engine placed: the user asked for none of them, so the user cannot undo them.
RISK_ENGINE_SOURCES = (OrderSource.RMS, OrderSource.SYSTEM)


def _require_changeable_by(order: Order, *, source: str) -> None:
    if source == OrderSource.API and order.role == LegRole.SQUARE_OFF and order.source in RISK_ENGINE_SOURCES:
        raise AppError(
            f"Order {order.pk} closes a position for the risk engine; it cannot be modified or cancelled.",
            code=ErrorCode.ORDER_LOCKED,
        )


def _reference_price(*, symbol: str, order_type: str, price: Decimal | None, trigger: Decimal | None) -> Decimal:
    return price or trigger or quote_for(symbol).last_price


def _protective_room(order: Order) -> int:
    """How much a working exit may close, beside the position's other exits, without closing more than is held."""
    where = {"account_id": order.account_id, "symbol": order.symbol, "product": order.product}
    own_group = order.parent_id or order.pk
    covered = sum(
        _exit_cover(group)
        for group in _exit_groups(**where, side=order.side)
        if (group[0].parent_id or group[0].pk) != own_group
    )
    square_offs = Order.objects.filter(
        **where, side=order.side, role=LegRole.SQUARE_OFF, status__in=LIVE_STATUSES
    ).exclude(pk=order.pk)
    covered += sum(other.pending_quantity for other in square_offs)
    return max(_held(**where, closing_side=order.side) - covered, 0)


def _modify_gate(
    *,
    order: Order,
    quantity: int,
    order_type: str,
    price: Decimal | None,
    trigger_price: Decimal | None,
    lot_size: int,
    source: str,
) -> None:
    """A modification that grows an order passes the risk gate as the order will stand: its new quantity and price
    for lots and value, margin for what it adds, and not counted as another order of the day. An exit (target,
    stop-loss, square-off) grows only up to the position it closes, never into a reverse one."""
    grows_quantity = quantity > order.quantity
    protective = order.role in PROTECTIVE_ROLES
    new_reference = _reference_price(symbol=order.symbol, order_type=order_type, price=price, trigger=trigger_price)
    added_value = Decimal("0")
    if protective:
        if not grows_quantity:
            return  # a price or trigger moved on an exit changes no exposure (trailing stops move them all day)
        room = _protective_room(order)
        if quantity - order.filled_quantity > room:
            raise RiskRejected(
                f"This exit may close at most {room}: what the position still holds beside its other exits. More "
                "would open a position the other way.",
                reason=Reason.EXIT_EXCEEDS_POSITION,
            )
        reduces = True
    else:
        old_reference = _reference_price(
            symbol=order.symbol, order_type=order.order_type, price=order.price, trigger=order.trigger_price
        )
        added_value = new_reference * quantity - old_reference * order.quantity
        if not grows_quantity and added_value <= 0:
            return  # smaller or cheaper: always allowed, halted or not
        reduces = _reduces_position(
            account=order.account,
            symbol=order.symbol,
            product=order.product,
            side=order.side,
            quantity=quantity - order.filled_quantity,
            exclude_order_id=order.pk,
        )
    risk_gate(
        user=order.user,
        intent=OrderIntent(
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            quantity=quantity,
            lot_size=lot_size,
            order_type=order_type,
            product=order.product,
            reference_price=new_reference,
            reduces_position=reduces,
            source=source,
            new_order=False,
            margin_value=max(added_value, Decimal("0")).quantize(PAISE),
        ),
        role=order.role,
    )


def _enqueue_now(task_name: str, *args: Any) -> None:
    with transaction.atomic():
        _enqueue(task_name, *args, countdown=settings.ORDER_RECONCILE_DELAY_SECONDS)


@transaction.atomic
def _order_restore(*, order_id: str, status: str, source: str, message: str) -> None:
    order = Order.objects.select_for_update().get(pk=order_id)
    if order.status in (OrderStatus.PENDING_MODIFY, OrderStatus.PENDING_CANCEL) and not order.is_final:
        if status == OrderStatus.OPEN and order.filled_quantity:
            status = OrderStatus.PARTIALLY_FILLED
        _transition(order, status, source=source, message=message)
        order.save()
        _push_order(order)


CANCELLABLE = WORKING_STATUSES | {OrderStatus.PENDING_MODIFY, OrderStatus.PENDING_CANCEL}


def order_cancel(*, user: User | None, order: Order, source: str = OrderSource.API) -> Order:
    """Cancel at the broker; 409 INVALID_STATE when the order is already final (a filled order cannot be
    cancelled)."""
    with transaction.atomic():
        locked = Order.objects.select_for_update(of=("self",)).select_related("account").get(pk=order.pk)
        _require_changeable_by(locked, source=source)
        if locked.status not in CANCELLABLE:
            raise InvalidState(f"Order {locked.pk} is {locked.status} and cannot be cancelled.")
        broker_order_id = _broker_id_or_conflict(locked)
        previous = OrderStatus.OPEN if locked.status == OrderStatus.PENDING_MODIFY else locked.status
        _transition(locked, OrderStatus.PENDING_CANCEL, source=source)
        locked.save()
        _push_order(locked)
        audit_record(action="order.cancel", actor=user, target=locked, details={"source": source})
    adapter = adapter_for(locked.account)
    try:
        adapter.cancel_order(broker_order_id)
    except (InvalidInput, OrderRejected) as error:
        refreshed = order_refresh(order=locked, adapter=adapter)
        if refreshed.is_final:
            raise InvalidState(f"Order {locked.pk} is {refreshed.status} and cannot be cancelled.") from None
        _order_restore(order_id=locked.pk, status=previous, source=source, message=f"Cancel refused: {error.detail}")
        raise OrderRejected(error.detail, extra={"order_id": locked.pk}) from None
    except BrokerError:
        _enqueue_now("reconcile_account", locked.account_id)
        raise
    order_refresh(order=locked, adapter=adapter)
    locked.refresh_from_db()
    return locked


# --- reconciliation ----------------------------------------------------------------------------------------------


def accounts_needing_reconcile() -> list[str]:
    """Accounts with orders the broker may still change, or filled entries still waiting for their exits."""
    live = Order.objects.filter(status__in=LIVE_STATUSES).values_list("account_id", flat=True)
    waiting_exits = (
        Order.objects.filter(
            role=LegRole.ENTRY, exits_placed_at__isnull=True, filled_quantity__gt=0, status__in=FINAL_STATUSES
        )
        .exclude(target__isnull=True, stop_loss__isnull=True)
        .values_list("account_id", flat=True)
    )
    return sorted(set(live) | set(waiting_exits))


def orders_reconcile(*, account_id: str, now: datetime | None = None) -> dict[str, int]:
    """Settle the account's live orders from the broker's order book (matched by broker id, else by our tag).

    SUBMITTING and UNKNOWN orders the broker has never seen are settled after a grace period: protective exits are
    submitted then (they never reached the broker, so this is their first submission); anything else is rejected.
    """
    now = now or timezone.now()
    account = BrokerAccount.objects.get(pk=account_id)
    counts = {"updated": 0, "submitted": 0, "rejected": 0, "exits": 0}
    for entry in Order.objects.filter(
        account=account,
        role=LegRole.ENTRY,
        exits_placed_at__isnull=True,
        filled_quantity__gt=0,
        status__in=FINAL_STATUSES,
    ).exclude(target__isnull=True, stop_loss__isnull=True):
        order_exits_place(order_id=entry.pk)
        counts["exits"] += 1
    live = list(Order.objects.filter(account=account, status__in=LIVE_STATUSES).order_by("created_at"))
    if not live or account.status != AccountStatus.CONNECTED:
        return counts
    adapter = adapter_for(account)
    book = _BrokerBook(adapter.orders())
    grace = timedelta(seconds=settings.ORDER_RECONCILE_GRACE_SECONDS)
    for order in live:
        outcome = _order_settle(
            order=order, adapter=adapter, match=book.match(order), stale=now - order.updated_at > grace
        )
        if outcome:
            counts[outcome] += 1
    return counts


class _BrokerBook:
    """One read of the broker's order book, matched to ours by broker id, else by our tag."""

    def __init__(self, orders: list[BrokerOrder]) -> None:
        self.by_id = {order.broker_order_id: order for order in orders}
        self.by_tag = {order.tag: order for order in orders if order.tag}

    def match(self, order: Order) -> BrokerOrder | None:
        found = self.by_id.get(order.broker_order_id) if order.broker_order_id else None
        return found or self.by_tag.get(order.broker_tag)


def _order_settle(*, order: Order, adapter, match: BrokerOrder | None, stale: bool) -> str:
    """Settle one live order from what its broker's book says of it; the outcome's name, "" when nothing changed.

    `stale`: whoever placed the order is gone (past the grace period, or its Idempotency-Key lease ran out), so an
    order the broker has never seen was never placed."""
    if match is not None:
        before = (order.status, order.filled_quantity)
        if not Order.objects.filter(pk=order.pk, updated_at=order.updated_at).exists():
            # Changed since the book was read (this very pass may have shrunk or cancelled it as an OCO sibling):
            # the book can be older than that change and would undo it, so ask for the order itself.
            try:
                match = adapter.order(match.broker_order_id)
            except BrokerError as error:
                logger.info("could not refresh %s from the broker: %s", order.pk, error.detail)
                return ""
        updated = order_apply_update(
            order_id=order.pk, update=match, source=OrderSource.RECONCILE, settle_pending=stale
        )
        return "updated" if (updated.status, updated.filled_quantity) != before else ""
    if order.status not in (OrderStatus.SUBMITTING, OrderStatus.UNKNOWN, OrderStatus.PENDING) or not stale:
        return ""
    if order.status in (OrderStatus.SUBMITTING, OrderStatus.PENDING) and order.role in PROTECTIVE_ROLES:
        _order_resubmit_protective(order=order)
        return "submitted"
    _order_reject_missing(order_id=order.pk)
    return "rejected"


def order_settle_from_broker(*, order_id: str, stale: bool) -> Order:
    """Settle one order from its broker's order book now: a retry whose first attempt died answers with this.

    Best effort: when the broker cannot be read the order is returned as we have it (reconciliation goes on)."""
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final and not _rejected_by_inference(order):
        return order
    try:
        adapter = adapter_for(order.account)
        match = _BrokerBook(adapter.orders()).match(order)
    except (BrokerError, AppError) as error:
        logger.info("could not settle %s from the broker: %s", order.pk, error.detail)
        return order
    if order.is_final and match is not None:
        order_apply_update(order_id=order.pk, update=match, source=OrderSource.RECONCILE, settle_pending=True)
    elif not order.is_final:
        _order_settle(order=order, adapter=adapter, match=match, stale=stale)
    order.refresh_from_db()
    return order


def order_refresh_from_broker(*, order_id: str) -> Order:
    """The broker pushed news of this order (a postback, an order socket): a signal, never a fact. Read the order
    from the broker's own books and apply that; a pushed body's terms and fills are never used. Best effort: when
    the broker cannot be read the order stays as it is and reconciliation settles it."""
    order = Order.objects.select_related("account").get(pk=order_id)
    if not order.broker_order_id or _rejected_by_inference(order):
        return order_settle_from_broker(order_id=order_id, stale=False)  # found in the book by our tag
    try:
        adapter = adapter_for(order.account)
    except (BrokerError, AppError) as error:
        logger.info("could not refresh %s from the broker: %s", order.pk, error.detail)
        return order
    return order_refresh(order=order, adapter=adapter, settle_pending=False)


def _order_resubmit_protective(*, order: Order) -> None:
    with transaction.atomic():
        locked = Order.objects.select_for_update().get(pk=order.pk)
        if locked.updated_at != order.updated_at:
            return  # touched since we found it stale: another reconciliation claimed it and is sending it
        if locked.status == OrderStatus.PENDING:
            _transition(locked, OrderStatus.SUBMITTING, source=OrderSource.RECONCILE)
        if locked.status != OrderStatus.SUBMITTING:
            return
        if locked.role in EXIT_ROLES and locked.quantity > _held(
            account_id=locked.account_id, symbol=locked.symbol, product=locked.product, closing_side=locked.side
        ):
            # The position it was to protect shrank or closed while it waited: sent now it would open a new one.
            _transition(
                locked,
                OrderStatus.CANCELLED,
                source=OrderSource.RECONCILE,
                message="Not sent: the position it protected is no longer held.",
            )
            locked.save()
            _push_order(locked)
            return
        OrderEvent.objects.create(
            order=locked,
            from_status=locked.status,
            to_status=locked.status,
            source=OrderSource.RECONCILE,
            message="Never reached the broker; submitting the protective order now.",
        )
        locked.updated_at = timezone.now()
        locked.save()
    try:
        order_submit(order=locked)
    except BrokerError as error:
        logger.warning("protective order %s could not be submitted: %s", locked.pk, error.detail)


@transaction.atomic
def _order_reject_missing(*, order_id: str) -> None:
    order = Order.objects.select_for_update().get(pk=order_id)
    if order.status in (OrderStatus.SUBMITTING, OrderStatus.UNKNOWN, OrderStatus.PENDING):
        _transition(
            order,
            OrderStatus.REJECTED,
            source=OrderSource.RECONCILE,
            message="The broker has no record of this order; it was not placed.",
        )
        order.save()
        _push_order(order)
        _notify_rejection(order)


# --- target, stop-loss, OCO and trailing -------------------------------------------------------------------------


def _exit_cover(legs: list[Order]) -> int:
    """What one entry's exit legs still close between them: they are one exit (OCO), so the least either has left."""
    return min(leg.pending_quantity for leg in legs)


def _exit_groups(*, account_id: str, symbol: str, product: str, side: str) -> list[list[Order]]:
    """The working exit legs on one position that close it from `side`, grouped by entry, oldest entry first."""
    groups: dict[str, list[Order]] = {}
    legs = Order.objects.filter(
        account_id=account_id, symbol=symbol, product=product, side=side, role__in=EXIT_ROLES, status__in=LIVE_STATUSES
    ).order_by("created_at", "id")
    for leg in legs:
        groups.setdefault(leg.parent_id or leg.pk, []).append(leg)
    return list(groups.values())


def _held(*, account_id: str, symbol: str, product: str, closing_side: str) -> int:
    """How much of the position an order on `closing_side` can close: the long for a sell, the short for a buy."""
    quantity = (
        Position.objects.filter(account_id=account_id, symbol=symbol, product=product)
        .values_list("quantity", flat=True)
        .first()
        or 0
    )
    return max(quantity, 0) if closing_side == Side.SELL else max(-quantity, 0)


def _exit_room(*, account_id: str, symbol: str, product: str, side: str, exclude_parent: str | None = None) -> int:
    """What new exit legs on `side` may still close without closing more than is held."""
    held = _held(account_id=account_id, symbol=symbol, product=product, closing_side=side)
    covered = sum(
        _exit_cover(group)
        for group in _exit_groups(account_id=account_id, symbol=symbol, product=product, side=side)
        if group[0].parent_id != exclude_parent
    )
    return max(held - covered, 0)


def exits_fit_position(*, account_id: str, symbol: str, product: str) -> int:
    """Shrink or cancel working exit legs that would close more than the position now holds (closed by hand, by a
    square-off, the RMS or a strategy's exit): a stop left working on a flat position would open a naked one.
    The oldest entries keep their cover; returns how many legs were changed."""
    changed = 0
    for side in (Side.SELL, Side.BUY):
        room = _held(account_id=account_id, symbol=symbol, product=product, closing_side=side)
        for group in _exit_groups(account_id=account_id, symbol=symbol, product=product, side=side):
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
        entry = Order.objects.select_for_update(of=("self",)).select_related("user", "account").get(pk=order_id)
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
            exit_order.save(force_insert=True)
            OrderEvent.objects.create(
                order=exit_order,
                to_status=OrderStatus.PENDING,
                source=OrderSource.SYSTEM,
                message=f"{role.label} of {entry.pk}",
            )
            _transition(exit_order, OrderStatus.SUBMITTING, source=OrderSource.SYSTEM)
            exit_order.save()
            created.append(exit_order)
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


# --- square-off --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SquareOffResult:
    cancelled: list[Order]
    placed: list[Order]
    failed: list[dict[str, str]]


def positions_square_off(
    *,
    user: User,
    account_id: str | None = None,
    symbol: str | None = None,
    product: str | None = None,
    source: str = OrderSource.API,
) -> SquareOffResult:
    """Cancel the pending orders in scope, then close every open position with a market order.

    Idempotent: square-off orders already working are neither cancelled nor repeated; only what they do not
    already cover is placed. One square-off per user runs at a time (the RMS and the user may ask together):
    the second waits for the first and then places only what is still uncovered.
    """
    with _square_off_lock(user_id=user.pk):
        return _positions_square_off(user=user, account_id=account_id, symbol=symbol, product=product, source=source)


@contextlib.contextmanager
def _square_off_lock(*, user_id: str):
    key = f"orders:square-off:{user_id}"
    deadline = time.monotonic() + settings.SQUARE_OFF_LOCK_WAIT_SECONDS
    # Expires on its own, so a worker that dies holding it blocks the next square-off for a minute at most.
    while not cache.add(key, True, timeout=60):
        if time.monotonic() > deadline:
            raise InvalidState("A square-off of your positions is already running; retry shortly.")
        time.sleep(0.05)
    try:
        yield
    finally:
        cache.delete(key)


def quantities_within_freeze(*, symbol: str, quantity: int) -> list[int]:
    """`quantity` of `symbol` as orders the exchange accepts: slices of at most the underlying's freeze quantity,
    each a whole number of lots (an exit larger than the limit goes out as several orders, never not at all)."""
    instrument = instrument_get(symbol=symbol)
    freeze = freeze_quantity(underlying=instrument.underlying) if instrument is not None else None
    if not freeze or quantity <= freeze:
        return [quantity]
    lot = max(instrument.lot_size, 1)
    slice_size = max(lot, freeze // lot * lot)
    slices = [slice_size] * (quantity // slice_size)
    if quantity % slice_size:
        slices.append(quantity % slice_size)
    return slices


def _positions_square_off(
    *, user: User, account_id: str | None, symbol: str | None, product: str | None, source: str
) -> SquareOffResult:
    accounts = BrokerAccount.objects.filter(owner=user, deleted_at__isnull=True)
    if account_id is not None:
        accounts = accounts.filter(pk=broker_account_get(user=user, account_id=account_id).pk)
    pending = Order.objects.filter(user=user, account__in=accounts, status__in=LIVE_STATUSES).exclude(
        role=LegRole.SQUARE_OFF
    )
    if symbol:
        pending = pending.filter(symbol=symbol)
    if product:
        pending = pending.filter(product=product)
    cancelled, failed = [], []
    for order in pending.select_related("account"):
        try:
            cancelled.append(order_cancel(user=user, order=order, source=source))
        except (BrokerError, InvalidState) as error:
            failed.append({"order_id": order.pk, "symbol": order.symbol, "detail": error.detail})
    positions = Position.objects.filter(user=user, account__in=accounts).exclude(quantity=0)
    if symbol:
        positions = positions.filter(symbol=symbol)
    if product:
        positions = positions.filter(product=product)
    placed = []
    for position in positions.select_related("account"):
        working = Order.objects.filter(
            account=position.account,
            symbol=position.symbol,
            product=position.product,
            role=LegRole.SQUARE_OFF,
            status__in=LIVE_STATUSES,
        )
        covering = sum(o.pending_quantity if o.side == Side.SELL else -o.pending_quantity for o in working)
        to_close = position.quantity - covering
        if to_close == 0:
            continue
        for quantity in quantities_within_freeze(symbol=position.symbol, quantity=abs(to_close)):
            spec = OrderSpec(
                account_id=position.account_id,
                symbol=position.symbol,
                side=Side.SELL if to_close > 0 else Side.BUY,
                quantity=quantity,
                order_type=OrderType.MARKET,
                product=position.product,
                tag="squareoff",
            )
            try:
                placed.append(order_place(user=user, spec=spec, source=source, role=LegRole.SQUARE_OFF))
            except AppError as error:  # one position's failure (broker, risk, validation) must not stop the others
                failed.append({"symbol": position.symbol, "account_id": position.account_id, "detail": error.detail})
                break
    audit_record(
        action="order.square_off",
        actor=user if source == OrderSource.API else None,
        target=user,
        details={"account_id": account_id, "symbol": symbol, "placed": [o.pk for o in placed], "source": source},
    )
    return SquareOffResult(cancelled=cancelled, placed=placed, failed=failed)


# --- bulk --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegResult:
    index: int
    order: Order | None
    error_code: str = ""
    detail: str = ""
    cancelled: bool = False
    not_sent: bool = False

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.not_sent:
            return "not_sent"
        return "failed" if self.error_code else "placed"


@dataclass(frozen=True)
class BulkResult:
    legs: list[LegResult]
    all_or_none: bool

    @property
    def status(self) -> str:
        """placed (every leg), rolled_back (all_or_none undid them all), partial (some stand), or failed."""
        statuses = {leg.status for leg in self.legs}
        if statuses == {"placed"}:
            return "placed"
        if "placed" in statuses:
            return "partial"
        return "rolled_back" if self.all_or_none else "failed"


def orders_place_bulk(*, user: User, specs: list[OrderSpec], all_or_none: bool) -> BulkResult:
    """Multi-leg: every leg is validated before any is sent; buys go first (they free margin for the hedged
    sells); with `all_or_none`, a failed leg cancels the legs already placed."""
    errors: dict[str, list[str]] = {}
    for index, spec in enumerate(specs):
        try:
            validated = order_validate(user=user, spec=spec, prefix=f"legs.{index}.")
            require_connected(validated.account)
        except ValidationFailed as error:
            errors.update(error.errors or {})
        except NotFound:
            _add(errors, f"legs.{index}.account_id", "No such broker account.")
    if errors:
        raise ValidationFailed("One or more legs are invalid; nothing was sent.", errors=errors)
    order_of_sending = sorted(range(len(specs)), key=lambda i: (specs[i].side != Side.BUY, i))
    results: dict[int, LegResult] = {}
    failed = False
    for index in order_of_sending:
        if failed and all_or_none:
            results[index] = LegResult(
                index=index, order=None, not_sent=True, detail="Not sent: an earlier leg failed."
            )
            continue
        try:
            order = order_place(user=user, spec=specs[index])
        except BrokerError as error:
            results[index] = LegResult(
                index=index,
                order=Order.objects.filter(pk=error.extra.get("order_id")).first(),
                error_code=str(error.code),
                detail=error.detail,
            )
            failed = True
            continue
        except AppError as error:  # risk, validation, state: this leg failed, the others are settled below
            results[index] = LegResult(index=index, order=None, error_code=str(error.code), detail=error.detail)
            failed = True
            continue
        if order.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED):
            failed = True
            results[index] = LegResult(
                index=index, order=order, error_code="ORDER_REJECTED", detail=order.status_message
            )
        else:
            results[index] = LegResult(index=index, order=order)
    if failed and all_or_none:
        for index, result in list(results.items()):
            if result.order is None or result.error_code:
                continue
            if result.order.is_final:
                results[index] = LegResult(
                    index=index, order=result.order, detail="Filled before another leg failed; not rolled back."
                )
                continue
            try:
                cancelled = order_cancel(user=user, order=result.order, source=OrderSource.API)
                results[index] = LegResult(
                    index=index, order=cancelled, cancelled=True, detail="Cancelled: another leg failed."
                )
            except (BrokerError, InvalidState) as error:
                results[index] = LegResult(index=index, order=result.order, detail=f"Could not cancel: {error.detail}")
    return BulkResult(legs=[results[index] for index in range(len(specs))], all_or_none=all_or_none)


def bulk_result_from_orders(*, specs: list[OrderSpec], orders: list[Order], all_or_none: bool) -> BulkResult:
    """A bulk request's outcome rebuilt from the orders it placed, for a retry whose first attempt died: each leg
    takes the first order not yet taken with its terms; a leg without one was never sent."""
    remaining = list(orders)
    legs = []
    for index, spec in enumerate(specs):
        terms = (spec.account_id, spec.symbol, spec.side, spec.quantity, spec.order_type, spec.product)
        order = next(
            (o for o in remaining if (o.account_id, o.symbol, o.side, o.quantity, o.order_type, o.product) == terms),
            None,
        )
        if order is None:
            legs.append(LegResult(index=index, order=None, not_sent=True, detail="Not sent."))
            continue
        remaining.remove(order)
        if order.status == OrderStatus.REJECTED:
            legs.append(LegResult(index=index, order=order, error_code="ORDER_REJECTED", detail=order.status_message))
        else:
            legs.append(LegResult(index=index, order=order, cancelled=order.status == OrderStatus.CANCELLED))
    return BulkResult(legs=legs, all_or_none=all_or_none)


# --- idempotency -------------------------------------------------------------------------------------------------


def idempotency_records_purge(*, older_than: timedelta) -> int:
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted
