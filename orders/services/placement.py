"""Placing an order: the risk gate, the SUBMITTING row committed first, then one hand-over to the broker."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_record
from algoterm.failpoints import failpoint
from algoterm.realtime import pushes_batched
from algoterm.tasking import task_send_on_commit
from billing.services import require_live_trading
from brokers.gateway import adapter_for, require_connected
from brokers.models import Broker
from brokers.protection import CircuitOpen
from brokers.protocol import (
    BrokerError,
    BrokerOrder,
    BrokerRateLimited,
    InvalidInput,
    OrderRejected,
    OrderRequest,
    OrderType,
    Product,
    SessionExpired,
    Side,
    Validity,
)
from orders.hooks import OrderIntent, pre_trade_check_run
from orders.locks import order_lock
from orders.models import LegRole, Order, OrderEvent, OrderSource, OrderStatus
from orders.selectors import trading_snapshot
from orders.services.exposure import _reduces_position
from orders.services.idempotency import _idempotency_record_id
from orders.services.transitions import (
    IST,
    PROTECTIVE_ROLES,
    _events_save,
    _notify_rejection,
    _push_order,
    _transition,
)
from orders.services.updates import STATUS_FROM_BROKER, _order_apply_update_locked
from orders.services.validation import OrderSpec, ValidatedOrder, order_validate

logger = logging.getLogger(__name__)


def risk_gate(*, user: User, intent: OrderIntent, role: str) -> None:
    """The one gate in front of the broker for everything that adds exposure: placing (the API, bulk legs,
    strategy fires, webhooks, re-entries, all through `order_place`) and modifications that grow an order (checked
    as the order will stand). Raises 422 RISK_REJECTED, or 403 PLAN_REQUIRED for live exposure without the plan.

    The check is the risk engine's, registered through `orders.hooks`; without one registered, every order is
    refused."""
    pre_trade_check_run(user=user, intent=intent)
    if intent.account.broker != Broker.PAPER and role == LegRole.ENTRY and not intent.reduces_position:
        # Only new exposure needs the plan: exits (the user's, a strategy's, the RMS's) always go out.
        require_live_trading(user=user)


@pushes_batched()
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
    day = trading_snapshot(user=user, day=timezone.localtime(timezone.now(), IST).date())
    reduces = _reduces_position(
        account=validated.account,
        symbol=spec.symbol,
        product=spec.product,
        side=spec.side,
        quantity=spec.quantity,
        held=day.held(account_id=validated.account.pk, symbol=spec.symbol, product=spec.product),
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
            orders_today=day.orders_today,
            open_symbols=day.open_symbols(),
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
    # Created and moved to SUBMITTING before its first save: one INSERT of the order, one of its two events.
    events = [OrderEvent(order=order, to_status=OrderStatus.PENDING, source=source)]
    _transition(order, OrderStatus.SUBMITTING, source=source, events=events)
    order.save(force_insert=True)
    _events_save(events)
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
    # A broker that knows, without another call, how the order stood when it took it (the paper exchange) lets us
    # record the acceptance and what it says (a fill) in one transaction; others are asked after the acceptance
    # is recorded, so a lost answer to that question never loses the broker's order id.
    as_placed = getattr(adapter, "order_as_placed", None)
    update = as_placed(broker_order_id) if as_placed is not None else None
    if update is not None:
        order = _order_mark_accepted(order_id=order.pk, broker_order_id=broker_order_id, update=update)
        failpoint("orders.submit.accepted")
        if order.target is not None or order.stop_loss is not None:
            order.refresh_from_db()  # its exits went out after the commit, and marked it
        return order
    order = _order_mark_accepted(order_id=order.pk, broker_order_id=broker_order_id)
    failpoint("orders.submit.accepted")
    try:
        update = adapter.order(broker_order_id)
    except BrokerError as error:
        logger.info("could not refresh %s from the broker: %s", order.pk, error.detail)
        _push_order(order)
        return order
    if update.filled_quantity == 0 and STATUS_FROM_BROKER[update.status] == order.status == OrderStatus.OPEN:
        # Resting as we recorded it: nothing to apply, the user is told it is working.
        _push_order(order)
        return order
    order = _order_settle_placed(order_id=order.pk, update=update)
    if order.target is not None or order.stop_loss is not None:
        # Its exits went out after the commit, and marked it.
        order.refresh_from_db()
    return order


@transaction.atomic
def _order_settle_refused(*, order_id: str, error: BrokerError) -> Order:
    order = order_lock(order_id=order_id)
    if order.status == OrderStatus.SUBMITTING:
        _transition(order, OrderStatus.REJECTED, source=OrderSource.BROKER, message=error.detail)
        order.save()
        _push_order(order)
        _notify_rejection(order)
    return order


@transaction.atomic
def _order_mark_unknown(*, order_id: str, error: BrokerError) -> Order:
    order = order_lock(order_id=order_id)
    if order.status == OrderStatus.SUBMITTING:
        _transition(
            order, OrderStatus.UNKNOWN, source=OrderSource.BROKER, message=f"No answer from the broker: {error.detail}"
        )
        order.save()
        _push_order(order)
        task_send_on_commit(
            name="orders.tasks.reconcile_account",
            args=(order.account_id,),
            countdown=settings.ORDER_RECONCILE_DELAY_SECONDS,
        )
    return order


@transaction.atomic
def _order_mark_accepted(*, order_id: str, broker_order_id: str, update: BrokerOrder | None = None) -> Order:
    """The broker took it: its id is recorded at once (with the OPEN event), before anything else is asked. With
    `update` (what the broker said of it when it took it), that is applied in the same transaction, with one save
    and one push."""
    order = order_lock(order_id=order_id, related=("account", "user") if update is not None else ("account",))
    if not order.broker_order_id:
        order.broker_order_id = broker_order_id
    order.submitted_at = timezone.now()
    events: list[OrderEvent] = []
    _transition(order, OrderStatus.OPEN, source=OrderSource.BROKER, message="", events=events)
    if update is not None:
        return _order_apply_update_locked(
            order,
            update=update,
            source=OrderSource.BROKER,
            settle_pending=True,
            fresh=True,
            changed=True,
            events=events,
        )
    order.save(update_fields=["broker_order_id", "submitted_at", "status", "status_message", "updated_at"])
    _events_save(events)
    return order


@transaction.atomic
def _order_settle_placed(*, order_id: str, update: BrokerOrder) -> Order:
    """What the broker says of the order just placed (a paper MARKET order: filled), applied as any broker news is,
    then pushed once."""
    order = order_lock(order_id=order_id, related=("account", "user"))
    return _order_apply_update_locked(
        order, update=update, source=OrderSource.BROKER, settle_pending=True, fresh=True, changed=True
    )
