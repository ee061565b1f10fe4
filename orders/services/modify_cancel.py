"""Modifying and cancelling a working order at the broker."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import transaction

from accounts.models import User
from accounts.services import audit_record
from algoterm.api.errors import AppError, ErrorCode, InvalidState, RiskRejected, ValidationFailed
from algoterm.config import freeze_quantity
from algoterm.tasking import task_send_on_commit
from brokers.gateway import adapter_for
from brokers.prices import quote_for
from brokers.protocol import BrokerError, InvalidInput, ModifyRequest, OrderRejected, OrderType
from marketdata.instruments import instrument_get
from orders.hooks import EXIT_EXCEEDS_POSITION, OrderIntent
from orders.locks import order_lock
from orders.models import LIVE_STATUSES, WORKING_STATUSES, LegRole, Order, OrderSource, OrderStatus
from orders.services.exposure import _exit_cover, _exit_groups, _held, _reduces_position
from orders.services.placement import risk_gate
from orders.services.transitions import PAISE, PROTECTIVE_ROLES, _push_order, _transition
from orders.services.updates import order_refresh
from orders.services.validation import _add, _check_prices


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
        locked = order_lock(order_id=order.pk, related=("account", "user"))
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
        _reconcile_soon(account_id=locked.account_id)
        raise
    with transaction.atomic():
        locked = order_lock(order_id=locked.pk)
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
                reason=EXIT_EXCEEDS_POSITION,
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


def _reconcile_soon(*, account_id: str) -> None:
    """The broker's answer to a modify or cancel was lost: reconciliation reads what it did (queued at once outside a
    transaction, else on its commit)."""
    task_send_on_commit(
        name="orders.tasks.reconcile_account", args=(account_id,), countdown=settings.ORDER_RECONCILE_DELAY_SECONDS
    )


@transaction.atomic
def _order_restore(*, order_id: str, status: str, source: str, message: str) -> None:
    order = order_lock(order_id=order_id)
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
        locked = order_lock(order_id=order.pk, related=("account",))
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
        _reconcile_soon(account_id=locked.account_id)
        raise
    order_refresh(order=locked, adapter=adapter)
    locked.refresh_from_db()
    return locked
