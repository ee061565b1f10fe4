"""Settling our orders from the broker's own books: the periodic pass, a retry's settle, a pushed signal."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from algoterm.api.errors import AppError
from brokers.gateway import adapter_for
from brokers.models import AccountStatus, BrokerAccount
from brokers.protocol import BrokerError, BrokerOrder
from brokers.selectors import broker_account_find
from orders.locks import order_lock
from orders.models import (
    FINAL_STATUSES,
    LIVE_STATUSES,
    IdempotencyRecord,
    LegRole,
    Order,
    OrderEvent,
    OrderSource,
    OrderStatus,
)
from orders.services.exits import order_exits_place
from orders.services.exposure import _held
from orders.services.idempotency import orders_placed_under_claim
from orders.services.placement import order_submit
from orders.services.transitions import EXIT_ROLES, PROTECTIVE_ROLES, _notify_rejection, _push_order, _transition
from orders.services.updates import _rejected_by_inference, order_apply_update, order_refresh

logger = logging.getLogger(__name__)


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
    account = broker_account_find(account_id=account_id)
    if account is None:
        raise BrokerAccount.DoesNotExist(f"No broker account {account_id}.")
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
        locked = order_lock(order_id=order.pk)
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
    order = order_lock(order_id=order_id)
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


def orders_settle_under_claim(*, claim: IdempotencyRecord, stale: bool) -> list[Order]:
    """The orders placed under an Idempotency-Key claim, each settled from its broker's order book first, so a
    retry learns what the broker holds, never what a dead process last wrote."""
    return [
        order_settle_from_broker(order_id=order.pk, stale=stale) for order in orders_placed_under_claim(claim=claim)
    ]
