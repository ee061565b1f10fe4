"""Fyers' order socket (`wss://socket.fyers.in/trade/v3`) as the SDK's `FyersOrderSocket` expects it.

The client authenticates at the handshake with the header `authorization: <app id>:<access token>` (the SDK sends
the string it was given, which Fyers documents as that pair); an unknown pair is refused with HTTP 403 before the
upgrade. Client text frames: `{"T": "SUB_ORD", "SLIST": ["orders", "trades", "positions", ...], "SUB_T": 1}`
subscribes (`SUB_T: -1` unsubscribes) and `ping`, answered with `pong`. For every change to one of the user's orders
on the simulated exchange, connections subscribed to "orders" get `{"s": "ok", "orders": {...}}` with Fyers' own field
names (`id`, `org_ord_status`, `qty_filled`, `price_traded`, `ordertag` "1:<tag>"...), which the SDK renames.

Credentials are those registered with `register_token(authorization, user_id)`, plus whatever `authorize` maps to a
Fyers user id (`fyers_sessions(simulator)` reads the REST simulator's logins). Changes reach the simulator from the
exchange's order-change listeners (fills and triggers caused by a published quote); tests push others with
`push_order`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from algoterm.sandbox.simulators.fyers import FyersSimulator
from algoterm.sandbox.simulators.order_sockets import OrderSocketServer
from brokers import exchange
from brokers.adapters.fyers import (
    ORDER_TYPE_TO_FYERS,
    PRODUCT_TO_FYERS,
    SIDE_TO_FYERS,
    STATUS_TO_FYERS,
    format_fyers_time,
    to_fyers_symbol,
)
from brokers.models import SimOrder, Venue
from brokers.protocol import BrokerOrderStatus, OrderType, Product, Side, Validity, split_symbol

SUBSCRIBE = "SUB_ORD"
NSE, CAPITAL_MARKET = 10, 10  # Fyers' exchange and segment codes, as the REST simulator reports them


def _number(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


def fyers_sessions(simulator: FyersSimulator) -> Callable[[str], str | None]:
    """The REST simulator's live logins as the socket's check: `<app id>:<access token>` -> the Fyers user id."""

    def authorize(authorization: str) -> str | None:
        try:
            return simulator._session_for(authorization).user_id
        except Exception:  # the REST simulator refuses it: unknown, expired or another app's token
            return None

    return authorize


def order_message(order: SimOrder, user_id: str) -> dict[str, Any]:
    """`order` as Fyers' order socket pushes it."""
    status = BrokerOrderStatus(order.status)
    last_trade = order.trades.order_by("-id").first()
    _, trading_symbol = split_symbol(order.symbol)
    return {
        "s": "ok",
        "orders": {
            "client_id": user_id,
            "id": order.order_id,
            "id_parent": None,
            "id_exchange": order.order_id if status != BrokerOrderStatus.REJECTED else "",
            "qty": order.quantity,
            "qty_remaining": 0 if status.is_final else order.remaining,
            "qty_filled": order.filled_quantity,
            "price_limit": _number(order.price),
            "price_stop": _number(order.trigger_price),
            "price_traded": _number(last_trade.price if last_trade else order.average_price),
            "ord_type": ORDER_TYPE_TO_FYERS[OrderType(order.order_type)],
            "fy_token": "",
            "exchange": NSE,
            "segment": CAPITAL_MARKET,
            "symbol": to_fyers_symbol(order.symbol),
            "instrument": 0,
            "oms_msg": order.status_message,
            "offline_flag": False,
            "time_oms": format_fyers_time(order.updated_at),
            "validity": Validity(order.validity).value,
            "product_type": PRODUCT_TO_FYERS[Product(order.product)],
            "tran_side": SIDE_TO_FYERS[Side(order.side)],
            "org_ord_status": STATUS_TO_FYERS[status],
            "ord_source": "API",
            "symbol_exch": trading_symbol,
            "symbol_desc": trading_symbol,
            "ordertag": f"1:{order.tag}" if order.tag else "2:Untagged",
        },
    }


@dataclass
class OrderSocketClient:
    connection: ServerConnection
    user_id: str
    subscriptions: set[str] = field(default_factory=set)


class FyersOrderSocketSimulator(OrderSocketServer):
    """Fyers' order socket on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, port: int = 0, authorize: Callable[[str], str | None] | None = None) -> None:
        super().__init__(port=port, authorize=authorize)  # authorize: authorization header -> user id
        self.clients: dict[ServerConnection, OrderSocketClient] = {}
        self.pings = 0

    # --- credentials: checked at the handshake -------------------------------------------------------------------

    def register_token(self, authorization: str, user_id: str) -> None:
        self._token_set(authorization, user_id)

    def _user_for(self, authorization: str) -> str | None:
        return self._owner_of(authorization)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._user_for(request.headers.get("Authorization", "")) is not None:
            return None
        self.handshakes_refused += 1
        return connection.respond(HTTPStatus.FORBIDDEN, "Could not authenticate the user\n")

    # --- one connection ------------------------------------------------------------------------------------------

    async def serve_client(self, connection: ServerConnection) -> None:
        user_id = self._user_for(connection.request.headers.get("Authorization", "")) or ""
        client = OrderSocketClient(connection, user_id)
        self.clients[connection] = client
        try:
            async for message in connection:
                if message == "ping":
                    self.pings += 1
                    await connection.send("pong")
                elif isinstance(message, str):
                    self._apply(client, message)
        finally:
            self.clients.pop(connection, None)

    @staticmethod
    def _apply(client: OrderSocketClient, message: str) -> None:
        try:
            request = json.loads(message)
            kind, names, direction = request["T"], request["SLIST"], request["SUB_T"]
        except (ValueError, KeyError, TypeError):
            return
        if kind != SUBSCRIBE or not isinstance(names, list):
            return
        if direction == 1:
            client.subscriptions.update(str(name) for name in names)
        elif direction == -1:
            client.subscriptions.difference_update(str(name) for name in names)

    # --- pushes --------------------------------------------------------------------------------------------------

    def _orders_changed(self, venue: str, client_id: str, order_ids: list[str]) -> None:
        """Exchange listener (after commit, in the thread that changed the orders); `client_id` is the user id."""
        if venue != Venue.FYERS or self.subscribed(client_id) == 0:
            return
        account = exchange.exchange_account(venue=Venue.FYERS, client_id=client_id)
        for order_id in order_ids:
            self.push_order(exchange.get_order(account=account, order_id=order_id))

    def push_order(self, order: SimOrder) -> int:
        """Push `order` to its user's connections subscribed to orders now; returns how many got it."""
        user_id = order.account.client_id
        return self.push_message(user_id, order_message(order, user_id))

    def push_message(self, user_id: str, message: dict[str, Any], *, subscription: str = "orders") -> int:
        """Send `message` (any JSON object) to `user_id`'s connections subscribed to `subscription`."""
        text = json.dumps(message)

        async def send() -> int:
            sent = 0
            for client in list(self.clients.values()):
                if client.user_id == user_id and subscription in client.subscriptions:
                    try:
                        await client.connection.send(text)
                    except ConnectionClosed:
                        continue
                    sent += 1
            return sent

        return self.call(send)

    def subscribed(self, user_id: str, subscription: str = "orders") -> int:
        """How many of `user_id`'s connections follow `subscription`."""
        return sum(
            1
            for client in list(self.clients.values())
            if client.user_id == user_id and subscription in client.subscriptions
        )
