"""Dhan API v2 over the simulated exchange, for the real `dhanhq` SDK.

Routes live under `/v2`, as on api.dhan.co: point the SDK's `DhanHTTP.base_url` at `f"{server.url}/v2"`. Requests
carry `access-token` and `client-id` headers; tokens are issued by `register_client` (Dhan users generate them on
Dhan's web) and all die on `expire_sessions`. Bodies use Dhan's camelCase fields and errors Dhan's
`{"errorType", "errorCode", "errorMessage"}` envelope. Rate limits per client: orders 10/s, 250/min, 1000/h,
7000/day; quotes 1/s; other data 5/s (HTTP 429, DH-904).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from algoterm.sandbox.simulators.base import RateWindows, SimRequest, SimResponse, SimulatorApp
from brokers import exchange, instruments
from brokers.adapters.dhan import (
    DHAN_ORDER_TYPES,
    DHAN_SIDES,
    DHAN_VALIDITIES,
    EXCHANGE_SEGMENTS,
    INDEX_SEGMENT,
    INDEX_SYMBOLS,
    ORDER_STATUSES,
    ORDER_TYPES,
    PRODUCTS,
    SEGMENT_EXCHANGES,
    SIDES,
    VALIDITIES,
)
from brokers.models import SimAccount, SimOrder
from brokers.prices import quote_for
from brokers.protocol import (
    BrokerOrder,
    BrokerOrderStatus,
    InvalidInput,
    ModifyRequest,
    OrderRequest,
    OrderType,
    Quote,
    split_symbol,
)

IST = ZoneInfo("Asia/Kolkata")
TRADABLE_PRODUCTS = {dhan: product for product, dhan in PRODUCTS.items()}  # Dhan's MTF, CO and BO are not simulated
CORRELATION_ID = re.compile(r"[A-Za-z0-9 _-]{1,30}")

DEFAULT_RATE_LIMITS: dict[str, list[tuple[int, float]]] = {
    "orders": [(10, 1.0), (250, 60.0), (1000, 3600.0), (7000, 86400.0)],
    "quotes": [(1, 1.0)],
    "data": [(5, 1.0)],
}

# error kind -> (HTTP status, errorType, errorCode)
ERRORS: dict[str, tuple[int, str, str]] = {
    "auth": (401, "Invalid_Authentication", "DH-901"),
    "access": (403, "Invalid_Access", "DH-902"),
    "rate": (429, "Rate_Limit", "DH-904"),
    "input": (400, "Input_Exception", "DH-905"),
    "order": (400, "Order_Error", "DH-906"),
    "data": (400, "Data_Error", "DH-907"),
    "server": (500, "Internal_Server_Error", "DH-908"),
    "no_holdings": (404, "HOLDING_ERROR", "DH-1111"),
}


class DhanFailure(Exception):
    """A request Dhan would refuse, with the kind of error (a key of ERRORS) and the message."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


def _dhan_time(value: datetime | None) -> str:
    return value.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _number(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


def _decimal(body: dict[str, Any], name: str) -> Decimal | None:
    """Dhan sends 0 for 'no price'."""
    value = body.get(name)
    if value in (None, ""):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise DhanFailure("input", f"{name} must be a number.") from None
    return number if number != 0 else None


def _choice(table: dict[str, Any], body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value not in table:
        raise DhanFailure("input", f"Invalid {name}: {value!r}.")
    return table[value]


def _quantity(body: dict[str, Any]) -> int:
    try:
        return int(body.get("quantity"))
    except (TypeError, ValueError):
        raise DhanFailure("input", "quantity must be a whole number.") from None


def _wire_instrument(symbol: str) -> tuple[str, str, str]:
    """(exchangeSegment, securityId, tradingSymbol) for one of our symbols."""
    exchange_code, trading_symbol = split_symbol(symbol)
    instrument = instruments.by_symbol(symbol)
    segment = INDEX_SEGMENT if symbol in INDEX_SYMBOLS else EXCHANGE_SEGMENTS[exchange_code]
    return segment, instrument.dhan_security_id if instrument else "", trading_symbol


def _symbol_for(segment: str, security_id: Any) -> str | None:
    exchanges = ("NSE", "BSE") if segment == INDEX_SEGMENT else (SEGMENT_EXCHANGES.get(segment),)
    for exchange_code in exchanges:
        instrument = instruments.by_dhan_security_id(exchange_code, str(security_id)) if exchange_code else None
        if instrument is not None:
            return instrument.symbol
    return None


class DhanSimulator(SimulatorApp):
    name = "dhan"

    def __init__(self, *, rate_limits: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """`rate_limits` overrides some of DEFAULT_RATE_LIMITS by bucket ("orders", "quotes", "data")."""
        self._tokens: dict[str, str] = {}  # access token -> client id
        self._opening_balances: dict[str, Decimal] = {}
        self._tokens_lock = threading.Lock()
        limits = DEFAULT_RATE_LIMITS | (rate_limits or {})
        self._rate_windows = {bucket: RateWindows(windows) for bucket, windows in limits.items()}
        super().__init__()

    # --- clients ---------------------------------------------------------------------------------------------------

    def register_client(self, client_id: str, access_token: str, *, opening_balance: Decimal | None = None) -> None:
        """What a Dhan user does on Dhan's web: generate an access token for their client id."""
        with self._tokens_lock:
            self._tokens[access_token] = client_id
            if opening_balance is not None:
                self._opening_balances[client_id] = opening_balance

    def expire_sessions(self) -> None:
        with self._tokens_lock:
            self._tokens.clear()

    def client_for_token(self, access_token: str) -> str | None:
        """The client id an access token belongs to (the feed simulator authenticates its sockets with this)."""
        with self._tokens_lock:
            return self._tokens.get(access_token)

    def _authenticated_client(self, request: SimRequest) -> str:
        token = request.headers.get("access-token") or ""
        claimed = request.headers.get("client-id") or ""
        with self._tokens_lock:
            client_id = self._tokens.get(token)
        if client_id is None or client_id != claimed:
            raise DhanFailure("auth", "Client ID or user generated access token is invalid or expired.")
        return client_id

    def _account(self, client_id: str) -> SimAccount:
        return exchange.exchange_account(
            venue="dhan", client_id=client_id, opening_balance=self._opening_balances.get(client_id)
        )

    # --- framework hooks -------------------------------------------------------------------------------------------

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        default_status, error_type, code = ERRORS.get(kind) or (
            (500, "Internal_Server_Error", "DH-908") if status >= 500 else (status, "Others", "DH-910")
        )
        body = {"errorType": error_type, "errorCode": code, "errorMessage": message}
        return SimResponse.json(body, status=status or default_status)

    def setup_routes(self) -> None:
        routes: list[tuple[str, str, str, Callable[..., Any]]] = [
            ("POST", r"/v2/orders", "orders", self._place),
            ("GET", r"/v2/orders", "data", self._order_book),
            ("GET", r"/v2/orders/external/(?P<correlation_id>[^/]+)", "data", self._order_by_correlation_id),
            ("GET", r"/v2/orders/(?P<order_id>[^/]+)", "data", self._order),
            ("PUT", r"/v2/orders/(?P<order_id>[^/]+)", "orders", self._modify),
            ("DELETE", r"/v2/orders/(?P<order_id>[^/]+)", "orders", self._cancel),
            ("GET", r"/v2/trades/?", "data", self._trade_book),
            ("GET", r"/v2/trades/(?P<order_id>[^/]+)", "data", self._order_trades),
            ("GET", r"/v2/positions", "data", self._positions),
            ("GET", r"/v2/holdings", "data", self._holdings),
            ("GET", r"/v2/fundlimit", "data", self._fund_limit),
            ("POST", r"/v2/marketfeed/(?P<mode>ltp|ohlc|quote)", "quotes", self._market_feed),
        ]
        for method, pattern, bucket, handler in routes:
            self.add_route(method, pattern, self._guarded(bucket, handler))

    def _guarded(self, bucket: str, handler: Callable[..., Any]) -> Callable[..., SimResponse]:
        """Authentication, then the client's rate window, then the handler; failures in Dhan's error envelope."""

        def guarded(request: SimRequest, **params: str) -> SimResponse:
            try:
                client_id = self._authenticated_client(request)
                if not self._rate_windows[bucket].allow(client_id):
                    raise DhanFailure(
                        "rate", "Too many requests on server from single user breaching rate limits. Try throttling."
                    )
                return SimResponse.json(handler(request, client_id, **params))
            except DhanFailure as failure:
                return self.error_response(failure.status or ERRORS[failure.kind][0], failure.message, failure.kind)
            except exchange.UnknownOrder as error:
                return self.error_response(404, str(error.detail), "input")
            except InvalidInput as error:
                return self.error_response(400, str(error.detail), "input")

        return guarded

    # --- orders ----------------------------------------------------------------------------------------------------

    def _place(self, request: SimRequest, client_id: str) -> dict[str, Any]:
        body = self._body(request)
        segment = body.get("exchangeSegment")
        symbol = _symbol_for(segment, body.get("securityId")) if segment != INDEX_SEGMENT else None
        if symbol is None:
            raise DhanFailure("input", f"Invalid securityId {body.get('securityId')!r} for segment {segment!r}.")
        correlation_id = body.get("correlationId") or ""
        if correlation_id and not CORRELATION_ID.fullmatch(str(correlation_id)):
            raise DhanFailure("input", "correlationId must be 1-30 letters, digits, spaces, '_' or '-'.")
        order_type = _choice(DHAN_ORDER_TYPES, body, "orderType")
        uses_price = order_type in (OrderType.LIMIT, OrderType.SL)
        uses_trigger = order_type in (OrderType.SL, OrderType.SL_M)
        order_request = OrderRequest(
            symbol=symbol,
            side=_choice(DHAN_SIDES, body, "transactionType"),
            quantity=_quantity(body),
            order_type=order_type,
            product=_choice(TRADABLE_PRODUCTS, body, "productType"),
            price=_decimal(body, "price") if uses_price else None,
            trigger_price=_decimal(body, "triggerPrice") if uses_trigger else None,
            validity=_choice(DHAN_VALIDITIES, body, "validity"),
            tag=str(correlation_id),
        )
        order = exchange.place(account=self._account(client_id), request=order_request)
        return {"orderId": order.order_id, "orderStatus": ORDER_STATUSES[order.status]}

    def _modify(self, request: SimRequest, client_id: str, order_id: str) -> dict[str, Any]:
        body = self._body(request)
        order_type = _choice(DHAN_ORDER_TYPES, body, "orderType") if body.get("orderType") else None
        effective_type = order_type or OrderType(
            exchange.get_order(account=self._account(client_id), order_id=order_id).order_type
        )
        modification = ModifyRequest(
            quantity=_quantity(body) if body.get("quantity") not in (None, "", 0) else None,
            price=_decimal(body, "price") if effective_type in (OrderType.LIMIT, OrderType.SL) else None,
            trigger_price=_decimal(body, "triggerPrice") if effective_type in (OrderType.SL, OrderType.SL_M) else None,
            order_type=order_type,
        )
        try:
            order = exchange.modify(account=self._account(client_id), order_id=order_id, request=modification)
        except exchange.UnknownOrder:
            raise
        except InvalidInput as error:  # the order exists but cannot change: Dhan's order error, not an input error
            raise DhanFailure("order", str(error.detail)) from None
        return {"orderId": order.order_id, "orderStatus": ORDER_STATUSES[order.status]}

    def _cancel(self, request: SimRequest, client_id: str, order_id: str) -> dict[str, Any]:
        try:
            order = exchange.cancel(account=self._account(client_id), order_id=order_id)
        except exchange.UnknownOrder:
            raise
        except InvalidInput as error:
            raise DhanFailure("order", str(error.detail)) from None
        return {"orderId": order.order_id, "orderStatus": ORDER_STATUSES[order.status]}

    @staticmethod
    def _body(request: SimRequest) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise DhanFailure("input", "The body must be a JSON object.")
        return body

    # --- order book and trades -------------------------------------------------------------------------------------

    def _order_book(self, request: SimRequest, client_id: str) -> list[dict[str, Any]]:
        return [self._order_json(order, client_id) for order in exchange.orders(account=self._account(client_id))]

    def _order(self, request: SimRequest, client_id: str, order_id: str) -> dict[str, Any]:
        return self._order_json(exchange.get_order(account=self._account(client_id), order_id=order_id), client_id)

    def _order_by_correlation_id(self, request: SimRequest, client_id: str, correlation_id: str) -> dict[str, Any]:
        tag = unquote(correlation_id)
        order = self._account(client_id).orders.filter(tag=tag).order_by("-id").first()
        if order is None:
            raise DhanFailure("input", f"No order found for correlation id {tag}.", status=404)
        return self._order_json(order, client_id)

    def _order_json(self, sim_order: SimOrder, client_id: str) -> dict[str, Any]:
        order: BrokerOrder = exchange.to_broker_order(sim_order)
        segment, security_id, trading_symbol = _wire_instrument(order.symbol)
        return {
            "dhanClientId": client_id,
            "orderId": order.broker_order_id,
            "exchangeOrderId": order.broker_order_id if order.status != BrokerOrderStatus.REJECTED else "",
            "correlationId": order.tag or None,
            "orderStatus": ORDER_STATUSES[order.status],
            "transactionType": SIDES[order.side],
            "exchangeSegment": segment,
            "productType": PRODUCTS[order.product],
            "orderType": ORDER_TYPES[order.order_type],
            "validity": VALIDITIES[order.validity],
            "tradingSymbol": trading_symbol,
            "securityId": security_id,
            "quantity": order.quantity,
            "disclosedQuantity": 0,
            "price": _number(order.price),
            "triggerPrice": _number(order.trigger_price),
            "afterMarketOrder": False,
            "boProfitValue": 0.0,
            "boStopLossValue": 0.0,
            "legName": None,
            "createTime": _dhan_time(order.placed_at),
            "updateTime": _dhan_time(order.updated_at),
            "exchangeTime": _dhan_time(order.updated_at),
            "drvExpiryDate": None,
            "drvOptionType": None,
            "drvStrikePrice": 0.0,
            "omsErrorCode": None,
            "omsErrorDescription": order.status_message or None,
            "algoId": sim_order.algo_id,
            "remainingQuantity": order.quantity - order.filled_quantity,
            "averageTradedPrice": _number(order.average_price),
            "filledQty": order.filled_quantity,
        }

    def _trade_book(self, request: SimRequest, client_id: str) -> list[dict[str, Any]]:
        return self._trades_json(client_id, order_id=None)

    def _order_trades(self, request: SimRequest, client_id: str, order_id: str) -> list[dict[str, Any]]:
        return self._trades_json(client_id, order_id=order_id)

    def _trades_json(self, client_id: str, *, order_id: str | None) -> list[dict[str, Any]]:
        account = self._account(client_id)
        orders_by_id = {order.order_id: order for order in exchange.orders(account=account)}
        rows = []
        for trade in exchange.trades(account=account, order_id=order_id):
            order = orders_by_id[trade.broker_order_id]
            segment, security_id, trading_symbol = _wire_instrument(trade.symbol)
            rows.append(
                {
                    "dhanClientId": client_id,
                    "orderId": trade.broker_order_id,
                    "exchangeOrderId": trade.broker_order_id,
                    "exchangeTradeId": trade.trade_id,
                    "transactionType": SIDES[trade.side],
                    "exchangeSegment": segment,
                    "productType": PRODUCTS[order.product],
                    "orderType": ORDER_TYPES[order.order_type],
                    "tradingSymbol": trading_symbol,
                    "securityId": security_id,
                    "tradedQuantity": trade.quantity,
                    "tradedPrice": _number(trade.price),
                    "createTime": _dhan_time(trade.traded_at),
                    "updateTime": _dhan_time(trade.traded_at),
                    "exchangeTime": _dhan_time(trade.traded_at),
                    "drvExpiryDate": None,
                    "drvOptionType": None,
                    "drvStrikePrice": 0.0,
                }
            )
        return rows

    # --- portfolio and funds ---------------------------------------------------------------------------------------

    def _positions(self, request: SimRequest, client_id: str) -> list[dict[str, Any]]:
        rows = []
        for position in exchange.positions(account=self._account(client_id)):
            segment, security_id, trading_symbol = _wire_instrument(position.symbol)
            average = _number(position.average_price)
            rows.append(
                {
                    "dhanClientId": client_id,
                    "tradingSymbol": trading_symbol,
                    "securityId": security_id,
                    "positionType": "LONG" if position.quantity > 0 else "SHORT" if position.quantity < 0 else "CLOSED",
                    "exchangeSegment": segment,
                    "productType": PRODUCTS[position.product],
                    # the exchange keeps one net average, so it stands for the side that built the position
                    "buyAvg": average if position.quantity > 0 else 0.0,
                    "buyQty": position.buy_quantity,
                    "costPrice": average,
                    "sellAvg": average if position.quantity < 0 else 0.0,
                    "sellQty": position.sell_quantity,
                    "netQty": position.quantity,
                    "realizedProfit": _number(position.realized_pnl),
                    "unrealizedProfit": _number(position.unrealized_pnl),
                    "rbiReferenceRate": 1.0,
                    "multiplier": 1,
                    "carryForwardBuyQty": 0,
                    "carryForwardSellQty": 0,
                    "carryForwardBuyValue": 0.0,
                    "carryForwardSellValue": 0.0,
                    "dayBuyQty": position.buy_quantity,
                    "daySellQty": position.sell_quantity,
                    "dayBuyValue": 0.0,
                    "daySellValue": 0.0,
                    "drvExpiryDate": None,
                    "drvOptionType": None,
                    "drvStrikePrice": 0.0,
                    "crossCurrency": False,
                }
            )
        return rows

    def _holdings(self, request: SimRequest, client_id: str) -> list[dict[str, Any]]:
        rows = []
        for holding in exchange.holdings(account=self._account(client_id)):
            _, security_id, trading_symbol = _wire_instrument(holding.symbol)
            rows.append(
                {
                    "exchange": "ALL",
                    "tradingSymbol": trading_symbol,
                    "securityId": security_id,
                    "isin": "",
                    "totalQty": holding.quantity,
                    "dpQty": holding.quantity,
                    "t1Qty": 0,
                    "availableQty": holding.quantity,
                    "collateralQty": 0,
                    "avgCostPrice": _number(holding.average_price),
                    "lastTradedPrice": _number(holding.last_price),
                }
            )
        if not rows:
            raise DhanFailure("no_holdings", "No holdings available")  # Dhan answers an empty demat with an error
        return rows

    def _fund_limit(self, request: SimRequest, client_id: str) -> dict[str, Any]:
        funds = exchange.funds(account=self._account(client_id))
        return {
            "dhanClientId": client_id,
            "availabelBalance": _number(funds.available_cash),  # sic: Dhan's spelling
            "sodLimit": _number(funds.opening_balance),
            "collateralAmount": 0.0,
            "receiveableAmount": 0.0,
            "utilizedAmount": _number(funds.used_margin),
            "blockedPayoutAmount": 0.0,
            "withdrawableBalance": _number(funds.available_cash),
        }

    # --- market data -----------------------------------------------------------------------------------------------

    def _market_feed(self, request: SimRequest, client_id: str, mode: str) -> dict[str, Any]:
        body = self._body(request)
        data: dict[str, dict[str, Any]] = {}
        for segment, security_ids in body.items():
            if segment == "dhanClientId":
                continue
            if segment != INDEX_SEGMENT and segment not in SEGMENT_EXCHANGES:
                raise DhanFailure("input", f"Invalid exchange segment {segment!r}.")
            if not isinstance(security_ids, list):
                raise DhanFailure("input", f"{segment} must list security ids.")
            for security_id in security_ids:
                symbol = _symbol_for(segment, security_id)
                if symbol is not None:
                    data.setdefault(segment, {})[str(security_id)] = self._quote_json(quote_for(symbol), mode)
        return {"data": data, "status": "success"}

    @staticmethod
    def _quote_json(quote: Quote, mode: str) -> dict[str, Any]:
        last = {"last_price": _number(quote.last_price)}
        ohlc = {
            "ohlc": {
                "open": _number(quote.open),
                "close": _number(quote.close),
                "high": _number(quote.high),
                "low": _number(quote.low),
            }
        }
        if mode == "ltp":
            return last
        if mode == "ohlc":
            return last | ohlc
        empty_level = {"quantity": 0, "orders": 0, "price": 0.0}
        reference = quote.close or quote.last_price
        return (
            last
            | ohlc
            | {
                "average_price": _number(quote.last_price),
                "buy_quantity": quote.bid_quantity,
                "sell_quantity": quote.ask_quantity,
                "depth": {
                    "buy": [{"quantity": quote.bid_quantity, "orders": 1, "price": _number(quote.bid)}]
                    + [empty_level] * 4,
                    "sell": [{"quantity": quote.ask_quantity, "orders": 1, "price": _number(quote.ask)}]
                    + [empty_level] * 4,
                },
                "last_quantity": 0,
                "last_trade_time": quote.timestamp.astimezone(IST).strftime("%d/%m/%Y %H:%M:%S")
                if quote.timestamp
                else "",
                "lower_circuit_limit": _number(reference * Decimal("0.8")),
                "upper_circuit_limit": _number(reference * Decimal("1.2")),
                "net_change": _number(quote.last_price - reference),
                "oi": 0,
                "oi_day_high": 0,
                "oi_day_low": 0,
                "volume": quote.volume,
            }
        )
