"""A local Fyers API v3: the login flow and its refresh-token renewal, the trading routes, the data API's quotes and
historical candles, and the public symbol master, in Fyers' wire format, over the shared simulated exchange. Point
the SDK at `{url}/api/v3` (API) and `{url}/data` (data API), the symbol master at `{url}/sym_details`.

Apps are registered with `register_app(client_id, secret_key)`. The login page accepts any Fyers user id (and any
PIN); that user id names the exchange account (`exchange_account(venue="fyers", client_id=<user id>)`). Access tokens
are JWT-shaped (the user id is the `fy_id` claim, as at Fyers) and die on `expire_sessions()` or `/logout`.

Session renewal: `validate-authcode` also issues a refresh token, valid 15 days (and across `expire_sessions()`, the
daily logout); `POST /api/v3/validate-refresh-token` with the app's appIdHash, that refresh token and the user's PIN
issues a new access token. Every user's PIN is the demo PIN 1234 (what the login page fills in) unless `set_pin()`
or the control route `POST /__sim__/pin {"fy_id", "pin"}` gave them another; `expire_refresh_tokens()` (control route
`POST /__sim__/expire-refresh-tokens`) ages every refresh token past its 15 days.

Historical data: `GET /data/history` answers resolutions "1" and "D" (also "1D") with candles from the synthetic price
path the Kite simulator uses, for trading days' 09:15-15:30 sessions, starting in [range_from, range_to] (epochs, or
dates with date_format=1) and no later than now; daily candles are stamped 00:00 IST. A range longer than Fyers'
limits (100 days of minute candles, 366 of daily) is refused with -50; a range without candles is `"s": "no_data"`.

Symbol master: `GET /sym_details/<SEGMENT>.csv` (NSE_CM, BSE_CM, NSE_FO, BSE_FO, MCX_COM, NSE_CD; no login) serves the
instrument master (the static instrument table while the master is empty) in Fyers' header-less 21-column layout.
`POST /__sim__/symbol-master` degrades it for tests: {"rows": N} serves only the first N rows of each file,
{"without_indices": true} leaves the indices out, {"columns": N} cuts every row to N columns (a changed layout),
{"segment": "NSE_CM"} limits the change to one file; an empty body restores it. Fault injection (`/__sim__/fault`)
fails these routes like every other.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from django.utils import timezone

from brokers import exchange, instruments
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
from brokers.symbols import INDEX_TO_FYERS
from marketdata.calendar import trading_day_on_or_before
from marketdata.instruments import DEMO_INDICES, kite_future_tradingsymbol
from marketdata.models import Instrument, InstrumentType
from marketdata.selectors import instrument_active_list, instrument_master_count

from .base import RateWindows, SimRequest, SimResponse, SimulatorApp
from .kite import _historical_buckets, synthetic_candle

API = "/api/v3"
DATA = "/data"
AUTH_CODE_SECONDS = 300
ACCESS_TOKEN_SECONDS = 24 * 3600
REFRESH_TOKEN_SECONDS = 15 * 24 * 3600
DEMO_PIN = "1234"
IST = ZoneInfo("Asia/Kolkata")
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
class _RefreshGrant:
    client_id: str
    user_id: str
    expires_at: float  # epoch seconds


@dataclass
class _MasterDegradation:
    """How the symbol master is served wrong, for tests of the platform's refresh guard."""

    rows: int | None = None
    without_indices: bool = False
    columns: int | None = None
    segments: set[str] = field(default_factory=set)  # empty: every file

    def applies_to(self, segment: str) -> bool:
        return not self.segments or segment in self.segments


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
        self._hsm_keys: dict[str, str] = {}  # the data socket's credential (a token's hsm_key claim) -> the token
        self._refresh_grants: dict[str, _RefreshGrant] = {}
        self._pins: dict[str, str] = {}
        self._master_degradation = _MasterDegradation()
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

    def set_pin(self, user_id: str, pin: str) -> None:
        """The PIN `validate-refresh-token` expects for this Fyers user (DEMO_PIN until set)."""
        with self._state_lock:
            self._pins[user_id.upper()] = pin

    def expire_refresh_tokens(self) -> None:
        """Every refresh token issued so far is past its 15 days: renewing needs a fresh login."""
        with self._state_lock:
            self._refresh_grants = {
                token: _RefreshGrant(grant.client_id, grant.user_id, expires_at=0.0)
                for token, grant in self._refresh_grants.items()
            }

    def degrade_symbol_master(
        self,
        *,
        rows: int | None = None,
        without_indices: bool = False,
        columns: int | None = None,
        segments: Iterable[str] = (),
    ) -> None:
        """Serve the symbol master truncated or in another layout until called again without arguments."""
        with self._state_lock:
            self._master_degradation = _MasterDegradation(
                rows=rows, without_indices=without_indices, columns=columns, segments=set(segments)
            )

    def _control(self, request: SimRequest) -> SimResponse:
        if request.method == "POST" and request.path in (
            "/__sim__/pin",
            "/__sim__/expire-refresh-tokens",
            "/__sim__/symbol-master",
        ):
            data = request.json() if request.body else {}
            if request.path == "/__sim__/pin":
                self.set_pin(str(data.get("fy_id") or ""), str(data.get("pin") or ""))
            elif request.path == "/__sim__/expire-refresh-tokens":
                self.expire_refresh_tokens()
            else:
                self.degrade_symbol_master(
                    rows=int(data["rows"]) if data.get("rows") is not None else None,
                    without_indices=bool(data.get("without_indices")),
                    columns=int(data["columns"]) if data.get("columns") is not None else None,
                    segments=[data["segment"]] if data.get("segment") else [],
                )
            return SimResponse.json({"ok": True})
        return super()._control(request)

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        code = status if kind == "server" else _CODE_FOR_STATUS.get(status, -status)
        return SimResponse.json({"s": "error", "code": code, "message": message}, status=status)

    def setup_routes(self) -> None:
        self.add_route("GET", f"{API}/generate-authcode", self._login_page)
        self.add_route("POST", f"{API}/generate-authcode", self._login_submit)
        self.add_route("POST", f"{API}/validate-authcode", self._validate_authcode)
        self.add_route("POST", f"{API}/validate-refresh-token", self._validate_refresh_token)
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
        self.add_route("GET", f"{DATA}/history", self._authed(self._history))
        self.add_route("GET", r"/sym_details/(?P<segment>[A-Z_]+)\.csv", self._symbol_master)

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
        refresh_token = secrets.token_urlsafe(32)
        with self._state_lock:
            self._refresh_grants[refresh_token] = _RefreshGrant(
                grant.client_id, grant.user_id, expires_at=time.time() + REFRESH_TOKEN_SECONDS
            )
        return _ok(access_token=access_token, refresh_token=refresh_token)

    def _validate_refresh_token(self, request: SimRequest) -> SimResponse:
        """A new access token for the refresh token's user; the refresh token itself stays valid until it expires."""
        body = request.json()
        if body.get("grant_type") != "refresh_token":
            return self._error(_FyersError(400, -50, "grant_type must be refresh_token."))
        with self._state_lock:
            grant = self._refresh_grants.get(str(body.get("refresh_token") or ""))
            pin = self._pins.get(grant.user_id, DEMO_PIN) if grant else ""
        if grant is None:
            return self._error(_FyersError(400, -17, "Invalid refresh token."))
        if grant.expires_at < time.time():
            return self._error(_FyersError(400, -8, "Your refresh token has expired. Please log in again."))
        app = self._apps.get(grant.client_id)
        expected = app_id_hash(grant.client_id, app.secret_key) if app else ""
        if not hmac.compare_digest(expected, str(body.get("appIdHash") or "")):
            return self._error(_FyersError(400, -50, "Invalid appIdHash."))
        if not hmac.compare_digest(pin.encode(), str(body.get("pin") or "").encode()):
            return self._error(_FyersError(400, -1501, "Invalid PIN."))
        return _ok(access_token=self._issue_token(grant.client_id, grant.user_id))

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
            "hsm_key": secrets.token_hex(16),  # what the data socket authenticates with (the SDK reads it here)
        }
        signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64(json.dumps(claims))}"
        signature = hmac.new(self._signing_key, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(signature)}"
        with self._state_lock:
            self._sessions[token] = _Session(client_id=client_id, user_id=user_id)
            self._hsm_keys[claims["hsm_key"]] = token
        return token

    def user_for_token(self, credential: str) -> str | None:
        """The user of a live access token, or of the token whose hsm_key claim `credential` is; None when unknown
        or expired. The data-socket simulator asks this."""
        with self._state_lock:
            session = self._sessions.get(self._hsm_keys.get(credential, credential))
        return session.user_id if session else None

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

    def _history(self, request: SimRequest, session: _Session) -> SimResponse:
        name = request.arg("symbol") or ""
        symbol = _canonical_symbol(name)
        if instruments.by_symbol(symbol) is None:
            raise _FyersError(400, -300, f"Invalid symbol: {name}")
        interval = HISTORY_INTERVALS.get(request.arg("resolution") or "")
        if interval is None:
            raise _FyersError(400, -50, "Invalid resolution.")
        start, end = _history_range(request)
        if end < start:
            raise _FyersError(400, -50, "range_from must not be after range_to.")
        limit_days = HISTORY_MAX_DAYS[interval]
        if end - start > timedelta(days=limit_days):
            kind = "minute" if interval == "minute" else "day"
            raise _FyersError(400, -50, f"The range can be at most {limit_days} days for {kind} resolutions.")
        latest = min(end, datetime.now(tz=IST))
        candles = []
        for opening, seconds in _historical_buckets(interval=interval, start=start, end=latest):
            _, *ohlcv = synthetic_candle(symbol, opening=opening, seconds=seconds, interval=interval)
            stamp = opening if interval == "minute" else datetime.combine(opening.date(), datetime.min.time(), IST)
            candles.append([int(stamp.timestamp()), *ohlcv])
        if not candles:
            return SimResponse.json({"s": "no_data", "code": 0, "message": "", "candles": []})
        return SimResponse.json({"s": "ok", "code": 200, "message": "", "candles": candles})

    # --- symbol master ------------------------------------------------------------------------------------

    def _symbol_master(self, request: SimRequest, segment: str) -> SimResponse:
        exchange_code = MASTER_SEGMENTS.get(segment)
        if exchange_code is None:
            return SimResponse(404, b"<html><body>404 Not Found</body></html>", "text/html")
        with self._state_lock:
            degradation = self._master_degradation
        rows = symbol_master_rows(exchange_code)
        if degradation.applies_to(segment):
            if degradation.without_indices:
                rows = [row for row in rows if row[2] != str(FYERS_INDEX_TYPE)]
            if degradation.rows is not None:
                rows = rows[: degradation.rows]
            if degradation.columns is not None:
                rows = [row[: degradation.columns] for row in rows]
        text = "".join(",".join(_csv_field(value) for value in row) + "\n" for row in rows)
        return SimResponse(200, text.encode(), "text/csv")


# --- historical data -------------------------------------------------------------------------------------------------

HISTORY_INTERVALS = {"1": "minute", "D": "day", "1D": "day"}
HISTORY_MAX_DAYS = {"minute": 100, "day": 366}


def _history_range(request: SimRequest) -> tuple[datetime, datetime]:
    """[range_from, range_to], both inclusive: epochs with date_format=0, whole IST days with date_format=1."""
    raw_from, raw_to = request.arg("range_from") or "", request.arg("range_to") or ""
    try:
        if request.arg("date_format") == "1":
            first, last = date.fromisoformat(raw_from), date.fromisoformat(raw_to)
            start = datetime.combine(first, datetime.min.time(), IST)
            return start, datetime.combine(last, datetime.max.time().replace(microsecond=0), IST)
        return datetime.fromtimestamp(int(raw_from), IST), datetime.fromtimestamp(int(raw_to), IST)
    except (ValueError, OverflowError, OSError):
        raise _FyersError(400, -50, "Invalid range_from or range_to.") from None


# --- symbol master -------------------------------------------------------------------------------------------------

# File -> our exchange; Fyers' exchange and segment codes by our exchange.
MASTER_SEGMENTS = {
    "NSE_CM": "NSE",
    "BSE_CM": "BSE",
    "NSE_FO": "NFO",
    "BSE_FO": "BFO",
    "MCX_COM": "MCX",
    "NSE_CD": "CDS",
}
FYERS_EXCHANGE_SEGMENT = {
    "NSE": (10, 10),
    "BSE": (12, 10),
    "NFO": (10, 11),
    "BFO": (12, 11),
    "CDS": (10, 12),
    "MCX": (11, 20),
}
TRADING_SESSIONS = {"CDS": "0900-1700|1815-1915:", "MCX": "0900-2355|1815-1915:"}
DEFAULT_TRADING_SESSION = "0915-1530|1815-1915:"
EXPIRY_TIME = {"MCX": (23, 30), "CDS": (12, 30)}  # the expiry day's last trading minute; 15:30 elsewhere
FYERS_INDEX_TYPE = 10
# Fyers' exchange instrument type codes: (index underlying?, type) on equity derivatives, by type on the others.
_EQUITY_DERIVATIVE_TYPES = {
    (True, InstrumentType.FUT): 11,
    (False, InstrumentType.FUT): 13,
    (True, InstrumentType.CE): 14,
    (True, InstrumentType.PE): 14,
    (False, InstrumentType.CE): 15,
    (False, InstrumentType.PE): 15,
}
_OTHER_DERIVATIVE_TYPES = {
    ("CDS", InstrumentType.FUT): 16,
    ("CDS", InstrumentType.CE): 19,
    ("CDS", InstrumentType.PE): 19,
    ("MCX", InstrumentType.FUT): 30,
    ("MCX", InstrumentType.CE): 31,
    ("MCX", InstrumentType.PE): 31,
}
# The exchange tokens Fyers lists NSE's indices under.
_INDEX_SCRIP_CODES = {
    "NSE:NIFTY50-INDEX": 26000,
    "NSE:NIFTYBANK-INDEX": 26009,
    "NSE:INDIAVIX-INDEX": 26017,
    "NSE:FINNIFTY-INDEX": 26037,
    "NSE:MIDCPNIFTY-INDEX": 26074,
}
_KNOWN_ISINS = {
    "RELIANCE": "INE002A01018",
    "INFY": "INE009A01021",
    "TCS": "INE467B01029",
    "HDFCBANK": "INE040A01034",
    "ICICIBANK": "INE090A01021",
    "SBIN": "INE062A01020",
    "ITC": "INE154A01025",
}


@dataclass(frozen=True)
class _MasterEntry:
    """What a symbol master row is built from: an Instrument, or a row of the static table."""

    symbol: str
    exchange: str
    tradingsymbol: str
    name: str
    underlying: str
    instrument_type: str
    expiry: date | None
    strike: Decimal | None
    lot_size: int
    tick_size: Decimal
    exchange_token: int
    fyers_symbol: str
    updated: date


def symbol_master_rows(exchange_code: str) -> list[list[str]]:
    """One exchange's rows of Fyers' symbol master (21 columns each), from the instrument master."""
    entries = _master_entries()
    underlyings = {
        (entry.exchange, entry.underlying): entry
        for entry in entries
        if entry.exchange in ("NSE", "BSE") and entry.instrument_type in (InstrumentType.EQ, InstrumentType.INDEX)
    }
    cash_exchange = {"NFO": "NSE", "CDS": "NSE", "BFO": "BSE"}.get(exchange_code, exchange_code)
    listed = [entry for entry in entries if entry.exchange == exchange_code]
    if not listed and exchange_code in _FILLER_FUTURES:
        listed = _filler_entries(exchange_code, today=timezone.localdate())
    rows = []
    for entry in listed:
        underlying = underlyings.get((cash_exchange, entry.underlying)) or underlyings.get(("NSE", entry.underlying))
        rows.append(_master_row(entry, underlying))
    return rows


# Commodity and currency futures for the files the demo universe leaves empty (Fyers never publishes an empty one):
# (underlying, lot size, tick size) for the current and next month, expiring on an approximation of the exchanges'
# days (MCX: the 20th; NSE currency: two days before the month's end; a holiday moves them to the trading day before).
_FILLER_FUTURES = {
    "MCX": (("CRUDEOIL", 100, Decimal("1")), ("GOLDM", 10, Decimal("1")), ("SILVERM", 5, Decimal("1"))),
    "CDS": (("USDINR", 1, Decimal("0.0025")), ("EURINR", 1, Decimal("0.0025"))),
}
_FILLER_TOKEN_BASE = 900_000


def _filler_entries(exchange_code: str, *, today: date) -> list[_MasterEntry]:
    entries = []
    for position, (underlying, lot_size, tick_size) in enumerate(_FILLER_FUTURES[exchange_code]):
        for month_offset in (0, 1):
            year, month = today.year + (today.month + month_offset - 1) // 12, (today.month + month_offset - 1) % 12 + 1
            if exchange_code == "MCX":
                scheduled = date(year, month, 20)
            else:
                scheduled = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=3)
            expiry = trading_day_on_or_before(scheduled)
            tradingsymbol = kite_future_tradingsymbol(underlying=underlying, expiry=expiry)
            prefix = "MCX" if exchange_code == "MCX" else "NSE"
            entries.append(
                _MasterEntry(
                    symbol=f"{exchange_code}:{tradingsymbol}",
                    exchange=exchange_code,
                    tradingsymbol=tradingsymbol,
                    name=underlying,
                    underlying=underlying,
                    instrument_type=InstrumentType.FUT,
                    expiry=expiry,
                    strike=None,
                    lot_size=lot_size,
                    tick_size=tick_size,
                    exchange_token=_FILLER_TOKEN_BASE + position * 2 + month_offset,
                    fyers_symbol=f"{prefix}:{tradingsymbol}",
                    updated=today,
                )
            )
    return entries


def _master_entries() -> list[_MasterEntry]:
    records = list(instrument_active_list().iterator(chunk_size=5000))
    if records:
        return [_entry_from_instrument(instrument) for instrument in records]
    if instrument_master_count():
        return []
    return [_entry_from_static(known) for known in instruments.DEMO_INSTRUMENTS]


def _entry_from_instrument(instrument: Instrument) -> _MasterEntry:
    token = int(instrument.dhan_security_id) if instrument.dhan_security_id.isdigit() else 0
    return _MasterEntry(
        symbol=instrument.symbol,
        exchange=instrument.exchange,
        tradingsymbol=instrument.tradingsymbol,
        name=instrument.name,
        underlying=instrument.underlying,
        instrument_type=instrument.instrument_type,
        expiry=instrument.expiry,
        strike=instrument.strike,
        lot_size=instrument.lot_size,
        tick_size=instrument.tick_size,
        exchange_token=token or (instrument.kite_token or 0) // 256,
        fyers_symbol=instrument.fyers_symbol or to_fyers_symbol(instrument.symbol),
        updated=instrument.updated_at.astimezone(IST).date(),
    )


def _entry_from_static(known: instruments.KnownInstrument) -> _MasterEntry:
    exchange_code, tradingsymbol = known.symbol.split(":", 1)
    is_index = known.symbol in INDEX_TO_FYERS
    underlying = next((index.underlying for index in DEMO_INDICES if index.symbol == known.symbol), tradingsymbol)
    return _MasterEntry(
        symbol=known.symbol,
        exchange=exchange_code,
        tradingsymbol=tradingsymbol,
        name=tradingsymbol,
        underlying=underlying,
        instrument_type=InstrumentType.INDEX if is_index else InstrumentType.EQ,
        expiry=None,
        strike=None,
        lot_size=known.lot_size,
        tick_size=Decimal("0.05"),
        exchange_token=int(known.dhan_security_id) if known.dhan_security_id.isdigit() else known.kite_token // 256,
        fyers_symbol=INDEX_TO_FYERS.get(known.symbol) or to_fyers_symbol(known.symbol),
        updated=date(2025, 1, 1),
    )


def _master_row(entry: _MasterEntry, underlying: _MasterEntry | None) -> list[str]:
    exchange_number, segment_number = FYERS_EXCHANGE_SEGMENT[entry.exchange]
    kind = InstrumentType(entry.instrument_type)
    scrip = _INDEX_SCRIP_CODES.get(entry.fyers_symbol, entry.exchange_token)
    fytoken = _fytoken(entry.exchange, entry.expiry, scrip)
    if kind == InstrumentType.EQ:
        type_code, details = 0, entry.name or entry.tradingsymbol
    elif kind == InstrumentType.INDEX:
        type_code, details = FYERS_INDEX_TYPE, entry.fyers_symbol.partition(":")[2]
    else:
        index_underlying = underlying is not None and underlying.instrument_type == InstrumentType.INDEX
        type_code = (
            _OTHER_DERIVATIVE_TYPES.get((entry.exchange, kind)) or _EQUITY_DERIVATIVE_TYPES[(index_underlying, kind)]
        )
        expiry_text = entry.expiry.strftime("%d %b %y") if entry.expiry else ""
        contract = "FUT" if kind == InstrumentType.FUT else f"{_strike_text(entry.strike)} {kind.value}"
        details = f"{entry.underlying} {expiry_text} {contract}"
    if underlying is not None:
        underlying_scrip = _INDEX_SCRIP_CODES.get(underlying.fyers_symbol, underlying.exchange_token)
        underlying_fytoken = _fytoken(underlying.exchange, None, underlying_scrip)
    else:
        underlying_scrip, underlying_fytoken = "", ""
    return [
        fytoken,
        details,
        str(type_code),
        "0" if kind == InstrumentType.INDEX else str(entry.lot_size),
        _decimal_text(entry.tick_size or Decimal("0.05")),
        _isin(entry) if kind == InstrumentType.EQ else "",
        TRADING_SESSIONS.get(entry.exchange, DEFAULT_TRADING_SESSION),
        entry.updated.isoformat(),
        str(_expiry_epoch(entry.exchange, entry.expiry)) if entry.expiry else "",
        entry.fyers_symbol,
        str(exchange_number),
        str(segment_number),
        str(scrip),
        entry.underlying,
        str(underlying_scrip),
        _strike_text(entry.strike) if kind in (InstrumentType.CE, InstrumentType.PE) else "-1.0",
        kind.value if kind in (InstrumentType.CE, InstrumentType.PE) else "XX",
        underlying_fytoken,
        "None",
        "0",
        "0.0",
    ]


def _fytoken(exchange_code: str, expiry: date | None, scrip: int | str) -> str:
    """Exchange (2 digits), segment (2), expiry YYMMDD (zeros for cash), then the exchange token."""
    exchange_number, segment_number = FYERS_EXCHANGE_SEGMENT[exchange_code]
    return f"{exchange_number}{segment_number}{expiry.strftime('%y%m%d') if expiry else '000000'}{scrip}"


def _expiry_epoch(exchange_code: str, expiry: date) -> int:
    hour, minute = EXPIRY_TIME.get(exchange_code, (15, 30))
    return int(datetime(expiry.year, expiry.month, expiry.day, hour, minute, tzinfo=IST).timestamp())


def _isin(entry: _MasterEntry) -> str:
    """The real ISIN where we know it, else a stable made-up one of the same shape."""
    if entry.tradingsymbol in _KNOWN_ISINS:
        return _KNOWN_ISINS[entry.tradingsymbol]
    digest = hashlib.sha256(entry.symbol.encode()).hexdigest().upper()
    return f"INE{digest[:3]}{digest[3:5]}01{int(digest[5], 16) % 10}"


def _strike_text(strike: Decimal | None) -> str:
    """Fyers writes strikes as floats: 24000.0, 22.5."""
    if strike is None:
        return "-1.0"
    return f"{strike:.1f}" if strike == strike.to_integral_value() else format(strike.normalize(), "f")


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _csv_field(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


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
