"""Dhan's live order-update WebSocket as `dhanhq.orderupdate.OrderUpdate` expects it.

The client connects to `ws://HOST:PORT` and sends one login message, `{"LoginReq": {"MsgCode": 42, "ClientId":
"...", "Token": "..."}, "UserType": "SELF"}`. From then on the server pushes `{"Type": "order_alert", "Data": {...}}`
whenever one of that client's orders changes on the simulated exchange, with the fields of Dhan's documented order
update (`OrderNo`, `ExchOrderNo`, `Status`, `Quantity`, `TradedQty`, `AvgTradedPrice`, `CorrelationId`...; codes as
Dhan sends them: `TxnType` B/S, `Product` C/I/M, `OrderType` LMT/MKT/SL/SLM). What the client sends after the login
is ignored.

A login that is not a JSON object, names another message code or user type, or whose token is not the client's
(tokens registered with `register_token`, plus whatever `authorize` maps to a client id) is answered by closing the
socket at once, without a message (close code 1008, policy violation), as Dhan hangs up on a refused login. A client
that sends nothing within `login_timeout` is closed the same way.

Changes reach the simulator from the exchange's order-change listeners (`brokers.exchange.order_changes_listen`):
fills and triggers caused by a published quote. Orders placed, modified or cancelled over the REST simulator are
announced by nothing there; tests push those with `push_order`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from algoterm.sandbox.simulators.order_sockets import OrderSocketServer
from brokers import exchange
from brokers.adapters.dhan import INDEX_SYMBOLS, ORDER_STATUSES, VALIDITIES, dhan_instrument
from brokers.models import SimOrder, Venue
from brokers.protocol import BrokerOrderStatus, OrderType, Product, Side, Validity, split_symbol

IST = ZoneInfo("Asia/Kolkata")
LOGIN_MESSAGE_CODE = 42
REFUSED_LOGIN = 1008  # policy violation

PRODUCT_CODES = {Product.CNC: "C", Product.MIS: "I", Product.NRML: "M"}
SIDE_CODES = {Side.BUY: "B", Side.SELL: "S"}
ORDER_TYPE_CODES = {OrderType.LIMIT: "LMT", OrderType.MARKET: "MKT", OrderType.SL: "SL", OrderType.SL_M: "SLM"}
PRODUCT_NAMES = {Product.CNC: "CNC", Product.MIS: "INTRADAY", Product.NRML: "MARGIN"}
SEGMENT_CODES = {"NSE_EQ": "E", "BSE_EQ": "E", "NSE_FNO": "D", "BSE_FNO": "D", "NSE_CURRENCY": "C", "MCX_COMM": "M"}


def _time(value: datetime | None) -> str:
    return value.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _number(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


def _instrument_kind(symbol: str, segment: str) -> str:
    """Dhan's `Instrument`: equities are EQUITY; derivatives are told apart by their option suffix (the simulated
    exchange does not know index from stock derivatives)."""
    if SEGMENT_CODES.get(segment) == "E":
        return "EQUITY"
    return "OPTIDX" if symbol.endswith(("CE", "PE")) else "FUTIDX"


def order_alert(order: SimOrder, client_id: str) -> dict[str, Any]:
    """`order` as Dhan's order-update socket pushes it."""
    exchange_code, trading_symbol = split_symbol(order.symbol)
    segment, security_id = dhan_instrument(order.symbol) if order.symbol not in INDEX_SYMBOLS else ("IDX_I", "")
    status = BrokerOrderStatus(order.status)
    last_trade = order.trades.order_by("-id").first()
    final = status.is_final
    return {
        "Type": "order_alert",
        "Data": {
            "Exchange": exchange_code if exchange_code in ("NSE", "BSE", "MCX") else "NSE",
            "Segment": SEGMENT_CODES.get(segment, "E"),
            "Source": "P",
            "SecurityId": str(security_id),
            "ClientId": client_id,
            "ExchOrderNo": order.order_id if status != BrokerOrderStatus.REJECTED else "",
            "OrderNo": order.order_id,
            "Product": PRODUCT_CODES[Product(order.product)],
            "TxnType": SIDE_CODES[Side(order.side)],
            "OrderType": ORDER_TYPE_CODES[OrderType(order.order_type)],
            "Validity": VALIDITIES[Validity(order.validity)],
            "DiscQuantity": 0,
            "DiscQtyRem": 0,
            "RemainingQuantity": 0 if final else order.remaining,
            "Quantity": order.quantity,
            "TradedQty": order.filled_quantity,
            "Price": _number(order.price),
            "TriggerPrice": _number(order.trigger_price),
            "TradedPrice": _number(last_trade.price if last_trade else None),
            "AvgTradedPrice": _number(order.average_price),
            "AlgoOrdNo": 0,
            "OffMktFlag": "0",
            "OrderDateTime": _time(order.created_at),
            "ExchOrderTime": _time(order.created_at),
            "LastUpdatedTime": _time(order.updated_at),
            "Remarks": "",
            "MktType": "NL",
            "ReasonDescription": order.status_message or "CONFIRMED",
            "LegNo": 1,
            "Instrument": _instrument_kind(order.symbol, segment),
            "Symbol": trading_symbol,
            "ProductName": PRODUCT_NAMES[Product(order.product)],
            "Status": ORDER_STATUSES[status],
            "LotSize": 1,
            "StrikePrice": 0.0,
            "ExpiryDate": "0001-01-01 00:00:00",
            "OptType": "XX",
            "DisplayName": trading_symbol,
            "Isin": "",
            "Series": "EQ" if SEGMENT_CODES.get(segment) == "E" else "",
            "GoodTillDaysDate": _time(order.created_at)[:10],
            "RefLtp": _number(order.average_price or order.price),
            "TickSize": 0.05,
            "AlgoId": order.algo_id or "0",
            "Multiplier": 1,
            "CorrelationId": order.tag,
        },
    }


class DhanOrderSocketSimulator(OrderSocketServer):
    """Dhan's order-update socket on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, *, port: int = 0, authorize: Callable[[str], str | None] | None = None, login_timeout: float = 5.0
    ) -> None:
        super().__init__(port=port, authorize=authorize)  # authorize: access token -> its client id
        self.login_timeout = login_timeout
        self.clients: dict[ServerConnection, str] = {}  # logged-in connection -> client id
        self.logins_refused = 0
        self.alerts_sent = 0

    # --- credentials ---------------------------------------------------------------------------------------------

    def register_token(self, client_id: str, access_token: str) -> None:
        self._token_set(access_token, client_id)

    def _client_for(self, login: Any) -> str | None:
        if not isinstance(login, dict) or login.get("UserType") != "SELF":
            return None
        request = login.get("LoginReq")
        if not isinstance(request, dict) or str(request.get("MsgCode")) != str(LOGIN_MESSAGE_CODE):
            return None
        claimed, token = str(request.get("ClientId") or ""), str(request.get("Token") or "")
        client_id = self._owner_of(token)
        return client_id if client_id and client_id == claimed else None

    # --- one connection ------------------------------------------------------------------------------------------

    async def serve_client(self, connection: ServerConnection) -> None:
        try:
            login = json.loads(await asyncio.wait_for(connection.recv(), self.login_timeout))
        except (TimeoutError, ValueError, TypeError):
            login = None
        client_id = await asyncio.to_thread(self._client_for, login)  # `authorize` may read the REST simulator
        if client_id is None:
            self.logins_refused += 1
            await connection.close(REFUSED_LOGIN, "Invalid client id or access token")
            return
        self.clients[connection] = client_id
        try:
            async for _ in connection:
                pass
        finally:
            self.clients.pop(connection, None)

    # --- pushes --------------------------------------------------------------------------------------------------

    def _orders_changed(self, venue: str, client_id: str, order_ids: list[str]) -> None:
        """Exchange listener (after commit, in the thread that changed the orders)."""
        if venue != Venue.DHAN or client_id not in set(self.clients.values()):
            return
        account = exchange.exchange_account(venue=Venue.DHAN, client_id=client_id)
        for order_id in order_ids:
            self.push_order(exchange.get_order(account=account, order_id=order_id))

    def push_order(self, order: SimOrder) -> int:
        """Push `order`'s alert to its client's connections now; returns how many got it."""
        return self.push_message(order.account.client_id, order_alert(order, order.account.client_id))

    def push_message(self, client_id: str, message: dict[str, Any]) -> int:
        """Send `message` (any JSON object) to every connection logged in as `client_id`."""
        text = json.dumps(message)

        async def send() -> int:
            sent = 0
            for connection, connected_client in list(self.clients.items()):
                if connected_client == client_id:
                    try:
                        await connection.send(text)
                    except ConnectionClosed:  # it dropped meanwhile; its stream reconnects and reads the book
                        continue
                    sent += 1
            self.alerts_sent += sent
            return sent

        return self.call(send)

    def logged_in(self, client_id: str) -> int:
        """How many connections are logged in as `client_id`."""
        return sum(1 for connected_client in list(self.clients.values()) if connected_client == client_id)
