"""Zerodha Kite Connect v3 over HTTP, as the `kiteconnect` SDK expects it, backed by the simulated exchange.

Serves at `/` (the SDK drops path prefixes). Login: `/connect/login` shows a form and redirects to the app's
redirect URL with a one-time `request_token`; `POST /session/token` checks the sha256 checksum and issues an
access token. Errors use Kite's envelope and exception names; limits answer 429 like Kite does. An app registered
with a postback URL gets Kite's postback (the order dict, `user_id` and its checksum) whenever one of its orders is
placed, modified, cancelled or filled by a quote, sent by one background thread in the order they were queued.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import queue
import secrets
import threading
import urllib.request
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

from algoterm.sandbox.simulators.base import RateWindows, SimRequest, SimResponse, SimulatorApp
from brokers import exchange
from brokers.instruments import DEMO_INSTRUMENTS, KnownInstrument, by_kite_token, by_symbol
from brokers.models import SimOrder, Venue
from brokers.prices import quote_for, synthetic_quote
from brokers.protocol import (
    BrokerOrderStatus,
    InvalidInput,
    ModifyRequest,
    OrderRequest,
    OrderType,
    Product,
    Side,
    Validity,
    split_symbol,
)
from marketdata.calendar import is_trading_day
from marketdata.instruments import instrument_as_kite_row, kite_csv_text
from marketdata.selectors import instrument_active_list, instrument_master_count

logger = logging.getLogger(__name__)
IST = ZoneInfo("Asia/Kolkata")
POSTBACK_TIMEOUT_SECONDS = 5.0
KITE_STATUS = {
    BrokerOrderStatus.PENDING: "PUT ORDER REQ RECEIVED",
    BrokerOrderStatus.OPEN: "OPEN",
    BrokerOrderStatus.PARTIALLY_FILLED: "OPEN",
    BrokerOrderStatus.TRIGGER_PENDING: "TRIGGER PENDING",
    BrokerOrderStatus.FILLED: "COMPLETE",
    BrokerOrderStatus.CANCELLED: "CANCELLED",
    BrokerOrderStatus.REJECTED: "REJECTED",
    BrokerOrderStatus.EXPIRED: "CANCELLED",
}
SUPPORTED_VARIETIES = {"regular", "amo"}

# Historical data: the intervals we simulate, Kite's longest span per request, and the session the candles cover.
HISTORICAL_MAX_DAYS = {"minute": 60, "day": 2000}
SESSION_OPEN = time(9, 15)
SESSION_MINUTES = 375  # 09:15 to 15:30
# Seconds between the price samples a candle's high and low are taken from: fine enough to give a minute a range,
# coarse enough that a 2000-day request answers in seconds.
SAMPLE_SECONDS = {"minute": 15, "day": 300}
HISTORICAL_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")


@dataclass(frozen=True)
class KiteApp:
    api_key: str
    api_secret: str
    redirect_url: str
    postback_url: str = ""


@dataclass(frozen=True)
class KiteSession:
    api_key: str
    user_id: str


def kite_time(value: datetime | None) -> str | None:
    return value.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S") if value else None


def _number(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


class KiteSimulator(SimulatorApp):
    name = "kite"

    def __init__(self) -> None:
        self._apps: dict[str, KiteApp] = {}
        self._request_tokens: dict[str, KiteSession] = {}
        self._sessions: dict[str, KiteSession] = {}
        self._order_apps: dict[str, str] = {}  # order id -> api_key of the app it was placed through
        self._postbacks: queue.SimpleQueue | None = None
        self._lock = threading.Lock()
        self.order_limits = RateWindows([(10, 1.0), (400, 60.0)])
        self.quote_limits = RateWindows([(1, 1.0)])
        self.other_limits = RateWindows([(10, 1.0)])
        self.historical_limits = RateWindows([(3, 1.0)])
        super().__init__()

    # --- set-up ---------------------------------------------------------------------------------------------------

    def register_app(self, api_key: str, api_secret: str, redirect_url: str, *, postback_url: str = "") -> None:
        self._apps[api_key] = KiteApp(api_key, api_secret, redirect_url, postback_url)

    def issue_session(self, api_key: str, user_id: str) -> str:
        """A ready access token, for tests that do not walk through the login page."""
        token = secrets.token_hex(16)
        with self._lock:
            self._sessions[token] = KiteSession(api_key, user_id)
        return token

    def expire_sessions(self) -> None:
        with self._lock:
            self._sessions.clear()

    def has_session(self, api_key: str, access_token: str) -> bool:
        """Whether this access token is live for the app (the ticker simulator authenticates its sockets with it)."""
        with self._lock:
            session = self._sessions.get(access_token)
        return session is not None and session.api_key == api_key

    def setup_routes(self) -> None:
        self.add_route("GET", r"/connect/login", self.login_page)
        self.add_route("POST", r"/connect/login", self.login_submit)
        self.add_route("POST", r"/session/token", self.session_create)
        self.add_route("DELETE", r"/session/token", self.session_delete)
        self.add_route("GET", r"/user/margins(?:/(?P<segment>equity|commodity))?", self.margins)
        self.add_route("POST", r"/orders/(?P<variety>[a-z]+)", self.order_place)
        self.add_route("PUT", r"/orders/(?P<variety>[a-z]+)/(?P<order_id>\d+)", self.order_modify)
        self.add_route("DELETE", r"/orders/(?P<variety>[a-z]+)/(?P<order_id>\d+)", self.order_cancel)
        self.add_route("GET", r"/orders", self.order_list)
        self.add_route("GET", r"/orders/(?P<order_id>\d+)", self.order_history)
        self.add_route("GET", r"/orders/(?P<order_id>\d+)/trades", self.order_trades)
        self.add_route("GET", r"/trades", self.trade_list)
        self.add_route("GET", r"/portfolio/positions", self.position_list)
        self.add_route("GET", r"/portfolio/holdings", self.holding_list)
        self.add_route("GET", r"/quote(?:/(?P<mode>ltp|ohlc))?", self.quotes)
        self.add_route("GET", r"/instruments(?:/(?P<exchange>[A-Z]+))?", self.instrument_dump)
        self.add_route("GET", r"/instruments/historical/(?P<token>\d+)/(?P<interval>[a-z0-9]+)", self.historical)

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        error_type = {
            "token": "TokenException",
            "input": "InputException",
            "order": "OrderException",
            "network": "NetworkException",
            "permission": "PermissionException",
        }.get(kind, "GeneralException")
        return SimResponse.json({"status": "error", "message": message, "data": None, "error_type": error_type}, status)

    @staticmethod
    def ok(data) -> SimResponse:
        return SimResponse.json({"status": "success", "data": data})

    # --- login ----------------------------------------------------------------------------------------------------

    def login_page(self, request: SimRequest) -> SimResponse:
        api_key = request.arg("api_key", "")
        if api_key not in self._apps:
            return SimResponse.html("<h1>Invalid api_key</h1>", status=400)
        redirect_params = html.escape(request.arg("redirect_params", "") or "")
        return SimResponse.html(
            f"""<!doctype html><title>Kite (simulator) login</title>
<h1>Login to Kite</h1><p>Local Zerodha simulator: any user id and password work.</p>
<form method="post" action="/connect/login">
<input type="hidden" name="api_key" value="{html.escape(api_key)}">
<input type="hidden" name="redirect_params" value="{redirect_params}">
<label>User ID <input name="user_id" value="AB1234"></label>
<label>Password <input name="password" type="password" value="simulator"></label>
<label>TOTP <input name="twofa" value="000000"></label>
<button type="submit">Login</button></form>"""
        )

    def login_submit(self, request: SimRequest) -> SimResponse:
        form = request.form()
        app = self._apps.get(form.get("api_key", ""))
        if app is None or not form.get("user_id"):
            return SimResponse.html("<h1>Login failed</h1>", status=400)
        token = secrets.token_hex(16)
        with self._lock:
            self._request_tokens[token] = KiteSession(app.api_key, form["user_id"].upper())
        query = {"action": "login", "type": "login", "status": "success", "request_token": token}
        query.update(dict(parse_qsl(form.get("redirect_params", ""))))
        separator = "&" if "?" in app.redirect_url else "?"
        return SimResponse.redirect(f"{app.redirect_url}{separator}{urlencode(query)}")

    def session_create(self, request: SimRequest) -> SimResponse:
        form = request.form()
        app = self._apps.get(form.get("api_key", ""))
        with self._lock:
            pending = self._request_tokens.pop(form.get("request_token", ""), None)
        if app is None or pending is None or pending.api_key != app.api_key:
            return self.error_response(403, "Token is invalid or has expired.", "token")
        expected = hashlib.sha256(f"{app.api_key}{form['request_token']}{app.api_secret}".encode()).hexdigest()
        if not secrets.compare_digest(expected, form.get("checksum", "")):
            return self.error_response(403, "Invalid checksum", "token")
        access_token = self.issue_session(app.api_key, pending.user_id)
        return self.ok(
            {
                "user_id": pending.user_id,
                "user_name": "Simulated User",
                "user_type": "individual",
                "email": f"{pending.user_id.lower()}@example.com",
                "broker": "ZERODHA",
                "exchanges": ["NSE", "BSE", "NFO", "BFO", "MCX"],
                "products": ["CNC", "NRML", "MIS"],
                "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
                "api_key": app.api_key,
                "access_token": access_token,
                "public_token": secrets.token_hex(8),
                "refresh_token": "",
                "login_time": kite_time(datetime.now(tz=IST)),
            }
        )

    def session_delete(self, request: SimRequest) -> SimResponse:
        with self._lock:
            self._sessions.pop(request.arg("access_token", ""), None)
        return self.ok(True)

    # --- authenticated routes -------------------------------------------------------------------------------------

    def _session(self, request: SimRequest) -> KiteSession | None:
        scheme, _, credentials = (request.headers.get("Authorization") or "").partition(" ")
        api_key, _, access_token = credentials.partition(":")
        if scheme != "token" or request.headers.get("X-Kite-Version") != "3":
            return None
        with self._lock:
            session = self._sessions.get(access_token)
        return session if session and session.api_key == api_key else None

    def _guard(self, request: SimRequest, limits: RateWindows) -> tuple[KiteSession | None, SimResponse | None]:
        session = self._session(request)
        if session is None:
            return None, self.error_response(403, "Incorrect `api_key` or `access_token`.", "token")
        if not limits.allow(f"{session.api_key}:{session.user_id}"):
            return None, self.error_response(429, "Too many requests", "network")
        return session, None

    def _account(self, session: KiteSession):
        return exchange.exchange_account(venue=Venue.KITE, client_id=session.user_id)

    def margins(self, request: SimRequest, segment: str | None = None) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        if refusal:
            return refusal
        funds = exchange.funds(account=self._account(session))
        equity = {
            "enabled": True,
            "net": _number(funds.available_cash),
            "available": {
                "adhoc_margin": 0,
                "cash": _number(funds.opening_balance),
                "opening_balance": _number(funds.opening_balance),
                "live_balance": _number(funds.available_cash),
                "collateral": 0,
                "intraday_payin": 0,
            },
            "utilised": {"debits": _number(funds.used_margin), "exposure": 0, "m2m_realised": 0, "span": 0},
        }
        commodity = {"enabled": False, "net": 0, "available": {}, "utilised": {}}
        if segment == "equity":
            return self.ok(equity)
        if segment == "commodity":
            return self.ok(commodity)
        return self.ok({"equity": equity, "commodity": commodity})

    def _order_request(self, form: dict[str, str]) -> OrderRequest:
        try:
            symbol = f"{form['exchange']}:{form['tradingsymbol']}"
            order_type = OrderType(form["order_type"])
            request = OrderRequest(
                symbol=symbol,
                side=Side(form["transaction_type"]),
                quantity=int(form["quantity"]),
                order_type=order_type,
                product=Product(form["product"]),
                price=Decimal(form["price"]) if form.get("price") else None,
                trigger_price=Decimal(form["trigger_price"]) if form.get("trigger_price") else None,
                validity=Validity(form.get("validity") or "DAY"),
                tag=form.get("tag", ""),
                algo_id=form.get("algo_id", ""),
            )
        except (KeyError, ValueError, InvalidOperation) as error:
            raise InvalidInput(f"Invalid or missing order parameter: {error}") from None
        if len(request.tag) > 20 or (request.tag and not request.tag.isalnum()):
            raise InvalidInput("Tag must be at most 20 alphanumeric characters.")
        if order_type in (OrderType.MARKET, OrderType.SL_M) and not form.get("market_protection"):
            raise InvalidInput("Market protection is required for market orders.")
        split_symbol(symbol)
        return request

    def order_place(self, request: SimRequest, variety: str) -> SimResponse:
        session, refusal = self._guard(request, self.order_limits)
        if refusal:
            return refusal
        if variety not in SUPPORTED_VARIETIES:
            return self.error_response(400, f"Invalid variety `{variety}`.", "input")
        try:
            order = exchange.place(account=self._account(session), request=self._order_request(request.form()))
        except InvalidInput as error:
            return self.error_response(400, error.detail, "input")
        self._order_apps[order.order_id] = session.api_key
        self._postback(order, session.user_id)
        return self.ok({"order_id": order.order_id})

    def order_modify(self, request: SimRequest, variety: str, order_id: str) -> SimResponse:
        session, refusal = self._guard(request, self.order_limits)
        if refusal:
            return refusal
        form = request.form()
        try:
            changes = ModifyRequest(
                quantity=int(form["quantity"]) if form.get("quantity") else None,
                price=Decimal(form["price"]) if form.get("price") else None,
                trigger_price=Decimal(form["trigger_price"]) if form.get("trigger_price") else None,
                order_type=OrderType(form["order_type"]) if form.get("order_type") else None,
            )
            order = exchange.modify(account=self._account(session), order_id=order_id, request=changes)
        except (ValueError, InvalidOperation):
            return self.error_response(400, "Invalid modify parameters.", "input")
        except InvalidInput as error:
            return self.error_response(400, error.detail, "order")
        self._order_apps.setdefault(order.order_id, session.api_key)
        self._postback(order, session.user_id)
        return self.ok({"order_id": order.order_id})

    def order_cancel(self, request: SimRequest, variety: str, order_id: str) -> SimResponse:
        session, refusal = self._guard(request, self.order_limits)
        if refusal:
            return refusal
        try:
            order = exchange.cancel(account=self._account(session), order_id=order_id)
        except InvalidInput as error:
            return self.error_response(400, error.detail, "order")
        self._order_apps.setdefault(order.order_id, session.api_key)
        self._postback(order, session.user_id)
        return self.ok({"order_id": order.order_id})

    # --- postbacks ------------------------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._postbacks = queue.SimpleQueue()
        threading.Thread(
            target=_deliver_postbacks, args=(self._postbacks,), name="kite-sim-postbacks", daemon=True
        ).start()
        exchange.order_changes_listen(self._orders_filled)

    def on_stop(self) -> None:
        exchange.order_changes_unlisten(self._orders_filled)
        if self._postbacks is not None:
            self._postbacks.put(None)
            self._postbacks = None

    def _orders_filled(self, venue: str, client_id: str, order_ids: list[str]) -> None:
        """Exchange listener: a quote filled resting orders (called after commit, in the publisher's thread)."""
        if venue != Venue.KITE:
            return
        account = exchange.exchange_account(venue=Venue.KITE, client_id=client_id)
        for order_id in order_ids:
            if order_id in self._order_apps:
                self._postback(exchange.get_order(account=account, order_id=order_id), client_id)

    def _postback(self, order: SimOrder, user_id: str) -> None:
        """Queue Kite's postback of `order` for the app it was placed through, if that app has a postback URL."""
        app = self._apps.get(self._order_apps.get(order.order_id, ""))
        postbacks = self._postbacks
        if app is None or not app.postback_url or postbacks is None:
            return
        body = self._kite_order(order, user_id)
        signed = f"{body['order_id']}{body['order_timestamp'] or ''}{app.api_secret}"
        body.update(user_id=user_id, checksum=hashlib.sha256(signed.encode()).hexdigest())
        postbacks.put((app.postback_url, json.dumps(body).encode()))

    def _kite_order(self, order: SimOrder, user_id: str) -> dict:
        exchange_code, tradingsymbol = split_symbol(order.symbol)
        instrument = by_symbol(order.symbol)
        final = BrokerOrderStatus(order.status).is_final
        return {
            "placed_by": user_id,
            "order_id": order.order_id,
            "exchange_order_id": str(order.pk * 7 + 1100000000000000) if order.status != "REJECTED" else None,
            "parent_order_id": None,
            "status": KITE_STATUS[BrokerOrderStatus(order.status)],
            "status_message": order.status_message or None,
            "order_timestamp": kite_time(order.updated_at),
            "exchange_timestamp": kite_time(order.updated_at),
            "variety": "regular",
            "exchange": exchange_code,
            "tradingsymbol": tradingsymbol,
            "instrument_token": instrument.kite_token if instrument else 0,
            "order_type": order.order_type,
            "transaction_type": order.side,
            "validity": order.validity,
            "product": order.product,
            "quantity": order.quantity,
            "disclosed_quantity": 0,
            "price": _number(order.price),
            "trigger_price": _number(order.trigger_price),
            "average_price": _number(order.average_price),
            "filled_quantity": order.filled_quantity,
            "pending_quantity": 0 if final else order.remaining,
            "cancelled_quantity": order.remaining if order.status == BrokerOrderStatus.CANCELLED else 0,
            "market_protection": 0,
            "tag": order.tag or None,
            "guid": f"sim{order.pk}",
        }

    def order_list(self, request: SimRequest) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        if refusal:
            return refusal
        orders = exchange.orders(account=self._account(session))
        return self.ok([self._kite_order(order, session.user_id) for order in orders])

    def order_history(self, request: SimRequest, order_id: str) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        if refusal:
            return refusal
        try:
            order = exchange.get_order(account=self._account(session), order_id=order_id)
        except InvalidInput:
            return self.error_response(400, "Couldn't find that `order_id`.", "input")
        return self.ok([self._kite_order(order, session.user_id)])

    def _kite_trades(self, session: KiteSession, order_id: str | None = None) -> list[dict]:
        trades = exchange.trades(account=self._account(session), order_id=order_id)
        result = []
        for trade in trades:
            exchange_code, tradingsymbol = split_symbol(trade.symbol)
            result.append(
                {
                    "trade_id": trade.trade_id,
                    "order_id": trade.broker_order_id,
                    "exchange": exchange_code,
                    "tradingsymbol": tradingsymbol,
                    "product": None,
                    "average_price": _number(trade.price),
                    "quantity": trade.quantity,
                    "transaction_type": trade.side,
                    "fill_timestamp": kite_time(trade.traded_at),
                    "order_timestamp": kite_time(trade.traded_at),
                    "exchange_timestamp": kite_time(trade.traded_at),
                }
            )
        return result

    def order_trades(self, request: SimRequest, order_id: str) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        return refusal or self.ok(self._kite_trades(session, order_id))

    def trade_list(self, request: SimRequest) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        return refusal or self.ok(self._kite_trades(session))

    def position_list(self, request: SimRequest) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        if refusal:
            return refusal
        net = []
        for position in exchange.positions(account=self._account(session)):
            exchange_code, tradingsymbol = split_symbol(position.symbol)
            net.append(
                {
                    "tradingsymbol": tradingsymbol,
                    "exchange": exchange_code,
                    "product": position.product,
                    "quantity": position.quantity,
                    "overnight_quantity": 0,
                    "multiplier": 1,
                    "average_price": _number(position.average_price),
                    "last_price": _number(position.last_price),
                    "realised": _number(position.realized_pnl),
                    "unrealised": _number(position.unrealized_pnl),
                    "pnl": _number(position.realized_pnl + position.unrealized_pnl),
                    "buy_quantity": position.buy_quantity,
                    "sell_quantity": position.sell_quantity,
                }
            )
        return self.ok({"net": net, "day": net})

    def holding_list(self, request: SimRequest) -> SimResponse:
        session, refusal = self._guard(request, self.other_limits)
        if refusal:
            return refusal
        holdings = []
        for holding in exchange.holdings(account=self._account(session)):
            exchange_code, tradingsymbol = split_symbol(holding.symbol)
            holdings.append(
                {
                    "tradingsymbol": tradingsymbol,
                    "exchange": exchange_code,
                    "quantity": holding.quantity,
                    "t1_quantity": 0,
                    "average_price": _number(holding.average_price),
                    "last_price": _number(holding.last_price),
                    "pnl": _number((holding.last_price - holding.average_price) * holding.quantity),
                    "product": "CNC",
                }
            )
        return self.ok(holdings)

    def quotes(self, request: SimRequest, mode: str | None = None) -> SimResponse:
        session, refusal = self._guard(request, self.quote_limits)
        if refusal:
            return refusal
        data = {}
        for symbol in request.query.get("i", []):
            try:
                split_symbol(symbol)
            except InvalidInput:
                continue  # Kite leaves unknown instruments out of the answer
            quote = quote_for(symbol)
            instrument = by_symbol(symbol)
            item = {
                "instrument_token": instrument.kite_token if instrument else 0,
                "last_price": _number(quote.last_price),
            }
            if mode in (None, "ohlc"):
                item["ohlc"] = {
                    "open": _number(quote.open),
                    "high": _number(quote.high),
                    "low": _number(quote.low),
                    "close": _number(quote.close),
                }
            if mode is None:
                item.update(
                    {
                        "timestamp": kite_time(quote.timestamp),
                        "volume": quote.volume,
                        "depth": {
                            "buy": [{"price": _number(quote.bid), "quantity": quote.bid_quantity, "orders": 1}],
                            "sell": [{"price": _number(quote.ask), "quantity": quote.ask_quantity, "orders": 1}],
                        },
                    }
                )
            data[symbol] = item
        return self.ok(data)

    def instrument_dump(self, request: SimRequest, exchange: str | None = None) -> SimResponse:
        """Kite's instrument dump (CSV, no login needed), from the instrument master or, while that is empty,
        the static instrument table."""
        instruments = instrument_active_list(exchange=exchange)
        rows = [instrument_as_kite_row(instrument) for instrument in instruments.iterator(chunk_size=5000)]
        if not rows and not instrument_master_count():
            rows = [_static_kite_row(instrument) for instrument in DEMO_INSTRUMENTS]
            rows = [row for row in rows if not exchange or row["exchange"] == exchange]
        return SimResponse(200, kite_csv_text(rows=rows).encode(), "text/csv")

    def historical(self, request: SimRequest, token: str, interval: str) -> SimResponse:
        """Candles from the symbol's synthetic price path, for trading days' 09:15-15:30 sessions, starting in
        [from, to] (Kite includes `to`) and no later than now. `continuous` is accepted and ignored."""
        _, refusal = self._guard(request, self.historical_limits)
        if refusal:
            return refusal
        if interval not in HISTORICAL_MAX_DAYS:
            return self.error_response(400, "invalid interval", "input")
        instrument = by_kite_token(int(token))
        if instrument is None:
            return self.error_response(400, "invalid token", "input")
        try:
            start, end = (_historical_time(request.arg(name) or "") for name in ("from", "to"))
        except ValueError:
            return self.error_response(400, "invalid from or to date", "input")
        if end < start:
            return self.error_response(400, "invalid from date: it is after the to date", "input")
        if end - start > timedelta(days=HISTORICAL_MAX_DAYS[interval]):
            return self.error_response(
                400, f"interval exceeds max limit: {HISTORICAL_MAX_DAYS[interval]} days", "input"
            )
        with_oi = request.arg("oi") == "1"
        latest = min(end, datetime.now(tz=IST))
        candles = []
        for opening, length in _historical_buckets(interval=interval, start=start, end=latest):
            candle = synthetic_candle(instrument.symbol, opening=opening, seconds=length, interval=interval)
            candles.append(candle + [0] if with_oi else candle)
        return self.ok({"candles": candles})


def _deliver_postbacks(postbacks: queue.SimpleQueue) -> None:
    """One sender per served simulator, so postbacks go out in the order they were queued; None stops it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the receiver, never a proxy
    while (item := postbacks.get()) is not None:
        url, body = item
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            opener.open(request, timeout=POSTBACK_TIMEOUT_SECONDS).close()
        except (OSError, ValueError) as error:  # like Kite: a receiver that fails loses the postback
            logger.info("Kite simulator postback to %s failed: %s", url, error)


def _historical_time(raw: str) -> datetime:
    for pattern in HISTORICAL_TIME_FORMATS:
        try:
            return datetime.strptime(raw, pattern).replace(tzinfo=IST)
        except ValueError:
            continue
    raise ValueError(f"not a Kite timestamp: {raw!r}")


def _historical_buckets(*, interval: str, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """(session moment the candle's prices start at, seconds it covers) for each candle starting in [start, end]."""
    buckets = []
    day = start.date()
    while day <= end.date():
        if is_trading_day(day):
            session_open = datetime.combine(day, SESSION_OPEN, tzinfo=IST)
            if interval == "day":
                if start <= datetime.combine(day, time(0), tzinfo=IST) <= end:
                    buckets.append((session_open, SESSION_MINUTES * 60))
            else:
                for minute in range(SESSION_MINUTES):
                    opening = session_open + timedelta(minutes=minute)
                    if start <= opening <= end:
                        buckets.append((opening, 60))
        day += timedelta(days=1)
    return buckets


def synthetic_candle(symbol: str, *, opening: datetime, seconds: int, interval: str) -> list:
    """One Kite candle row [timestamp, open, high, low, close, volume] from the synthetic price path: open at
    `opening`, close one second before the bucket ends, high and low over samples every SAMPLE_SECONDS; volume is
    the sum of per-minute synthetic volumes, so a day's volume is its minutes' total. A day candle is stamped
    00:00 IST, as Kite stamps them."""
    first = int(opening.timestamp())
    moments = [*range(first, first + seconds, SAMPLE_SECONDS[interval]), first + seconds - 1]
    prices = [synthetic_quote(symbol, at=moment).last_price for moment in moments]
    volume = sum(synthetic_minute_volume(symbol, minute) for minute in range(first, first + seconds, 60))
    stamp = opening if interval == "minute" else datetime.combine(opening.date(), time(0), tzinfo=IST)
    return [
        stamp.astimezone(IST).strftime("%Y-%m-%dT%H:%M:%S%z"),
        _number(prices[0]),
        _number(max(prices)),
        _number(min(prices)),
        _number(prices[-1]),
        volume,
    ]


def synthetic_minute_volume(symbol: str, minute_epoch: int) -> int:
    digest = hashlib.sha256(f"{symbol}@{minute_epoch}".encode()).hexdigest()
    return 100 + int(digest[:6], 16) % 5000


def _static_kite_row(instrument: KnownInstrument) -> dict[str, str]:
    exchange_code, tradingsymbol = split_symbol(instrument.symbol)
    is_index = instrument.kite_token % 256 == 9  # Kite's INDICES segment
    return {
        "instrument_token": str(instrument.kite_token),
        "exchange_token": str(instrument.kite_token // 256),
        "tradingsymbol": tradingsymbol,
        "name": tradingsymbol,
        "last_price": "0.0",
        "expiry": "",
        "strike": "0.0",
        "tick_size": "0.0" if is_index else "0.05",
        "lot_size": "0" if is_index else str(instrument.lot_size),
        "instrument_type": "EQ",
        "segment": "INDICES" if is_index else exchange_code,
        "exchange": exchange_code,
    }
