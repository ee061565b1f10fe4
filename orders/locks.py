"""The row locks of the order pipeline. A transaction locks at most one order row, then that order's position row, in
that order; each lock is of the row's own table only, so the account and user rows joined for reading are never
locked."""

from __future__ import annotations

from algoterm.locking import row_locked
from orders.models import Order, Position


def order_lock(*, order_id: str, related: tuple[str, ...] = ()) -> Order:
    """The order, re-read and locked until the transaction ends; `related` are read with it, unlocked."""
    orders = Order.objects.select_related(*related) if related else Order.objects.all()
    return row_locked(orders, pk=order_id)


def position_lock(*, account_id: str, symbol: str, product: str) -> Position:
    """The account's position in the instrument, re-read and locked until the transaction ends."""
    return row_locked(Position.objects.all(), account_id=account_id, symbol=symbol, product=product)
