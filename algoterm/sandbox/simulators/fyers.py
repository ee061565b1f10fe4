"""A local Fyers API v3: the login flow, the trading routes and the data API's quotes, in Fyers' wire format, over the
shared simulated exchange. Point the SDK at `{url}/api/v3` (API) and `{url}/data` (data API).

Apps are registered with `register_app(client_id, secret_key)`. The login page accepts any Fyers user id (and any
PIN); that user id names the exchange account (`exchange_account(venue="fyers", client_id=<user id>)`). Access tokens
are JWT-shaped (the user id is the `fy_id` claim, as at Fyers) and die on `expire_sessions()` or `/logout`.

Error codes: -16 unknown token, -8 expired token (HTTP 401); -50 invalid input, -51 unknown order, -300 invalid
symbol (HTTP 400); -99 order rejected by the risk checks (HTTP 400, with the order id; the order shows as rejected in
the order book); 429 rate limited (HTTP 429). Limits per app and user: orders 10/s and 200/min, other calls 10/s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from brokers import exchange
from brokers.adapters.fyers import (
    ORDER_TYPE_FROM_FYERS,
    ORDER_TYPE_TO_FYERS,
    PRODUCT_FROM_FYERS,
    PRODUCT_TO_FYERS,
    SIDE_FROM_FYERS,
    SIDE_TO_FYERS,
    STATUS_TO_FYERS,
    VALIDITY_FROM_FYERS,
    format_fyers_time,
    from_fyers_symbol,
    to_fyers_symbol,
)
from brokers.exchange import UnknownOrder
from brokers.models import SimAccount
from brokers.prices import quote_for
from brokers.protocol import (
    BrokerOrder,
    BrokerOrderStatus,
    InvalidInput,
    ModifyRequest,
    OrderRequest,
    OrderType,
    Product,
    Side,
    Validity,
)

from .base import RateWindows, SimRequest, SimResponse, SimulatorApp

API = "/api/v3"
DATA = "/data"
AUTH_CODE_SECONDS = 300
ACCESS_TOKEN_SECONDS = 24 * 3600
ORDER_TAG = re.compile(r"^[A-Za-z0-9]{1,30}$")
USER_ID = re.compile(r"^[A-Z]{1,4}\d{3,8}$")
DEFAULT_USER_ID = "XJ00001"

# HTTP status -> Fyers code for errors the framework raises (unknown routes, faults...)
_CODE_FOR_STATUS = {400: -50, 401: -16, 404: -50, 405: -50, 429: 429}
_PLACEABLE_PRODUCTS = {"INTRADAY", "CNC", "MARGIN"}


@dataclass(frozen=True)
class _App:
    secret_key: str
    redirect_uri: str | None


@dataclass(frozen=True)
class _AuthCode:
    client_id: str
    user_id: str
    expires_at: float


@dataclass(frozen=True)
class _Session:
    client_id: str
    user_id: str

    @property
    def rate_key(self) -> str:
        return f"{self.client_id}:{self.user_id}"


class _FyersError(Exception):
    def __init__(self, status: int, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def app_id_hash(client_id: str, secret_key: str) -> str:
    return hashlib.sha256(f"{client_id}:{secret_key}".encode()).hexdigest()


def _ok(**fields: Any) -> SimResponse:
    return SimResponse.json({"s": "ok", "code": 200, "message": ""} | fields)


class FyersSimulator(SimulatorApp):
    name = "fyers"

    def __init__(self) -> None:
        self._apps: dict[str, _App] = {}
        self._auth_codes: dict[str, _AuthCode] = {}
        self._sessions: dict[str, _Session] = {}
        self._expired: set[str] = set()
        self._state_lock = threading.Lock()
        self._signing_key = secrets.token_bytes(32)
        self._order_limits = RateWindows([(10, 1.0), (200, 60.0)])
        self._other_limits = RateWindows([(10, 1.0)])
        super().__init__()

    # --- set-up and control ---------------------------------------------------------------------------------

    def register_app(self, client_id: str, secret_key: str, *, redirect_uri: str | None = None) -> None:
        """An API app as created in Fyers' dashboard; with `redirect_uri`, logins must come back to exactly it."""
        with self._state_lock:
            self._apps[client_id] = _App(secret_key=secret_key, redirect_uri=redirect_uri)

    def expire_sessions(self) -> None:
        with self._state_lock:
            self._expired.update(self._sessions)
            self._sessions.clear()

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        code = status if kind == "server" else _CODE_FOR_STATUS.get(status, -status)
        return SimResponse.json({"s": "error", "code": code, "message": message}, status=status)

    def setup_routes(self) -> None:
        self.add_route("GET", f"{API}/generate-authcode", self._login_page)
        self.add_route("POST", f"{API}/generate-authcode", self._login_submit)
        self.add_route("POST", f"{API}/validate-authcode", self._validate_authcode)
        self.add_route("GET", f"{API}/profile", self._authed(self._profile))
        self.add_route("POST", f"{API}/logout", self._authed(self._logout))
        self.add_route("POST", f"{API}/orders/sync", self._authed(self._place, orders=True))
        self.add_route("PATCH", f"{API}/orders/sync", self._authed(self._modify, orders=True))
        self.add_route("DELETE", f"{API}/orders/sync", self._authed(self._cancel, orders=True))
        self.add_route("GET", f"{API}/orders", self._authed(self._order_book))
        self.add_route("GET", f"{API}/tradebook", self._authed(self._trade_book))
        self.add_route("GET", f"{API}/positions", self._authed(self._positions))
        self.add_route("GET", f"{API}/holdings", self._authed(self._holdings))
        self.add_route("GET", f"{API}/funds", self._authed(self._funds))
        self.add_route("GET", f"{DATA}/quotes", self._authed(self._quotes))

    # --- login ------------------------------------------------------------------------------------------------

    def _checked_app(self, client_id: str, redirect_uri: str) -> _App:
        app = self._apps.get(client_id)
        if app is None:
            raise _FyersError(400, -352, "Invalid app id.")
        if not redirect_uri or (app.redirect_uri and redirect_uri != app.redirect_uri):
            raise _FyersError(400, -50, "The redirect_uri does not match the app's.")
        return app

    def _login_page(self, request: SimRequest) -> SimResponse:
        client_id, redirect_uri = request.arg("client_id", ""), request.arg("redirect_uri", "")
        try:
            self._checked_app(client_id, redirect_uri)
            if request.arg("response_type") != "code":
                raise _FyersError(400, -50, "response_type must be 'code'.")
        except _FyersError as error:
            return self._error(error)
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value, quote=True)}">'
            for name, value in (
                ("client_id", client_id),
                ("redirect_uri", redirect_uri),
                ("state", request.arg("state", "")),
            )
        )
        return SimResponse.html(
            "<!doctype html><html><head><title>FYERS login (simulated)</title></head><body>"
            f'<form method="post" action="{API}/generate-authcode">{hidden}'
            f'<label>Client ID <input name="fy_id" value="{DEFAULT_USER_ID}"></label>'
            '<label>PIN <input name="pin" type="password" value="1234"></label>'
            '<button type="submit">Log in</button></form></body></html>'
        )

    def _login_submit(self, request: SimRequest) -> SimResponse:
        form = request.form()
        client_id, redirect_uri = form.get("client_id", ""), form.get("redirect_uri", "")
        user_id = form.get("fy_id", "").strip().upper()
        try:
            self._checked_app(client_id, redirect_uri)
            if not USER_ID.match(user_id) or not form.get("pin"):
                raise _FyersError(400, -50, "Enter a Fyers client id (like XJ00001) and your PIN.")
        except _FyersError as error:
            return self._error(error)
        auth_code = secrets.token_urlsafe(32)
        with self._state_lock:
            self._auth_codes[auth_code] = _AuthCode(client_id, user_id, time.monotonic() + AUTH_CODE_SECONDS)
        query = urlencode({"s": "ok", "code": 200, "auth_code": auth_code, "state": form.get("state", "")})
        return SimResponse.redirect(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}")

    def _validate_authcode(self, request: SimRequest) -> SimResponse:
        body = request.json()
        with self._state_lock:
            grant = self._auth_codes.pop(str(body.get("code") or ""), None)  # single use, even when refused
        if body.get("grant_type") != "authorization_code":
            return self._error(_FyersError(400, -50, "grant_type must be authorization_code."))
        if grant is None or grant.expires_at < time.monotonic():
            return self._error(_FyersError(400, -50, "Invalid or expired auth code."))
        app = self._apps.get(grant.client_id)
        expected = app_id_hash(grant.client_id, app.secret_key) if app else ""
        if not hmac.compare_digest(expected, str(body.get("appIdHash") or "")):
            return self._error(_FyersError(400, -50, "Invalid appIdHash."))
        access_token = self._issue_token(grant.client_id, grant.user_id)
        return _ok(access_token=access_token, refresh_token=secrets.token_urlsafe(32))

    def _issue_token(self, client_id: str, user_id: str) -> str:
        now = int(time.time())
        claims = {
            "iss": "api.fyers.in",
            "iat": now,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "sub": "access_token",
            "fy_id": user_id,
            "app_id": client_id,
            "jti": secrets.token_hex(8),
        }
        signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64(json.dumps(claims))}"
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(signature)}"
        with self._state_lock:
            self._sessions[token] = _Session(client_id=client_id, user_id=user_id)
        return token

    # --- authentication and limits ------------------------------------------------------------------------

    def _authed(self, handler: Callable[[SimRequest, _Session], SimResponse], *, orders: bool = False):
        def route(request: SimRequest) -> SimResponse:
            try:
                session = self._session_for(request.headers.get("Authorization", ""))
                limits = self._order_limits if orders else self._other_limits
                if not limits.allow(session.rate_key):
                    raise _FyersError(429, 429, "request limit reached")
                return handler(request, session)
            except _FyersError as error:
                return self._error(error)

        return route

    def _session_for(self, authorization: str) -> _Session:
        client_id, _, token = authorization.partition(":")
        with self._state_lock:
            session = self._sessions.get(token)
            expired = token in self._expired
        if expired:
            raise _FyersError(401, -8, "Your token has expired. Please generate a token")
        if session is None or session.client_id != client_id:
            raise _FyersError(401, -16, "Could not authenticate the user")
        return session

    def _error(self, error: _FyersError) -> SimResponse:
        body = {"s": "error", "code": error.code, "message": error.message} | error.extra
        return SimResponse.json(body, status=error.status)

    # --- user ---------------------------------------------------------------------------------------------

    def _profile(self, request: SimRequest, session: _Session) -> SimResponse:
        return _ok(data={"fy_id": session.user_id, "name": f"SIMULATED {session.user_id}", "display_name": None})

    def _logout(self, request: SimRequest, session: _Session) -> SimResponse:
        _, _, token = request.headers.get("Authorization", "").partition(":")
        with self._state_lock:
            self._sessions.pop(token, None)
            self._expired.add(token)
        return _ok(message="you are successfully logged out")

    # --- orders -------------------------------------------------------------------------------------------

    def _place(self, request: SimRequest, session: _Session) -> SimResponse:
        order_request = _order_request(request.json())
        account = _account(session)
        try:
            order = exchange.place(account=account, request=order_request)
        except InvalidInput as error:
            raise _FyersError(400, -50, error.detail) from None
        if order.status == BrokerOrderStatus.REJECTED:
            raise _FyersError(400, -99, f"RMS:Rejected: {order.status_message}", id=order.order_id)
        message = f"Order submitted successfully. Your Order Ref. No.{order.order_id}"
        return SimResponse.json({"s": "ok", "code": 1101, "message": message, "id": order.order_id})

    def _modify(self, request: SimRequest, session: _Session) -> SimResponse:
        body = request.json()
        order_id = str(body.get("id") or "")
        change = ModifyRequest(
            quantity=_optional_quantity(body.get("qty")),
            price=_optional_price(body.get("limitPrice"), "limitPrice"),
            trigger_price=_optional_price(body.get("stopPrice"), "stopPrice"),
            order_type=_lookup(ORDER_TYPE_FROM_FYERS, body.get("type"), "type") if "type" in body else None,
        )
        self._on_order(lambda account: exchange.modify(account=account, order_id=order_id, request=change), session)
        return SimResponse.json({"s": "ok", "code": 1102, "message": "Successfully modified order", "id": order_id})

    def _cancel(self, request: SimRequest, session: _Session) -> SimResponse:
        order_id = str(request.json().get("id") or "")
        self._on_order(lambda account: exchange.cancel(account=account, order_id=order_id), session)
        return SimResponse.json({"s": "ok", "code": 1103, "message": "Successfully cancelled order", "id": order_id})

    @staticmethod
    def _on_order(change: Callable[[SimAccount], Any], session: _Session) -> None:
        try:
            change(_account(session))
        except UnknownOrder:
            raise _FyersError(400, -51, "Invalid order id") from None
        except InvalidInput as error:
            raise _FyersError(400, -50, error.detail) from None

    def _order_book(self, request: SimRequest, session: _Session) -> SimResponse:
        account = _account(session)
        rows = [_order_row(exchange.to_broker_order(order), session) for order in exchange.orders(account=account)]
        if request.arg("id"):
            rows = [row for row in rows if row["id"] in request.arg("id", "").split(",")]
        if request.arg("order_tag"):
            rows = [row for row in rows if row["orderTag"] == request.arg("order_tag")]
        return _ok(orderBook=rows)

    def _trade_book(self, request: SimRequest, session: _Session) -> SimResponse:
        account = _account(session)
        orders = {order.order_id: exchange.to_broker_order(order) for order in exchange.orders(account=account)}
        rows = []
        for trade in exchange.trades(account=account):
            order = orders[trade.broker_order_id]
            rows.append(
                {
                    "clientId": session.user_id,
                    "orderDateTime": format_fyers_time(trade.traded_at),
                    "orderNumber": trade.broker_order_id,
                    "exchangeOrderNo": trade.broker_order_id,
                    "exchange": 10,
                    "segment": 10,
                    "side": SIDE_TO_FYERS[trade.side],
                    "orderType": ORDER_TYPE_TO_FYERS[order.order_type],
                    "productType": PRODUCT_TO_FYERS[order.product],
                    "tradedQty": trade.quantity,
                    "tradePrice": trade.price,
                    "tradeValue": trade.price * trade.quantity,
                    "tradeNumber": trade.trade_id,
                    "symbol": to_fyers_symbol(trade.symbol),
                    "orderTag": _wire_tag(order.tag),
                }
            )
        return _ok(tradeBook=rows)

    # --- portfolio ----------------------------------------------------------------------------------------

    def _positions(self, request: SimRequest, session: _Session) -> SimResponse:
        rows = []
        for position in exchange.positions(account=_account(session)):
            symbol, product = to_fyers_symbol(position.symbol), PRODUCT_TO_FYERS[position.product]
            rows.append(
                {
                    "symbol": symbol,
                    "id": f"{symbol}-{product}",
                    "productType": product,
                    "netQty": position.quantity,
                    "qty": abs(position.quantity),
                    "side": (position.quantity > 0) - (position.quantity < 0),
                    "netAvg": position.average_price,
                    "avgPrice": position.average_price,
                    "buyQty": position.buy_quantity,
                    "sellQty": position.sell_quantity,
                    "ltp": position.last_price,
                    "realized_profit": position.realized_pnl,
                    "unrealized_profit": position.unrealized_pnl,
                    "pl": position.realized_pnl + position.unrealized_pnl,
                    "segment": 10,
                    "exchange": 10,
                }
            )
        realized = sum((row["realized_profit"] for row in rows), Decimal("0"))
        unrealized = sum((row["unrealized_profit"] for row in rows), Decimal("0"))
        overall = {
            "count_total": len(rows),
            "count_open": sum(1 for row in rows if row["netQty"]),
            "pl_realized": realized,
            "pl_unrealized": unrealized,
            "pl_total": realized + unrealized,
        }
        return _ok(netPositions=rows, overall=overall)

    def _holdings(self, request: SimRequest, session: _Session) -> SimResponse:
        rows = []
        for holding in exchange.holdings(account=_account(session)):
            last = holding.last_price or holding.average_price
            rows.append(
                {
                    "symbol": to_fyers_symbol(holding.symbol),
                    "holdingType": "HLD",
                    "quantity": holding.quantity,
                    "remainingQuantity": holding.quantity,
                    "costPrice": holding.average_price,
                    "ltp": last,
                    "marketVal": last * holding.quantity,
                    "pl": (last - holding.average_price) * holding.quantity,
                    "segment": 10,
                    "exchange": 10,
                }
            )
        return _ok(holdings=rows)

    def _funds(self, request: SimRequest, session: _Session) -> SimResponse:
        account = _account(session)
        funds = exchange.funds(account=account)  # refreshes the account row
        lines = [
            (1, "Total Balance", account.cash),
            (2, "Utilized Amount", funds.used_margin),
            (3, "Clear Balance", funds.available_cash),
            (4, "Realized Profit and Loss", account.cash - account.opening_balance),
            (5, "Collaterals", Decimal("0")),
            (6, "Fund Transfer", Decimal("0")),
            (7, "Receivables", Decimal("0")),
            (8, "Adhoc Limit", Decimal("0")),
            (9, "Limit at start of the day", funds.opening_balance),
            (10, "Available Balance", funds.available_cash),
        ]
        rows = [
            {"id": line_id, "title": title, "equityAmount": amount, "commodityAmount": 0}
            for line_id, title, amount in lines
        ]
        return _ok(fund_limit=rows)

    # --- data API -----------------------------------------------------------------------------------------

    def _quotes(self, request: SimRequest, session: _Session) -> SimResponse:
        names = [name for name in (request.arg("symbols") or "").split(",") if name]
        if not names or len(names) > 50:
            raise _FyersError(400, -50, "Pass 1 to 50 comma-separated symbols.")
        return _ok(d=[_quote_item(name) for name in names])


# --- wire <-> exchange ---------------------------------------------------------------------------------------------


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _account(session: _Session) -> SimAccount:
    return exchange.exchange_account(venue="fyers", client_id=session.user_id)


def _lookup(table: dict, key: Any, field: str) -> Any:
    try:
        return table[key]
    except (KeyError, TypeError):
        raise _FyersError(400, -50, f"Invalid {field}: {key!r}.") from None


def _canonical_symbol(value: Any) -> str:
    try:
        return from_fyers_symbol(str(value or ""))
    except InvalidInput:
        raise _FyersError(400, -300, "Invalid symbol provided") from None


def _optional_price(value: Any, field: str) -> Decimal | None:
    if value is None:
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise _FyersError(400, -50, f"Invalid {field}.") from None
    return price.quantize(Decimal("0.01")) if price > 0 else None


def _optional_quantity(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _FyersError(400, -50, "Invalid qty.")
    return value


def _order_request(body: dict[str, Any]) -> OrderRequest:
    product = body.get("productType")
    if product not in _PLACEABLE_PRODUCTS:
        raise _FyersError(400, -50, f"Invalid productType: {product!r}.")
    tag = str(body.get("orderTag") or "")
    if tag and not ORDER_TAG.match(tag):
        raise _FyersError(400, -50, "orderTag must be 1-30 letters or digits.")
    return OrderRequest(
        symbol=_canonical_symbol(body.get("symbol")),
        side=_lookup(SIDE_FROM_FYERS, body.get("side"), "side"),
        quantity=_optional_quantity(body.get("qty")) or 0,
        order_type=_lookup(ORDER_TYPE_FROM_FYERS, body.get("type"), "type"),
        product=PRODUCT_FROM_FYERS[product],
        price=_optional_price(body.get("limitPrice"), "limitPrice"),
        trigger_price=_optional_price(body.get("stopPrice"), "stopPrice"),
        validity=_lookup(VALIDITY_FROM_FYERS, body.get("validity") or "DAY", "validity"),
        tag=tag,
    )


def _wire_tag(tag: str) -> str:
    return f"1:{tag}" if tag else "2:Untagged"


def _order_row(order: BrokerOrder, session: _Session) -> dict[str, Any]:
    status = STATUS_TO_FYERS[order.status]
    return {
        "clientId": session.user_id,
        "id": order.broker_order_id,
        "exchOrdId": order.broker_order_id if order.status != BrokerOrderStatus.REJECTED else "",
        "symbol": to_fyers_symbol(order.symbol),
        "qty": order.quantity,
        "filledQty": order.filled_quantity,
        "remainingQuantity": order.quantity - order.filled_quantity,
        "limitPrice": order.price or 0,
        "stopPrice": order.trigger_price or 0,
        "tradedPrice": order.average_price or 0,
        "type": ORDER_TYPE_TO_FYERS[OrderType(order.order_type)],
        "side": SIDE_TO_FYERS[Side(order.side)],
        "productType": PRODUCT_TO_FYERS[Product(order.product)],
        "orderValidity": Validity(order.validity).value,
        "status": status,
        "orderNumStatus": f"{order.broker_order_id}:{status}",
        "orderTag": _wire_tag(order.tag),
        "message": order.status_message,
        "orderDateTime": format_fyers_time(order.placed_at),
        "source": "API",
        "offlineOrder": False,
        "disclosedQty": 0,
        "segment": 10,
        "exchange": 10,
    }


def _quote_item(name: str) -> dict[str, Any]:
    try:
        symbol = from_fyers_symbol(name)
    except InvalidInput:
        return {"n": name, "s": "error", "v": {"code": -300, "errmsg": "invalid symbol", "symbol": name}}
    quote = quote_for(symbol)
    close = quote.close or quote.last_price
    change = quote.last_price - close
    exchange_name, _, short_name = name.partition(":")
    return {
        "n": name,
        "s": "ok",
        "v": {
            "symbol": name,
            "original_name": name,
            "short_name": short_name,
            "exchange": exchange_name,
            "lp": quote.last_price,
            "ch": change,
            "chp": (change / close * 100).quantize(Decimal("0.01")) if close else 0,
            "bid": quote.bid or 0,
            "ask": quote.ask or 0,
            "spread": (quote.ask - quote.bid) if quote.ask is not None and quote.bid is not None else 0,
            "open_price": quote.open or 0,
            "high_price": quote.high or 0,
            "low_price": quote.low or 0,
            "prev_close_price": close,
            "volume": quote.volume,
            "tt": str(int(quote.timestamp.timestamp())) if quote.timestamp else "",
        },
    }
