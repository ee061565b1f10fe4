"""What the orders app pushes to a user's WebSocket, rendered exactly as the REST API renders the same objects."""

from __future__ import annotations

from typing import Any

from accounts.models import User
from algoterm.api.serializers import rendered
from orders.models import Order, Position, Trade
from orders.selectors import last_prices, order_list, position_list
from orders.serializers import OrderOutput, PositionOutput, TradeOutput


def order_payload(order: Order) -> dict[str, Any]:
    """An `order_update`: the order as GET /api/orders renders it."""
    return rendered(OrderOutput, order)


def trade_payload(trade: Trade) -> dict[str, Any]:
    """A `trade`: the fill as GET /api/trades renders it."""
    return rendered(TradeOutput, trade)


def position_payload(position: Position) -> dict[str, Any]:
    """A `position_update`: without quotes (no `ltp`, no `unrealized_pnl`); the client prices it from its ticks."""
    return rendered(PositionOutput, position)


def events_snapshot(*, user: User) -> dict[str, Any]:
    """Part of the /ws/events snapshot: open orders and open positions as GET /api/orders?open=true and
    GET /api/positions?open=true render them, so a reconnecting client rebuilds its books from it."""
    positions = list(position_list(user=user, open_only=True))
    quotes = last_prices([position.symbol for position in positions])
    return {
        "orders": OrderOutput(order_list(user=user, open_only=True), many=True).data,
        "positions": PositionOutput(positions, many=True, context={"quotes": quotes}).data,
    }
