"""Reads of orders, trades, positions and the portfolio, always scoped to the user who asks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import (
    Case,
    Count,
    IntegerField,
    Min,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
    prefetch_related_objects,
)
from django.db.models.functions import Cast, ExtractHour

from accounts.models import User
from algoterm.api.errors import NotFound
from brokers.gateway import adapter_for
from brokers.models import AccountStatus, Broker
from brokers.prices import synthetic_quote
from brokers.protocol import BrokerError, Quote
from brokers.selectors import broker_account_get, broker_account_list
from marketdata.quotes import quotes_get
from orders.models import FINAL_STATUSES, LIVE_STATUSES, LegRole, Order, OrderEvent, OrderStatus, Position, Trade

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


def order_detail_complete(*, user: User, order: Order) -> Order:
    """`order_get(..., with_events=True)` for an order in hand, as its last save left it (the one just placed): only
    its events, and its exit legs if it can have any, are read."""
    if order.user_id != user.pk:
        raise NotFound(f"No order {order.pk}.")
    lookups = ["events"]
    if order.target is not None or order.stop_loss is not None:
        lookups.append("exits")
    prefetch_related_objects([order], *lookups)
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
    """Latest quotes from the cache in one round trip; symbols the feed has not quoted get the exchange's price
    (`quote_for`'s, without asking the cache again for each)."""
    quotes = quotes_get(sorted(set(symbols)))
    for symbol in set(symbols) - set(quotes):
        quotes[symbol] = synthetic_quote(symbol)
    return quotes


class PositionRow(NamedTuple):
    """A position as the position book reads it: a plain row, as a book of hundreds is read on every request."""

    account_id: str
    symbol: str
    product: str
    quantity: int
    average_price: Decimal
    realized_pnl: Decimal
    day_buy_quantity: int
    day_sell_quantity: int
    day_buy_value: Decimal
    day_sell_value: Decimal
    day_realized_pnl: Decimal
    trading_day: date
    updated_at: datetime

    @property
    def day_quantity(self) -> int:
        return self.day_buy_quantity - self.day_sell_quantity


def position_rows(*, user: User, account_id: str | None = None, open_only: bool = False) -> list[PositionRow]:
    """`position_list` as plain rows, in the same order."""
    # The time is read as its text: the driver's loader for timestamps with a time zone costs more than the rest of
    # the row, and the text carries the offset (or is UTC, as SQLite stores it).
    rows = position_list(user=user, account_id=account_id, open_only=open_only).values_list(
        *PositionRow._fields[:-1], Cast("updated_at", TextField())
    )
    return [PositionRow(*row[:-1], _timestamp(row[-1])) for row in rows]


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PositionBook:
    positions: list[PositionRow]
    quotes: dict[str, Quote]
    consolidated: list[dict[str, Any]]
    totals: dict[str, Any]


def position_book(*, user: User, account_id: str | None = None, open_only: bool = False) -> PositionBook:
    """Positions with LTP and unrealized PnL, grouped across accounts, and the totals."""
    if account_id:
        broker_account_get(user=user, account_id=account_id)
    positions = position_rows(user=user, account_id=account_id, open_only=open_only)
    quotes = last_prices([position.symbol for position in positions])
    zero = Decimal("0")
    prices = {symbol: quote.last_price for symbol, quote in quotes.items()}
    # One pass: a book of hundreds of positions is summed on every request.
    groups: dict[tuple[str, str], list] = {}
    realized_total = day_realized_total = unrealized_total = zero
    open_positions = 0
    for position in positions:
        quantity, average = position.quantity, position.average_price
        ltp = prices.get(position.symbol)
        unrealized = ((ltp - average) * quantity).quantize(PAISE) if ltp is not None and quantity else zero
        group = groups.get((position.symbol, position.product))
        if group is None:
            group = groups[(position.symbol, position.product)] = [[], 0, zero, zero, zero, set()]
        group[0].append(position)
        group[1] += quantity
        group[2] += unrealized
        group[3] += position.realized_pnl
        group[4] += position.day_realized_pnl
        group[5].add(position.account_id)
        realized_total += position.realized_pnl
        day_realized_total += position.day_realized_pnl
        unrealized_total += unrealized
        open_positions += 1 if quantity else 0
    consolidated = []
    for (symbol, product), (members, quantity, unrealized, realized, day_realized, accounts) in groups.items():
        same_side = [m for m in members if m.quantity and (m.quantity > 0) == (quantity > 0)]
        held = sum(abs(m.quantity) for m in same_side)
        average = (sum(abs(m.quantity) * m.average_price for m in same_side) / held).quantize(PAISE) if held else zero
        consolidated.append(
            {
                "symbol": symbol,
                "product": product,
                "quantity": quantity,
                "average_price": average,
                "ltp": prices.get(symbol),
                "unrealized_pnl": unrealized,
                "realized_pnl": realized,
                "day_realized_pnl": day_realized,
                "accounts": sorted(accounts),
            }
        )
    totals = {
        "realized_pnl": realized_total,
        "unrealized_pnl": unrealized_total,
        "day_pnl": day_realized_total + unrealized_total,
        "open_positions": open_positions,
    }
    return PositionBook(positions=positions, quotes=quotes, consolidated=consolidated, totals=totals)


def portfolio_get(*, user: User) -> dict[str, Any]:
    """Holdings read live from each connected broker account, with our positions and PnL. An account whose broker
    cannot be reached is listed in `unavailable_accounts` rather than failing the whole portfolio."""
    holdings: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    for account in broker_account_list(user=user):
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
    start = datetime.combine(day, time(0), tzinfo=ZoneInfo("Asia/Kolkata"))
    return Order.objects.filter(user=user, created_at__gte=start, created_at__lt=start + timedelta(days=1)).count()


@dataclass(frozen=True)
class TradingSnapshot:
    """What the order path reads of the user's day in one statement before the risk check: how many orders they
    placed today, and their open positions by (account id, symbol, product) with the signed quantity held."""

    orders_today: int
    open_positions: dict[tuple[str, str, str], int]

    def held(self, *, account_id: str, symbol: str, product: str) -> int:
        return self.open_positions.get((account_id, symbol, product), 0)

    def open_symbols(self) -> frozenset[tuple[str, str]]:
        return frozenset((symbol, product) for _, symbol, product in self.open_positions)


def trading_snapshot(*, user: User, day: date) -> TradingSnapshot:
    """`orders_placed_on` and the user's open positions together: one round trip on every order."""
    start = datetime.combine(day, time(0), tzinfo=ZoneInfo("Asia/Kolkata"))
    orders, positions = Order._meta.db_table, Position._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT placed.n, p.account_id, p.symbol, p.product, p.quantity "  # noqa: S608 (table names are ours)
            f"FROM (SELECT count(*) AS n FROM {orders} WHERE user_id = %s AND created_at >= %s AND created_at < %s) "
            f"AS placed LEFT JOIN {positions} AS p ON p.user_id = %s AND p.quantity <> 0",
            [user.pk, start, start + timedelta(days=1), user.pk],
        )
        rows = cursor.fetchall()
    return TradingSnapshot(
        orders_today=rows[0][0],
        open_positions={(account_id, symbol, product): held for _, account_id, symbol, product, held in rows if symbol},
    )


def open_position_symbols(*, user: User) -> set[tuple[str, str]]:
    return set(Position.objects.filter(user=user).exclude(quantity=0).values_list("symbol", "product").distinct())


def _positions_for_mtm(*, user_ids: list[str] | None, day) -> QuerySet[Position]:
    positions = Position.objects.filter(Q(trading_day=day) | ~Q(quantity=0))
    if user_ids is not None:
        positions = positions.filter(user_id__in=user_ids)
    return positions


def mtm_symbols(*, user_ids: list[str] | None, day) -> list[str]:
    """The symbols of every position that is open or traded on `day` (of `user_ids`, or everyone's)."""
    return list(_positions_for_mtm(user_ids=user_ids, day=day).order_by().values_list("symbol", flat=True).distinct())


def mtm_user_ids(*, day) -> QuerySet:
    """The users with a position open or traded on `day`, as a query to filter other tables by in SQL."""
    return _positions_for_mtm(user_ids=None, day=day).order_by().values("user_id")


def mtm_by_account(
    *, user_ids: list[str] | None, day, prices: dict[str, Decimal]
) -> list[tuple[str, str, Decimal, int, int]]:
    """(user, account, MTM, open positions, open MIS positions) per account with a position open or traded on
    `day`: one aggregate query, the prices joined in SQL. MTM is today's realized PnL plus the unrealized PnL at
    `prices`, exact; a symbol missing from `prices` adds its realized PnL alone."""
    inner, inner_params = (
        _positions_for_mtm(user_ids=user_ids, day=day)
        .order_by()
        .values("user_id", "account_id", "symbol", "product", "quantity", "average_price", "day_realized_pnl")
        .annotate(today=Case(When(trading_day=day, then=Value(1)), default=Value(0), output_field=IntegerField()))
        .query.sql_with_params()
    )
    symbols, values = list(prices), [prices[symbol] for symbol in prices]
    if connection.vendor == "postgresql":
        quoted, quoted_params = "SELECT * FROM unnest(%s::varchar[], %s::numeric[])", [symbols, values]
    elif symbols:
        quoted = "VALUES " + ", ".join(["(%s, %s)"] * len(symbols))
        quoted_params = [item for pair in zip(symbols, (str(value) for value in values), strict=True) for item in pair]
    else:
        quoted, quoted_params = "SELECT NULL, NULL WHERE 1 = 0", []
    sql = f"""
        WITH quoted(symbol, ltp) AS ({quoted})
        SELECT p.user_id, p.account_id,
            COALESCE(SUM((quoted.ltp - p.average_price) * p.quantity), 0)
                + SUM(CASE WHEN p.today = 1 THEN p.day_realized_pnl ELSE 0 END),
            SUM(CASE WHEN p.quantity <> 0 THEN 1 ELSE 0 END),
            SUM(CASE WHEN p.quantity <> 0 AND p.product = 'MIS' THEN 1 ELSE 0 END)
        FROM ({inner}) AS p LEFT JOIN quoted ON quoted.symbol = p.symbol
        GROUP BY p.user_id, p.account_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*quoted_params, *inner_params])
        rows = cursor.fetchall()
    return [(user, account, _decimal(mtm), int(opened), int(mis)) for user, account, mtm, opened, mis in rows]


def _decimal(value) -> Decimal:
    # SQLite answers sums of decimals as floats; PostgreSQL as exact Decimals.
    return value if isinstance(value, Decimal) else Decimal(str(value))


def users_with_open_positions_in(*, symbols: list[str]) -> list[str]:
    return list(
        Position.objects.filter(symbol__in=symbols)
        .exclude(quantity=0)
        .order_by()
        .values_list("user_id", flat=True)
        .distinct()
    )


# --- a strategy's own orders and fills (orders carry the id of the strategy that placed them) ----------------------


def _strategy_orders(*, strategy_ref: str, placed_from: datetime, placed_until: datetime | None) -> QuerySet[Order]:
    orders = Order.objects.filter(strategy_ref=strategy_ref, created_at__gte=placed_from)
    if placed_until is not None:
        orders = orders.filter(created_at__lte=placed_until)
    return orders


def strategy_order_list(
    *,
    strategy_ref: str,
    placed_from: datetime,
    placed_until: datetime | None = None,
    statuses: Iterable[str] | None = None,
) -> list[Order]:
    """The orders the strategy `strategy_ref` placed in the window (with their accounts), newest first."""
    orders = _strategy_orders(strategy_ref=strategy_ref, placed_from=placed_from, placed_until=placed_until)
    if statuses is not None:
        orders = orders.filter(status__in=statuses)
    return list(orders.select_related("account"))


def strategy_fill_rows(
    *,
    strategy_ref: str,
    placed_from: datetime,
    placed_until: datetime | None = None,
    traded_from: datetime | None = None,
) -> list[tuple[str, str, str, str, int, Decimal]]:
    """(account id, symbol, product, side, quantity, price) of every fill of the orders the strategy `strategy_ref`
    placed in the window, traded since `traded_from` when given: one query."""
    trades = Trade.objects.filter(
        order__in=_strategy_orders(strategy_ref=strategy_ref, placed_from=placed_from, placed_until=placed_until)
    )
    if traded_from is not None:
        trades = trades.filter(traded_at__gte=traded_from)
    return list(trades.values_list("account_id", "symbol", "product", "side", "quantity", "price"))


def stop_loss_filled_get(*, entry_order_ids: list[str]) -> Order | None:
    """The newest filled stop-loss exit of any of the entry orders, if one filled."""
    return Order.objects.filter(
        parent_id__in=entry_order_ids, role=LegRole.STOP_LOSS, status=OrderStatus.FILLED
    ).first()


def position_quantity(*, account_id: str, symbol: str, product: str) -> int:
    """The account's net quantity in the instrument and product (0 without a position)."""
    position = Position.objects.filter(account_id=account_id, symbol=symbol, product=product).first()
    return position.quantity if position is not None else 0


# --- platform-wide, for the operator console (every user's orders) ---------------------------------------------------


def order_platform_day_figures(*, start: datetime, end: datetime, tz: tzinfo, top_rejections: int) -> dict[str, Any]:
    """Orders created in [start, end), every user's: placed, rejected and filled counts, orders and rejections per
    hour of `tz`, and the `top_rejections` most frequent rejection messages as (message, count)."""
    created = Order.objects.filter(created_at__gte=start, created_at__lt=end).order_by()
    counts = created.aggregate(
        placed=Count("pk"),
        rejected=Count("pk", filter=Q(status=OrderStatus.REJECTED)),
        filled=Count("pk", filter=Q(status=OrderStatus.FILLED)),
    )
    by_hour = created.annotate(hour=ExtractHour("created_at", tzinfo=tz)).values("hour")
    placed_by_hour = {row["hour"]: row["count"] for row in by_hour.annotate(count=Count("pk"))}
    rejected_by_hour = {
        row["hour"]: row["count"]
        for row in by_hour.filter(status=OrderStatus.REJECTED).annotate(count=Count("pk"))
        if row["count"]
    }
    top = (
        created.filter(status=OrderStatus.REJECTED)
        .values_list("status_message")
        .annotate(count=Count("pk"))
        .order_by("-count", "status_message")[:top_rejections]
    )
    return {
        **counts,
        "placed_by_hour": placed_by_hour,
        "rejected_by_hour": rejected_by_hour,
        "top_rejections": [(message, count) for message, count in top],
    }


def order_platform_counts_by_broker(*, since: datetime) -> dict[str, dict[str, int]]:
    """Per broker with orders: orders created since `since` (every user's) and those the broker rejected."""
    rows = (
        Order.objects.filter(created_at__gte=since)
        .values("account__broker")
        .annotate(placed=Count("id"), rejected=Count("id", filter=Q(status=OrderStatus.REJECTED)))
        .order_by()
    )
    return {row["account__broker"]: {"placed": row["placed"], "rejected": row["rejected"]} for row in rows}


def order_platform_counts_between(*, start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    """Per broker with orders: orders created in [start, end) (every user's), those the broker rejected, and those
    that errored: the broker's answer was an error we could not map, or never came (they went UNKNOWN, whatever
    reconciliation found later)."""
    went_unknown = OrderEvent.objects.filter(to_status=OrderStatus.UNKNOWN, created_at__gte=start).values("order_id")
    rows = (
        Order.objects.filter(created_at__gte=start, created_at__lt=end)
        .values("account__broker")
        .annotate(
            placed=Count("id"),
            rejected=Count("id", filter=Q(status=OrderStatus.REJECTED)),
            errored=Count("id", filter=Q(id__in=went_unknown)),
        )
        .order_by()
    )
    return {
        row["account__broker"]: {"placed": row["placed"], "rejected": row["rejected"], "errored": row["errored"]}
        for row in rows
    }


def order_platform_live_of_real_accounts() -> list[Order]:
    """Live orders of real (non-paper) broker accounts, every user's, oldest first (ids only loaded)."""
    return list(
        Order.objects.filter(status__in=LIVE_STATUSES)
        .exclude(account__broker=Broker.PAPER)
        .order_by("created_at")
        .only("id")
    )


# Orders whose outcome is not settled yet: the broker has not confirmed them (or their change), so reconciliation must.
_AWAITING_RECONCILE = (
    OrderStatus.PENDING,
    OrderStatus.SUBMITTING,
    OrderStatus.PENDING_MODIFY,
    OrderStatus.PENDING_CANCEL,
)


def order_platform_reconcile_backlog(*, unchanged_since: datetime) -> dict[str, Any]:
    """Every user's orders reconciliation should have settled by now: unconfirmed (not UNKNOWN, counted apart) and
    unchanged since `unchanged_since`, and filled entries whose exits are still not placed. Count and oldest."""
    unconfirmed = Order.objects.filter(status__in=_AWAITING_RECONCILE, updated_at__lt=unchanged_since)
    waiting_exits = Order.objects.filter(
        role=LegRole.ENTRY,
        exits_placed_at__isnull=True,
        filled_quantity__gt=0,
        status__in=FINAL_STATUSES,
        updated_at__lt=unchanged_since,
    ).exclude(target__isnull=True, stop_loss__isnull=True)
    backlog = (unconfirmed | waiting_exits).order_by()
    figures = backlog.aggregate(count=Count("pk"), oldest=Min("updated_at"))
    return {"count": figures["count"], "oldest": figures["oldest"]}


def order_platform_unknown(*, unchanged_since: datetime) -> dict[str, Any]:
    """Every user's orders in UNKNOWN (the broker's answer was lost) since before `unchanged_since`: count, oldest,
    and a few ids to look at first."""
    unknown = Order.objects.filter(status=OrderStatus.UNKNOWN, updated_at__lt=unchanged_since).order_by("updated_at")
    figures = unknown.aggregate(count=Count("pk"), oldest=Min("updated_at"))
    return {**figures, "order_ids": list(unknown.values_list("pk", flat=True)[:10])}


def order_platform_symbols_needed() -> list[str]:
    """Every symbol some user holds (an open position) or waits on (a live order): what the market-data feed must
    follow for MTM, stops and the risk engine. Positions first."""
    held = Position.objects.exclude(quantity=0).order_by().values_list("symbol", flat=True).distinct()
    waiting = Order.objects.filter(status__in=LIVE_STATUSES).order_by().values_list("symbol", flat=True).distinct()
    return list(dict.fromkeys([*held, *waiting]))
