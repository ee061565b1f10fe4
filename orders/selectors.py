"""Reads of orders, trades, positions and the portfolio, always scoped to the user who asks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet

from accounts.models import User
from algoterm.api.errors import NotFound
from brokers.adapters.base import BrokerError, Quote
from brokers.gateway import adapter_for
from brokers.models import AccountStatus, BrokerAccount
from brokers.prices import quote_for
from brokers.selectors import broker_account_get
from marketdata.quotes import quotes_get
from orders.models import LIVE_STATUSES, Order, Position, Trade

PAISE = Decimal("0.01")


def order_list(
    *,
    user: User,
    statuses: list[str] | None = None,
    account_id: str | None = None,
    symbol: str | None = None,
    side: str | None = None,
    source: str | None = None,
    tag: str | None = None,
    open_only: bool | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[Order]:
    orders = Order.objects.filter(user=user)
    if statuses:
        orders = orders.filter(status__in=statuses)
    if open_only is True:
        orders = orders.filter(status__in=LIVE_STATUSES)
    elif open_only is False:
        orders = orders.exclude(status__in=LIVE_STATUSES)
    if account_id:
        orders = orders.filter(account_id=account_id)
    if symbol:
        orders = orders.filter(symbol=symbol)
    if side:
        orders = orders.filter(side=side)
    if source:
        orders = orders.filter(source=source)
    if tag:
        orders = orders.filter(tag=tag)
    if start:
        orders = orders.filter(created_at__gte=start)
    if end:
        orders = orders.filter(created_at__lte=end)
    return orders.order_by("-created_at", "-id")


def order_get(*, user: User, order_id: str, with_events: bool = False) -> Order:
    orders = Order.objects.filter(user=user, pk=order_id)
    if with_events:
        orders = orders.prefetch_related("events", "exits")
    order = orders.first()
    if order is None:
        raise NotFound(f"No order {order_id}.")
    return order


def trade_list(
    *,
    user: User,
    account_id: str | None = None,
    symbol: str | None = None,
    order_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[Trade]:
    trades = Trade.objects.filter(user=user)
    if account_id:
        trades = trades.filter(account_id=account_id)
    if symbol:
        trades = trades.filter(symbol=symbol)
    if order_id:
        trades = trades.filter(order_id=order_id)
    if start:
        trades = trades.filter(traded_at__gte=start)
    if end:
        trades = trades.filter(traded_at__lte=end)
    return trades.order_by("-traded_at", "-id")


def position_list(*, user: User, account_id: str | None = None, open_only: bool = False) -> QuerySet[Position]:
    positions = Position.objects.filter(user=user)
    if account_id:
        positions = positions.filter(account_id=account_id)
    if open_only:
        positions = positions.exclude(quantity=0)
    return positions.order_by("account_id", "symbol", "product")


def last_prices(symbols: list[str]) -> dict[str, Quote]:
    """Latest quotes from the cache in one round trip; symbols the feed has not quoted get the exchange's price."""
    quotes = quotes_get(sorted(set(symbols)))
    for symbol in set(symbols) - set(quotes):
        quotes[symbol] = quote_for(symbol)
    return quotes


@dataclass(frozen=True)
class PositionBook:
    positions: list[Position]
    quotes: dict[str, Quote]
    consolidated: list[dict[str, Any]]
    totals: dict[str, Any]


def _unrealized(position: Position, quotes: dict[str, Quote]) -> Decimal:
    quote = quotes.get(position.symbol)
    if quote is None or position.quantity == 0:
        return Decimal("0")
    return ((quote.last_price - position.average_price) * position.quantity).quantize(PAISE)


def position_book(*, user: User, account_id: str | None = None, open_only: bool = False) -> PositionBook:
    """Positions with LTP and unrealized PnL, grouped across accounts, and the totals."""
    if account_id:
        broker_account_get(user=user, account_id=account_id)
    positions = list(position_list(user=user, account_id=account_id, open_only=open_only))
    quotes = last_prices([position.symbol for position in positions])
    groups: dict[tuple[str, str], list[Position]] = defaultdict(list)
    for position in positions:
        groups[(position.symbol, position.product)].append(position)
    consolidated = []
    for (symbol, product), members in groups.items():
        quantity = sum(member.quantity for member in members)
        same_side = [m for m in members if m.quantity and (m.quantity > 0) == (quantity > 0)]
        held = sum(abs(m.quantity) for m in same_side)
        average = (
            (sum(abs(m.quantity) * m.average_price for m in same_side) / held).quantize(PAISE) if held else Decimal("0")
        )
        ltp = quotes[symbol].last_price if symbol in quotes else None
        consolidated.append(
            {
                "symbol": symbol,
                "product": product,
                "quantity": quantity,
                "average_price": average,
                "ltp": ltp,
                "unrealized_pnl": sum((_unrealized(m, quotes) for m in members), Decimal("0")),
                "realized_pnl": sum((m.realized_pnl for m in members), Decimal("0")),
                "day_realized_pnl": sum((m.day_realized_pnl for m in members), Decimal("0")),
                "accounts": sorted({m.account_id for m in members}),
            }
        )
    return PositionBook(
        positions=positions, quotes=quotes, consolidated=consolidated, totals=_totals(positions, quotes)
    )


def _totals(positions: list[Position], quotes: dict[str, Quote]) -> dict[str, Any]:
    unrealized = sum((_unrealized(p, quotes) for p in positions), Decimal("0"))
    day_realized = sum((p.day_realized_pnl for p in positions), Decimal("0"))
    return {
        "realized_pnl": sum((p.realized_pnl for p in positions), Decimal("0")),
        "unrealized_pnl": unrealized,
        "day_pnl": day_realized + unrealized,
        "open_positions": sum(1 for p in positions if p.quantity),
    }


def portfolio_get(*, user: User) -> dict[str, Any]:
    """Holdings read live from each connected broker account, with our positions and PnL. An account whose broker
    cannot be reached is listed in `unavailable_accounts` rather than failing the whole portfolio."""
    holdings: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    accounts = BrokerAccount.objects.filter(owner=user, deleted_at__isnull=True).order_by("created_at")
    for account in accounts:
        if account.status != AccountStatus.CONNECTED:
            problems.append(
                {"account_id": account.pk, "error_code": "BROKER_SESSION_EXPIRED", "detail": f"{account.status}"}
            )
            continue
        try:
            broker_holdings = adapter_for(account).holdings()
        except BrokerError as error:
            problems.append({"account_id": account.pk, "error_code": str(error.code), "detail": error.detail})
            continue
        for holding in broker_holdings:
            holdings.append({"account_id": account.pk, "holding": holding})
    quotes = last_prices([entry["holding"].symbol for entry in holdings])
    rendered = []
    for entry in holdings:
        holding = entry["holding"]
        ltp = quotes[holding.symbol].last_price if holding.symbol in quotes else holding.last_price
        rendered.append(
            {
                "account_id": entry["account_id"],
                "symbol": holding.symbol,
                "quantity": holding.quantity,
                "average_price": holding.average_price,
                "ltp": ltp,
                "value": (ltp * holding.quantity).quantize(PAISE) if ltp is not None else None,
                "unrealized_pnl": ((ltp - holding.average_price) * holding.quantity).quantize(PAISE)
                if ltp is not None
                else None,
            }
        )
    book = position_book(user=user)
    return {
        "holdings": rendered,
        "positions": book.positions,
        "quotes": book.quotes,
        "holdings_value": sum((h["value"] or Decimal("0") for h in rendered), Decimal("0")),
        "holdings_unrealized_pnl": sum((h["unrealized_pnl"] or Decimal("0") for h in rendered), Decimal("0")),
        "totals": book.totals,
        "unavailable_accounts": problems,
    }


# --- for the risk engine -----------------------------------------------------------------------------------------


def orders_placed_on(*, user: User, day) -> int:
    """Orders the user placed on the IST trading day `day` (rejected ones count, as brokers count them)."""
    from datetime import datetime, time, timedelta
    from zoneinfo import ZoneInfo

    start = datetime.combine(day, time(0), tzinfo=ZoneInfo("Asia/Kolkata"))
    return Order.objects.filter(user=user, created_at__gte=start, created_at__lt=start + timedelta(days=1)).count()


def open_position_symbols(*, user: User) -> set[tuple[str, str]]:
    return set(Position.objects.filter(user=user).exclude(quantity=0).values_list("symbol", "product").distinct())


def positions_for_mtm(*, user_ids: list[str] | None, day) -> list[tuple]:
    """(user, account, symbol, product, quantity, average price, today's realized PnL) of every position that is
    open or traded on `day`: one query, the monitor's whole input."""
    positions = Position.objects.filter(Q(trading_day=day) | ~Q(quantity=0))
    if user_ids is not None:
        positions = positions.filter(user_id__in=user_ids)
    rows = positions.values_list(
        "user_id", "account_id", "symbol", "product", "quantity", "average_price", "day_realized_pnl", "trading_day"
    )
    return [(*row[:6], row[6] if row[7] == day else Decimal("0")) for row in rows]


def users_with_open_positions_in(*, symbols: list[str]) -> list[str]:
    return list(
        Position.objects.filter(symbol__in=symbols)
        .exclude(quantity=0)
        .order_by()
        .values_list("user_id", flat=True)
        .distinct()
    )
