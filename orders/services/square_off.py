"""Closing positions: cancel what is pending in scope, then market orders within the freeze quantity."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from accounts.models import User
from accounts.services import audit_record
from algoterm.api.errors import AppError, InvalidState
from algoterm.config import freeze_quantity
from brokers.protocol import BrokerError, OrderType, Side
from brokers.selectors import broker_account_get, broker_account_list
from marketdata.instruments import instrument_get
from orders.models import LIVE_STATUSES, LegRole, Order, OrderSource, Position
from orders.services.modify_cancel import order_cancel
from orders.services.placement import order_place
from orders.services.validation import OrderSpec


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
    accounts = broker_account_list(user=user)
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
