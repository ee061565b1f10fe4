"""The simulated exchange: one matching engine and book-keeping behind the paper broker and every broker simulator.

Market orders fill at the quote with configurable slippage; limit and stop orders rest and fill when a published
quote crosses them; an order larger than the quoted depth fills partially and the rest waits. Every write locks the
exchange account's row, so concurrent requests for one account are applied one at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from algoterm.locking import row_locked, rows_locked
from brokers.models import SimAccount, SimHolding, SimOrder, SimPosition, SimTrade
from brokers.prices import TICK, quote_for, to_tick
from brokers.protocol import (
    MARGIN_RATE,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerPosition,
    BrokerTrade,
    Funds,
    Holding,
    InvalidInput,
    ModifyRequest,
    OrderRequest,
    OrderType,
    Product,
    Side,
    Validity,
    split_symbol,
)

logger = logging.getLogger(__name__)

RESTING = (
    BrokerOrderStatus.OPEN,
    BrokerOrderStatus.TRIGGER_PENDING,
    BrokerOrderStatus.PARTIALLY_FILLED,
)  # as the resting-symbol index
MAX_MODIFICATIONS = 25


class UnknownOrder(InvalidInput):
    pass


# Who hears of fills that happen without a request (a quote crossing a resting order): the order pipeline for
# paper accounts, the broker simulators for their postbacks. Called after commit with (venue, client_id, order ids).
OrderChangeListener = Callable[[str, str, list[str]], None]
_order_change_listeners: list[OrderChangeListener] = []


def order_changes_listen(listener: OrderChangeListener) -> None:
    if listener not in _order_change_listeners:
        _order_change_listeners.append(listener)


def order_changes_unlisten(listener: OrderChangeListener) -> None:
    if listener in _order_change_listeners:
        _order_change_listeners.remove(listener)


def _announce(account: SimAccount, order_ids: list[str]) -> None:
    def announce() -> None:
        for listener in list(_order_change_listeners):
            try:
                listener(account.venue, account.client_id, order_ids)
            except Exception:  # one listener's failure must not stop the others or the matching loop
                logger.exception("order change listener failed")

    transaction.on_commit(announce)


# --- matching (pure) -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fill:
    quantity: int
    price: Decimal


def _slipped(price: Decimal, side: str) -> Decimal:
    bps = Decimal(settings.PAPER_SLIPPAGE_BPS) / Decimal(10_000)
    return to_tick(price * (1 + bps) if side == Side.BUY else price * (1 - bps))


def is_triggered(order: SimOrder, last_price: Decimal) -> bool:
    if order.order_type not in (OrderType.SL, OrderType.SL_M) or order.triggered:
        return True
    return _trigger_crossed(order, last_price)


def _trigger_crossed(order: SimOrder, last_price: Decimal) -> bool:
    return last_price >= order.trigger_price if order.side == Side.BUY else last_price <= order.trigger_price


def match(order: SimOrder, quote) -> Fill | None:
    """What of `order` the quote fills now: at most the quoted depth, at the touch (market orders with slippage)."""
    if order.remaining <= 0 or not is_triggered(order, quote.last_price):
        return None
    buying = order.side == Side.BUY
    touch = quote.ask if buying else quote.bid
    depth = quote.ask_quantity if buying else quote.bid_quantity
    if touch is None or depth <= 0:
        return None
    if order.order_type in (OrderType.MARKET, OrderType.SL_M):
        price = _slipped(touch, order.side)
    else:
        crosses = touch <= order.price if buying else touch >= order.price
        if not crosses:
            return None
        price = touch
    return Fill(quantity=min(order.remaining, depth), price=price)


# --- book-keeping --------------------------------------------------------------------------------------------------


def exchange_account(*, venue: str, client_id: str, opening_balance: Decimal | None = None) -> SimAccount:
    defaults = {}
    if opening_balance is not None:
        defaults = {"opening_balance": opening_balance, "cash": opening_balance}
    account, _ = SimAccount.objects.get_or_create(venue=venue, client_id=client_id, defaults=defaults)
    return account


def _locked(account: SimAccount) -> SimAccount:
    return row_locked(SimAccount.objects.all(), pk=account.pk)


def exchange_account_locked(*, venue: str, client_id: str, opening_balance: Decimal | None = None) -> SimAccount:
    """The exchange account, read and locked in one query (created on first use); inside a transaction."""
    try:
        return row_locked(SimAccount.objects.all(), venue=venue, client_id=client_id)
    except SimAccount.DoesNotExist:
        account = exchange_account(venue=venue, client_id=client_id, opening_balance=opening_balance)
        return _locked(account)


def _validate(request: OrderRequest) -> None:
    split_symbol(request.symbol)
    if request.quantity <= 0:
        raise InvalidInput("Quantity must be positive.")
    if request.order_type in (OrderType.LIMIT, OrderType.SL) and (request.price is None or request.price <= 0):
        raise InvalidInput("Limit and SL orders need a positive price.")
    if request.order_type in (OrderType.SL, OrderType.SL_M) and (
        request.trigger_price is None or request.trigger_price <= 0
    ):
        raise InvalidInput("SL and SL-M orders need a positive trigger price.")
    for value in (request.price, request.trigger_price):
        if value is not None and value % TICK != 0:
            raise InvalidInput(f"Prices must be multiples of the tick size {TICK}.")


def _used_margin(
    account: SimAccount, *, exclude: SimOrder | None = None, positions: list[SimPosition] | None = None
) -> Decimal:
    used = Decimal("0")
    for position in account.positions.exclude(quantity=0) if positions is None else positions:
        if position.quantity == 0:
            continue
        used += abs(position.quantity) * position.average_price * MARGIN_RATE[Product(position.product)]
    for order in account.orders.filter(status__in=RESTING).exclude(pk=exclude.pk if exclude else None):
        reference = order.price or order.trigger_price or quote_for(order.symbol).last_price
        used += order.remaining * reference * MARGIN_RATE[Product(order.product)]
    return used.quantize(Decimal("0.01"))


def _reduces_position(account: SimAccount, request: OrderRequest, *, position: SimPosition | None = None) -> bool:
    if position is None:
        position = account.positions.filter(symbol=request.symbol, product=request.product).first()
    if position is None or position.quantity == 0:
        return False
    signed = request.quantity if request.side == Side.BUY else -request.quantity
    return (position.quantity > 0 > signed or position.quantity < 0 < signed) and abs(signed) <= abs(position.quantity)


def _rejection_reason(
    account: SimAccount,
    request: OrderRequest,
    *,
    replacing: SimOrder | None = None,
    positions: dict[tuple[str, str], SimPosition] | None = None,
    last_price: Decimal | None = None,
) -> str:
    """Why the exchange refuses `request` ("" when it accepts); `replacing` is the order a modification rewrites,
    whose own blocked margin is not counted against it. `positions` (all the account's, by symbol and product) and
    `last_price` are what the caller already read."""
    if request.product == Product.CNC and request.side == Side.SELL:
        held = account.holdings.filter(symbol=request.symbol).values_list("quantity", flat=True).first() or 0
        if positions is None:
            position = account.positions.filter(symbol=request.symbol, product=Product.CNC).first()
        else:
            position = positions.get((request.symbol, Product.CNC))
        available = held + (position.quantity if position else 0)
        if available < request.quantity:
            return f"Insufficient holdings: {available} available to sell."
    own = None if positions is None else positions.get((request.symbol, request.product))
    if (positions is None or own is not None) and _reduces_position(account, request, position=own):
        return ""
    reference = request.price or request.trigger_price or last_price or quote_for(request.symbol).last_price
    required = request.quantity * reference * MARGIN_RATE[request.product]
    held_positions = None if positions is None else list(positions.values())
    available_cash = account.cash - _used_margin(account, exclude=replacing, positions=held_positions)
    if required > available_cash:
        return f"Insufficient funds: required {required:.2f}, available {available_cash:.2f}."
    return ""


@transaction.atomic
def place(*, account: SimAccount, request: OrderRequest) -> SimOrder:
    """Validation errors raise InvalidInput; an order the exchange refuses (funds, holdings) is stored REJECTED."""
    _validate(request)
    return place_locked(account=_locked(account), request=request)


def place_locked(*, account: SimAccount, request: OrderRequest) -> SimOrder:
    """`place` for a caller that holds the account's row lock in its transaction (`exchange_account_locked`)."""
    _validate(request)
    # Everything the order needs is read once: the account's positions (its own, the margin in use, the one a fill
    # moves) and the quote (the margin reference, the fill).
    positions = {(position.symbol, position.product): position for position in account.positions.all()}
    quote = quote_for(request.symbol)
    reason = _rejection_reason(account, request, positions=positions, last_price=quote.last_price)
    order = SimOrder(
        account=account,
        symbol=request.symbol,
        side=request.side,
        quantity=request.quantity,
        order_type=request.order_type,
        product=request.product,
        price=request.price,
        trigger_price=request.trigger_price,
        validity=request.validity,
        tag=request.tag,
        algo_id=request.algo_id,
        status=BrokerOrderStatus.REJECTED if reason else _resting_status(request.order_type),
        status_message=reason,
    )
    fill = None if reason else _match_now(order, quote)
    # One INSERT of the order as it stands after meeting the quote; its trade and position follow.
    order.save(force_insert=True)
    if fill is not None:
        _apply_fill(account, order, fill, position=positions.get((order.symbol, order.product)), read=True)
    return order


def _resting_status(order_type: str) -> BrokerOrderStatus:
    return BrokerOrderStatus.TRIGGER_PENDING if order_type in (OrderType.SL, OrderType.SL_M) else BrokerOrderStatus.OPEN


def _get_order(account: SimAccount, order_id: str) -> SimOrder:
    pk = SimOrder.pk_from_order_id(order_id)
    order = rows_locked(SimOrder.objects.filter(account=account, pk=pk)).first() if pk else None
    if order is None:
        raise UnknownOrder(f"Order {order_id} not found.")
    return order


@transaction.atomic
def modify(*, account: SimAccount, order_id: str, request: ModifyRequest) -> SimOrder:
    account = _locked(account)
    order = _get_order(account, order_id)
    if order.status not in RESTING:
        raise InvalidInput(f"Order {order_id} is {order.status.lower()} and cannot be modified.")
    if order.modifications >= MAX_MODIFICATIONS:
        raise InvalidInput(f"An order can be modified at most {MAX_MODIFICATIONS} times.")
    if request.quantity is not None:
        if request.quantity <= order.filled_quantity:
            raise InvalidInput("Quantity must be more than what is already filled; cancel the rest instead.")
        order.quantity = request.quantity
    for name in ("price", "trigger_price", "order_type"):
        if getattr(request, name) is not None:
            setattr(order, name, getattr(request, name))
    modified = OrderRequest(
        symbol=order.symbol,
        side=Side(order.side),
        quantity=order.remaining,
        order_type=OrderType(order.order_type),
        product=Product(order.product),
        price=order.price,
        trigger_price=order.trigger_price,
    )
    _validate(modified)
    reason = _rejection_reason(account, modified, replacing=order)
    if reason:
        raise InvalidInput(f"Modification refused: {reason}")
    order.modifications += 1
    order.updated_at = timezone.now()
    order.save()
    _try_fill(account, order)
    return order


@transaction.atomic
def cancel(*, account: SimAccount, order_id: str) -> SimOrder:
    account = _locked(account)
    order = _get_order(account, order_id)
    if order.status not in RESTING:
        raise InvalidInput(f"Order {order_id} is {order.status.lower()} and cannot be cancelled.")
    order.status = BrokerOrderStatus.CANCELLED
    order.updated_at = timezone.now()
    order.save(update_fields=["status", "updated_at"])
    return order


def _match_now(order: SimOrder, quote) -> Fill | None:
    """Meet the quote: trigger a stop it crosses, take the fill it gives (the order's quantities and status are
    updated; the trade and position are the caller's, through `_apply_fill`), cancel an IOC's remainder. Sets
    `order._changed` when anything moved."""
    changed = False
    if order.order_type in (OrderType.SL, OrderType.SL_M) and not order.triggered:
        if _trigger_crossed(order, quote.last_price):
            order.triggered, order.status, changed = True, BrokerOrderStatus.OPEN, True
    fill = match(order, quote)
    if fill is not None:
        filled_value = (order.average_price or Decimal("0")) * order.filled_quantity + fill.price * fill.quantity
        order.filled_quantity += fill.quantity
        order.average_price = (filled_value / order.filled_quantity).quantize(Decimal("0.01"))
        order.status = BrokerOrderStatus.FILLED if order.remaining == 0 else BrokerOrderStatus.PARTIALLY_FILLED
        changed = True
    if order.validity == Validity.IOC and order.remaining > 0 and order.status in RESTING:
        order.status, order.status_message, changed = BrokerOrderStatus.CANCELLED, "IOC remainder cancelled.", True
    if changed:
        order.updated_at = timezone.now()
    order._changed = changed
    return fill


def _try_fill(account: SimAccount, order: SimOrder) -> int:
    """Returns 1 if the order (partly) filled now, else 0."""
    fill = _match_now(order, quote_for(order.symbol))
    if order._changed:
        order.save()
    if fill is not None:
        _apply_fill(account, order, fill)
    return 1 if fill else 0


def _apply_fill(
    account: SimAccount, order: SimOrder, fill: Fill, *, position: SimPosition | None = None, read: bool = False
) -> None:
    """The trade and the position of a fill already counted on `order`, under the account's row lock (which every
    write to its positions holds, so the position row needs no lock of its own); `read` when the caller has read
    the position already (`position`, None when there is none yet)."""
    SimTrade.objects.create(order=order, account=account, quantity=fill.quantity, price=fill.price)
    if position is None and not read:
        position = SimPosition.objects.filter(account=account, symbol=order.symbol, product=order.product).first()
    if position is None:
        position = SimPosition(account=account, symbol=order.symbol, product=order.product)
    signed = fill.quantity if order.side == Side.BUY else -fill.quantity
    if order.side == Side.BUY:
        position.buy_quantity += fill.quantity
    else:
        position.sell_quantity += fill.quantity
    if position.quantity == 0 or (position.quantity > 0) == (signed > 0):
        total = abs(position.quantity) + fill.quantity
        position.average_price = (
            (abs(position.quantity) * position.average_price + fill.quantity * fill.price) / total
        ).quantize(Decimal("0.01"))
        position.quantity += signed
    else:
        closed = min(abs(position.quantity), fill.quantity)
        direction = 1 if position.quantity > 0 else -1
        realized = (closed * (fill.price - position.average_price) * direction).quantize(Decimal("0.01"))
        position.realized_pnl += realized
        account.cash += realized
        account.save(update_fields=["cash"])
        position.quantity += signed
        if position.quantity == 0:
            position.average_price = Decimal("0")
        elif (position.quantity > 0) != (direction > 0):
            position.average_price = fill.price
    position.save()


def match_resting_orders_for(*, symbols: list[str]) -> int:
    """Fills caused by new quotes for `symbols`; one query finds the few symbols that have resting orders. It asks
    for every resting symbol rather than filtering by `symbols`: a feed's batch names thousands, and sending them as
    query parameters cost more than the rest of the batch's way."""
    resting = SimOrder.objects.filter(status__in=RESTING).order_by().values_list("symbol", flat=True).distinct()
    moved = set(symbols)
    return sum(match_resting_orders(symbol=symbol) for symbol in set(resting) if symbol in moved)


def match_resting_orders(*, symbol: str) -> int:
    """Let every resting order on `symbol` meet the current quote; each account is locked in its own transaction."""
    fills = 0
    # order_by(): the model's default ordering (id) would otherwise join the DISTINCT and repeat an account once per
    # resting order, letting one quote's depth fill its orders again.
    account_ids = (
        SimOrder.objects.filter(symbol=symbol, status__in=RESTING)
        .order_by()
        .values_list("account_id", flat=True)
        .distinct()
    )
    for account_id in list(account_ids):
        with transaction.atomic():
            account = row_locked(SimAccount.objects.all(), pk=account_id)
            filled = [
                order.order_id
                for order in rows_locked(SimOrder.objects.filter(account=account, symbol=symbol, status__in=RESTING))
                if _try_fill(account, order)
            ]
            if filled:
                _announce(account, filled)
            fills += len(filled)
    return fills


# --- reads, as the broker interface's values ----------------------------------------------------------------------


def to_broker_order(order: SimOrder) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=order.order_id,
        symbol=order.symbol,
        side=Side(order.side),
        quantity=order.quantity,
        filled_quantity=order.filled_quantity,
        order_type=OrderType(order.order_type),
        product=Product(order.product),
        status=BrokerOrderStatus(order.status),
        price=order.price,
        trigger_price=order.trigger_price,
        average_price=order.average_price,
        validity=Validity(order.validity),
        tag=order.tag,
        status_message=order.status_message,
        placed_at=order.created_at,
        updated_at=order.updated_at,
    )


def orders(*, account: SimAccount) -> list[SimOrder]:
    return list(account.orders.all())


def get_order(*, account: SimAccount, order_id: str) -> SimOrder:
    pk = SimOrder.pk_from_order_id(order_id)
    order = account.orders.filter(pk=pk).first() if pk else None
    if order is None:
        raise UnknownOrder(f"Order {order_id} not found.")
    return order


def trades(*, account: SimAccount, order_id: str | None = None) -> list[BrokerTrade]:
    rows = account.trades.select_related("order")
    if order_id is not None:
        rows = rows.filter(order__pk=SimOrder.pk_from_order_id(order_id))
    return [
        BrokerTrade(
            trade_id=trade.trade_id,
            broker_order_id=trade.order.order_id,
            symbol=trade.order.symbol,
            side=Side(trade.order.side),
            quantity=trade.quantity,
            price=trade.price,
            traded_at=trade.traded_at,
        )
        for trade in rows
    ]


def positions(*, account: SimAccount) -> list[BrokerPosition]:
    result = []
    for position in account.positions.all():
        last = quote_for(position.symbol).last_price
        result.append(
            BrokerPosition(
                symbol=position.symbol,
                product=Product(position.product),
                quantity=position.quantity,
                average_price=position.average_price,
                last_price=last,
                realized_pnl=position.realized_pnl,
                unrealized_pnl=((last - position.average_price) * position.quantity).quantize(Decimal("0.01")),
                buy_quantity=position.buy_quantity,
                sell_quantity=position.sell_quantity,
            )
        )
    return result


def holdings(*, account: SimAccount) -> list[Holding]:
    return [
        Holding(
            symbol=holding.symbol,
            quantity=holding.quantity,
            average_price=holding.average_price,
            last_price=quote_for(holding.symbol).last_price,
        )
        for holding in account.holdings.all()
    ]


def funds(*, account: SimAccount) -> Funds:
    account.refresh_from_db()
    used = _used_margin(account)
    return Funds(available_cash=account.cash - used, used_margin=used, opening_balance=account.opening_balance)


def holding_add(*, account: SimAccount, symbol: str, quantity: int, average_price: Decimal) -> SimHolding:
    """Seed a delivery holding (demo data and tests)."""
    holding, _ = SimHolding.objects.update_or_create(
        account=account, symbol=symbol, defaults={"quantity": quantity, "average_price": average_price}
    )
    return holding
