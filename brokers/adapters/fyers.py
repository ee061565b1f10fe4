"""Fyers API v3 through the official `fyers-apiv3` SDK.

Three quirks of the SDK shape this adapter:

* It reads its base URLs from the module-level `fyersModel.Config.API` / `Config.DATA_API` at call time. Every SDK
  call therefore runs under `_ENDPOINTS`, a module-level lease: the URLs are set right before the call, and a call
  that needs other URLs (another account pointed at another simulator) waits until the calls using the current ones
  have finished. Calls that want the same URLs (production: every account talks to Fyers) run concurrently.
* It never raises and never exposes the HTTP status: errors come back as the server's JSON body, and exceptions
  (non-JSON bodies, timeouts, refused connections) are swallowed into one shared `{"s": "error", "code": ...,
  "message": "Bad request"}` dict. We give its service our own `requests.Session` (`_Transport`), which applies the
  account's timeout and proxy (the SDK sets neither) and remembers, per thread, the HTTP status and any transport
  failure of the last call, so the error mapping can tell a timeout from an order rejection.
* `FyersModel` opens two log files in `log_path` when constructed; we point it at a directory under the system temp
  directory, close the file handles it opens but does not use (its loggers are process-wide and configured once),
  and keep its per-request debug log quiet.

Symbols: our canonical `EXCHANGE:TRADINGSYMBOL` maps to Fyers' `NSE:SBIN-EQ` (NSE cash, `-EQ` series; other series
such as `XYZ-BE` pass through), `BSE:RELIANCE-A` (BSE cash carries the BSE group; without an instrument master we
assume group A unless `BSE_GROUP` says otherwise), `NSE:<tradingsymbol>` for NFO and CDS, `BSE:<tradingsymbol>` for
BFO, `MCX:<tradingsymbol>` for MCX, and `NSE:NIFTY50-INDEX`-style names for the indices in `INDEX_TO_FYERS`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import requests
from django.conf import settings
from fyers_apiv3 import fyersModel

from brokers.egress import PublicProxyAdapter, session_guard
from brokers.protocol import (
    AdapterConfig,
    BrokerAdapter,
    BrokerError,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerPosition,
    BrokerRateLimited,
    BrokerSession,
    BrokerTrade,
    BrokerUnavailable,
    Funds,
    Holding,
    InvalidInput,
    ModifyRequest,
    OrderRejected,
    OrderRequest,
    OrderType,
    Product,
    Quote,
    SessionExpired,
    Side,
    Validity,
    to_decimal,
)
from brokers.symbols import from_fyers_symbol, to_fyers_symbol

logger = logging.getLogger(__name__)

IST = ZoneInfo("Asia/Kolkata")
FYERS_TIME_FORMAT = "%d-%b-%Y %H:%M:%S"  # "09-Mar-2023 09:34:38", exchange time
QUOTES_PER_REQUEST = 50
LOG_DIRECTORY = os.path.join(tempfile.gettempdir(), "algoterm-fyers-sdk")

# --- vocabulary mappings (both directions, table-tested) ---------------------------------------------------------

ORDER_TYPE_TO_FYERS: dict[OrderType, int] = {
    OrderType.LIMIT: 1,
    OrderType.MARKET: 2,
    OrderType.SL_M: 3,
    OrderType.SL: 4,
}
ORDER_TYPE_FROM_FYERS: dict[int, OrderType] = {code: ours for ours, code in ORDER_TYPE_TO_FYERS.items()}

SIDE_TO_FYERS: dict[Side, int] = {Side.BUY: 1, Side.SELL: -1}
SIDE_FROM_FYERS: dict[int, Side] = {code: ours for ours, code in SIDE_TO_FYERS.items()}

PRODUCT_TO_FYERS: dict[Product, str] = {Product.MIS: "INTRADAY", Product.CNC: "CNC", Product.NRML: "MARGIN"}
# Cover and bracket orders are intraday; MTF is (funded) delivery. We never place these, but may read them.
PRODUCT_FROM_FYERS: dict[str, Product] = {code: ours for ours, code in PRODUCT_TO_FYERS.items()} | {
    "CO": Product.MIS,
    "BO": Product.MIS,
    "MTF": Product.CNC,
}

VALIDITY_TO_FYERS: dict[Validity, str] = {Validity.DAY: "DAY", Validity.IOC: "IOC"}
VALIDITY_FROM_FYERS: dict[str, Validity] = {code: ours for ours, code in VALIDITY_TO_FYERS.items()}

# Fyers: 1 cancelled, 2 traded, 4 transit, 5 rejected, 6 pending, 7 expired. "Pending" covers open, partly filled and
# untriggered stop orders alike: Fyers' order book does not say whether a stop has triggered, so 6 reads as OPEN
# (PARTIALLY_FILLED once something filled), never TRIGGER_PENDING.
STATUS_FROM_FYERS: dict[int, BrokerOrderStatus] = {
    1: BrokerOrderStatus.CANCELLED,
    2: BrokerOrderStatus.FILLED,
    4: BrokerOrderStatus.PENDING,
    5: BrokerOrderStatus.REJECTED,
    6: BrokerOrderStatus.OPEN,
    7: BrokerOrderStatus.EXPIRED,
}
STATUS_TO_FYERS: dict[BrokerOrderStatus, int] = {
    BrokerOrderStatus.CANCELLED: 1,
    BrokerOrderStatus.FILLED: 2,
    BrokerOrderStatus.PENDING: 4,
    BrokerOrderStatus.REJECTED: 5,
    BrokerOrderStatus.OPEN: 6,
    BrokerOrderStatus.TRIGGER_PENDING: 6,
    BrokerOrderStatus.PARTIALLY_FILLED: 6,
    BrokerOrderStatus.EXPIRED: 7,
}

# Error codes in Fyers' body: -8 token expired, -15 invalid token, -16 could not authenticate, -17 token
# invalid/expired; -99 order rejected (RMS: funds, holdings...); -50 invalid parameters, -51 invalid order id,
# -53 invalid position id, -300 invalid symbol. Rate limits come as HTTP 429 (code 429 in the body).
TOKEN_ERROR_CODES = frozenset({-8, -15, -16, -17})
ORDER_REJECTION_CODES = frozenset({-99})
INVALID_INPUT_CODES = frozenset({-50, -51, -53, -300})
RATE_LIMIT_CODES = frozenset({429, -429})

# fund_limit line ids (titles as a fallback, should Fyers renumber them)
FUNDS_LINES: dict[str, tuple[int, str]] = {
    "used_margin": (2, "utilized amount"),
    "opening_balance": (9, "limit at start of the day"),
    "available_cash": (10, "available balance"),
}

# --- symbols: spelled in brokers.symbols (pure, no SDK), used here ---------------------------------------------


def tag_from_fyers(order_tag: Any) -> str:
    """Fyers echoes our orderTag as "1:<tag>" and untagged orders as "2:Untagged"."""
    kind, sep, tag = str(order_tag or "").partition(":")
    if not sep:
        return kind
    return tag if kind == "1" else ""


def parse_fyers_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(str(value), FYERS_TIME_FORMAT).replace(tzinfo=IST)
    except ValueError:
        return None


def format_fyers_time(moment: datetime | None) -> str:
    return moment.astimezone(IST).strftime(FYERS_TIME_FORMAT) if moment else ""


# --- base URLs: the SDK's module-level state ---------------------------------------------------------------------


class _EndpointLease:
    """Holds `fyersModel.Config.API` / `DATA_API` at one pair of URLs while calls using them run."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._current: tuple[str, str] | None = None
        self._active = 0
        self._switchers = 0  # callers waiting for other URLs; same-URL newcomers queue behind them (no starvation)

    @contextmanager
    def hold(self, api_url: str, data_url: str) -> Iterator[None]:
        wanted = (api_url, data_url)
        with self._changed:
            switching = self._current != wanted
            self._switchers += switching
            self._changed.wait_for(
                lambda: self._active == 0 or (self._current == wanted and self._switchers == int(switching))
            )
            self._switchers -= switching
            fyersModel.Config.API, fyersModel.Config.DATA_API = wanted
            self._current = wanted
            self._active += 1
        try:
            yield
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify_all()


_ENDPOINTS = _EndpointLease()


# --- transport: our requests session inside the SDK -----------------------------------------------------------------


@dataclass
class _WireOutcome:
    status: int | None = None
    retry_after: float = 1.0
    failure: str = ""  # the transport exception's class name (Timeout, ConnectionError...)


class _DefaultTimeoutAdapter(PublicProxyAdapter):
    def __init__(self, timeout: float, on_failure: Callable[[Exception], None], *, user_proxy: str = "") -> None:
        super().__init__(user_proxy)
        self._timeout = timeout
        self._on_failure = on_failure

    def send(self, request, **kwargs):  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        try:
            return super().send(request, **kwargs)
        except requests.RequestException as error:
            self._on_failure(error)
            raise


class _Transport:
    def __init__(self, *, timeout: float, proxy_url: str) -> None:
        self._local = threading.local()
        self.session = requests.Session()
        session_guard(self.session, _DefaultTimeoutAdapter(timeout, self._record_failure, user_proxy=proxy_url))
        if proxy_url:
            self.session.proxies = {"http": proxy_url, "https": proxy_url}
            # requests lets HTTP(S)_PROXY from the environment override session proxies; the account's wins.
            self.session.trust_env = False
        self.session.hooks["response"].append(self._record_response)

    def begin(self) -> None:
        self._local.outcome = _WireOutcome()

    def outcome(self) -> _WireOutcome:
        return getattr(self._local, "outcome", None) or _WireOutcome()

    def _record_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        outcome = self.outcome()
        outcome.status = response.status_code
        outcome.retry_after = _retry_after(response.headers.get("Retry-After"))
        self._local.outcome = outcome

    def _record_failure(self, error: Exception) -> None:
        outcome = self.outcome()
        outcome.failure = type(error).__name__
        self._local.outcome = outcome


def _retry_after(value: str | None) -> float:
    try:
        return max(float(value or 1), 0.0)
    except ValueError:
        return 1.0


class _LoginSession(fyersModel.SessionModel):
    """The SDK's SessionModel (authcode URL, appIdHash) with a token exchange that goes through our transport: the
    SDK's `generate_token` posts with a bare `requests.post`, without timeout or proxy."""

    def __init__(self, *, transport: _Transport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._transport = transport

    def generate_token(self) -> dict[str, Any]:
        payload = {"grant_type": self.grant_type, "appIdHash": self.get_hash().hexdigest(), "code": self.auth_token}
        url = fyersModel.Config.API + fyersModel.Config.generate_access_token
        try:
            response = self._transport.session.post(url, json=payload)
        except requests.RequestException as error:
            raise BrokerUnavailable(f"Fyers login exchange failed: {type(error).__name__}.") from None
        try:
            return response.json()
        except ValueError:
            return {}


def _new_fyers_model(app_id: str, access_token: str, transport: _Transport) -> fyersModel.FyersModel:
    os.makedirs(LOG_DIRECTORY, exist_ok=True)
    model = fyersModel.FyersModel(
        client_id=app_id, token=access_token, is_async=False, log_path=LOG_DIRECTORY, log_level="ERROR"
    )
    for sdk_logger in (model.api_logger, model.request_logger):
        handler = sdk_logger.logger_handler
        if handler not in sdk_logger._logger.handlers:  # the logger was configured by an earlier FyersModel
            handler.close()
    # Its request logger writes a debug line per call into the log file forever; its error log stays on.
    logging.getLogger("FyersAPIRequest").setLevel(logging.WARNING)
    model.service.session = transport.session
    return model


# --- the adapter -------------------------------------------------------------------------------------------------


class FyersAdapter(BrokerAdapter):
    """credentials: {"client_id": the app id ("XJ12345-100"), "secret_key": the app secret}.
    config.base_url: the API root (".../api/v3"); config.extra["data_url"]: the data API root (".../data")."""

    broker = "fyers"
    uses_oauth = True

    def __init__(
        self, *, credentials: dict[str, Any], session: BrokerSession | None, config: AdapterConfig, account_ref: str
    ) -> None:
        super().__init__(credentials=credentials, session=session, config=config, account_ref=account_ref)
        self._api_url = (config.base_url or settings.FYERS_API_URL).rstrip("/")
        self._data_url = str(config.extra.get("data_url") or settings.FYERS_DATA_URL).rstrip("/")
        self._transport = _Transport(timeout=config.timeout, proxy_url=config.proxy_url)
        self._sdk: fyersModel.FyersModel | None = None
        self._sdk_token = ""

    def __repr__(self) -> str:
        return f"<FyersAdapter account={self.account_ref} app={self._app_id}>"

    __str__ = __repr__

    @property
    def _app_id(self) -> str:
        return str(self.credentials.get("client_id") or "")

    # login ------------------------------------------------------------------------------------------------------

    def login_url(self, *, state: str, redirect_uri: str) -> str:
        login = fyersModel.SessionModel(
            client_id=self._app_id, redirect_uri=redirect_uri, response_type="code", state=state
        )
        with _ENDPOINTS.hold(self._api_url, self._data_url):
            return login.generate_authcode()

    def complete_login(self, *, params: dict[str, str], redirect_uri: str) -> BrokerSession:
        auth_code = params.get("auth_code") or ""
        if params.get("s", "ok") != "ok" or not auth_code:
            raise InvalidInput(f"Fyers login did not complete: {params.get('message') or 'no auth_code'}.")
        login = _LoginSession(
            transport=self._transport,
            client_id=self._app_id,
            secret_key=str(self.credentials.get("secret_key") or ""),
            redirect_uri=redirect_uri,
            response_type="code",
            grant_type="authorization_code",
        )
        login.set_token(auth_code)
        with _ENDPOINTS.hold(self._api_url, self._data_url):
            self._transport.begin()
            result = login.generate_token()
            wire = self._transport.outcome()
        access_token = self._login_token(result, wire)
        self.session = BrokerSession(access_token=access_token, broker_user_id=_jwt_claim(access_token, "fy_id"))
        if not self.session.broker_user_id:
            profile = self._call(lambda model: model.get_profile(), what="profile")
            user_id = str((profile.get("data") or {}).get("fy_id") or "")
            self.session = BrokerSession(access_token=access_token, broker_user_id=user_id)
        return self.session

    @staticmethod
    def _login_token(result: Any, wire: _WireOutcome) -> str:
        if wire.status == 429:
            raise BrokerRateLimited("Fyers rate limit reached (login).", retry_after=wire.retry_after)
        if wire.failure or (wire.status or 0) >= 500:
            raise BrokerUnavailable("Fyers could not complete the login; retry later.")
        if not isinstance(result, dict) or not result:
            raise BrokerUnavailable("Fyers sent an unreadable answer to the login.")
        token = result.get("access_token")
        if result.get("s") != "ok" or not token:
            raise InvalidInput(f"Fyers refused the login: {result.get('message') or 'no access token'}.")
        return str(token)

    def logout(self) -> None:
        if not (self.session and self.session.access_token):
            return
        try:
            self._call(lambda model: model.logout(), what="logout")
        except BrokerError as error:
            logger.info("Fyers logout for account %s failed: %s", self.account_ref, error.code)

    # trading ----------------------------------------------------------------------------------------------------

    def place_order(self, request: OrderRequest) -> str:
        payload: dict[str, Any] = {
            "symbol": to_fyers_symbol(request.symbol),
            "qty": request.quantity,
            "type": ORDER_TYPE_TO_FYERS[request.order_type],
            "side": SIDE_TO_FYERS[request.side],
            "productType": PRODUCT_TO_FYERS[request.product],
            "limitPrice": _wire_price(request.price),
            "stopPrice": _wire_price(request.trigger_price),
            "validity": VALIDITY_TO_FYERS[request.validity],
            "disclosedQty": 0,
            "offlineOrder": False,
            "stopLoss": 0,
            "takeProfit": 0,
        }
        if request.tag:
            payload["orderTag"] = request.tag
        result = self._call(lambda model: model.place_order(data=payload), what="place order")
        if not result.get("id"):
            raise BrokerError("Fyers accepted the order without an order id.")
        return str(result["id"])

    def modify_order(self, broker_order_id: str, request: ModifyRequest) -> None:
        payload: dict[str, Any] = {"id": broker_order_id}
        if request.quantity is not None:
            payload["qty"] = request.quantity
        if request.price is not None:
            payload["limitPrice"] = _wire_price(request.price)
        if request.trigger_price is not None:
            payload["stopPrice"] = _wire_price(request.trigger_price)
        if request.order_type is not None:
            payload["type"] = ORDER_TYPE_TO_FYERS[request.order_type]
        if len(payload) == 1:
            raise InvalidInput("Nothing to modify.")
        self._call(lambda model: model.modify_order(data=payload), what="modify order")

    def cancel_order(self, broker_order_id: str) -> None:
        self._call(lambda model: model.cancel_order(data={"id": broker_order_id}), what="cancel order")

    def orders(self) -> list[BrokerOrder]:
        return self._order_book(None)

    def order(self, broker_order_id: str) -> BrokerOrder:
        for order in self._order_book({"id": broker_order_id}):
            if order.broker_order_id == broker_order_id:
                return order
        raise InvalidInput(f"No order {broker_order_id} at the broker.")

    def orders_by_tag(self, tag: str) -> list[BrokerOrder]:
        # The filter saves transfer; the local check keeps us right should Fyers ignore it.
        return [order for order in self._order_book({"order_tag": f"1:{tag}"}) if order.tag == tag]

    def _order_book(self, query: dict[str, str] | None) -> list[BrokerOrder]:
        result = self._call(lambda model: model.orderbook(data=query), what="order book")
        return [_order_from_fyers(row) for row in result.get("orderBook") or []]

    def trades(self) -> list[BrokerTrade]:
        result = self._call(lambda model: model.tradebook(), what="trade book")
        return [_trade_from_fyers(row) for row in result.get("tradeBook") or []]

    def positions(self) -> list[BrokerPosition]:
        result = self._call(lambda model: model.positions(), what="positions")
        return [_position_from_fyers(row) for row in result.get("netPositions") or []]

    def holdings(self) -> list[Holding]:
        result = self._call(lambda model: model.holdings(), what="holdings")
        return [_holding_from_fyers(row) for row in result.get("holdings") or []]

    def funds(self) -> Funds:
        result = self._call(lambda model: model.funds(), what="funds")
        return _funds_from_fyers(result.get("fund_limit") or [])

    def quotes(self, symbols: list[str]) -> dict[str, Quote]:
        by_fyers = {to_fyers_symbol(symbol): symbol for symbol in symbols}
        wanted = list(by_fyers)
        quotes: dict[str, Quote] = {}
        for start in range(0, len(wanted), QUOTES_PER_REQUEST):
            query = {"symbols": ",".join(wanted[start : start + QUOTES_PER_REQUEST])}
            result = self._call(lambda model, query=query: model.quotes(data=query), what="quotes")
            for item in result.get("d") or []:
                if item.get("s") != "ok" or not isinstance(item.get("v"), dict):
                    continue  # Fyers answers unknown symbols per item; they are simply absent from our answer
                symbol = by_fyers.get(item.get("n")) or from_fyers_symbol(str(item.get("n")))
                quotes[symbol] = _quote_from_fyers(symbol, item["v"])
        return quotes

    # calls and errors -------------------------------------------------------------------------------------------

    def _model(self) -> fyersModel.FyersModel:
        token = self.session.access_token if self.session else ""
        if not token:
            raise SessionExpired("No Fyers session: log in to Fyers first.")
        if self._sdk is None or self._sdk_token != token:
            self._sdk = _new_fyers_model(self._app_id, token, self._transport)
            self._sdk_token = token
        return self._sdk

    def _call(self, operation: Callable[[fyersModel.FyersModel], Any], *, what: str) -> dict[str, Any]:
        model = self._model()
        with _ENDPOINTS.hold(self._api_url, self._data_url):
            self._transport.begin()
            try:
                result = operation(model)
            except Exception as error:  # the SDK's own bugs (e.g. a KeyError on an odd body) must not leak out
                raise BrokerError(f"The Fyers SDK failed during {what}: {type(error).__name__}.") from None
            wire = self._transport.outcome()
        _raise_for(result, wire, swallowed=result is model.service.error_resp, what=what)
        return result


def _raise_for(result: Any, wire: _WireOutcome, *, swallowed: bool, what: str) -> None:
    """Map what the SDK returned (and what we saw on the wire) to our errors; return quietly on success."""
    code = _int(result.get("code")) if isinstance(result, dict) else None
    message = str(result.get("message") or "") if isinstance(result, dict) else ""
    if wire.status == 429 or code in RATE_LIMIT_CODES:
        raise BrokerRateLimited(f"Fyers rate limit reached ({what}).", retry_after=wire.retry_after)
    if wire.failure:
        raise BrokerUnavailable(f"Fyers did not answer ({what}): {wire.failure}.")
    if (wire.status or 0) >= 500:
        raise BrokerUnavailable(f"Fyers answered HTTP {wire.status} ({what}).")
    if swallowed or not isinstance(result, dict):
        # The SDK replaces non-JSON bodies (and exceptions) with its generic "Bad request" dict.
        raise BrokerUnavailable(f"Fyers sent an unreadable answer ({what}).")
    if result.get("s") == "ok":
        return
    if wire.status == 401 or code in TOKEN_ERROR_CODES:
        raise SessionExpired(f"The Fyers session has expired or is invalid: {message or code}.")
    if code in ORDER_REJECTION_CODES:
        raise OrderRejected(message or "Fyers rejected the order.")
    if code in INVALID_INPUT_CODES or wire.status == 400:
        raise InvalidInput(message or f"Fyers refused the request ({what}).")
    raise BrokerError(f"Fyers error {code} ({what}): {message}".strip())


# --- wire values -> ours -----------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _wire_price(value: Decimal | None) -> float:
    return float(value) if value is not None else 0


def _positive(value: Any) -> Decimal | None:
    amount = to_decimal(value)
    return amount if amount else None


def _amount(value: Any) -> Decimal:
    return to_decimal(value) or Decimal("0.00")


def _mapped(table: dict, key: Any, what: str) -> Any:
    try:
        return table[key]
    except (KeyError, TypeError):
        raise BrokerError(f"Fyers sent an unknown {what}: {key!r}.") from None


def status_from_fyers(status: Any, filled_quantity: int) -> BrokerOrderStatus:
    ours = STATUS_FROM_FYERS.get(_int(status))  # type: ignore[arg-type]
    if ours is None:
        logger.warning("Fyers sent an unknown order status %r; treating it as pending", status)
        return BrokerOrderStatus.PENDING
    if ours == BrokerOrderStatus.OPEN and filled_quantity > 0:
        return BrokerOrderStatus.PARTIALLY_FILLED
    return ours


def _order_from_fyers(row: dict[str, Any]) -> BrokerOrder:
    filled = _int(row.get("filledQty")) or 0
    return BrokerOrder(
        broker_order_id=str(row.get("id")),
        symbol=from_fyers_symbol(str(row.get("symbol"))),
        side=_mapped(SIDE_FROM_FYERS, _int(row.get("side")), "side"),
        quantity=_int(row.get("qty")) or 0,
        filled_quantity=filled,
        order_type=_mapped(ORDER_TYPE_FROM_FYERS, _int(row.get("type")), "order type"),
        product=_mapped(PRODUCT_FROM_FYERS, row.get("productType"), "product"),
        status=status_from_fyers(row.get("status"), filled),
        price=_positive(row.get("limitPrice")),
        trigger_price=_positive(row.get("stopPrice")),
        average_price=_positive(row.get("tradedPrice")),
        validity=VALIDITY_FROM_FYERS.get(str(row.get("orderValidity") or "DAY"), Validity.DAY),
        tag=tag_from_fyers(row.get("orderTag")),
        status_message=str(row.get("message") or ""),
        placed_at=parse_fyers_time(row.get("orderDateTime")),
    )


def _trade_from_fyers(row: dict[str, Any]) -> BrokerTrade:
    return BrokerTrade(
        trade_id=str(row.get("tradeNumber")),
        broker_order_id=str(row.get("orderNumber")),
        symbol=from_fyers_symbol(str(row.get("symbol"))),
        side=_mapped(SIDE_FROM_FYERS, _int(row.get("side")), "side"),
        quantity=_int(row.get("tradedQty")) or 0,
        price=_amount(row.get("tradePrice")),
        traded_at=parse_fyers_time(row.get("orderDateTime")),
    )


def _position_from_fyers(row: dict[str, Any]) -> BrokerPosition:
    return BrokerPosition(
        symbol=from_fyers_symbol(str(row.get("symbol"))),
        product=_mapped(PRODUCT_FROM_FYERS, row.get("productType"), "product"),
        quantity=_int(row.get("netQty")) or 0,
        average_price=_amount(row.get("netAvg")),
        last_price=to_decimal(row.get("ltp")),
        realized_pnl=_amount(row.get("realized_profit")),
        unrealized_pnl=_amount(row.get("unrealized_profit")),
        buy_quantity=_int(row.get("buyQty")) or 0,
        sell_quantity=_int(row.get("sellQty")) or 0,
    )


def _holding_from_fyers(row: dict[str, Any]) -> Holding:
    return Holding(
        symbol=from_fyers_symbol(str(row.get("symbol"))),
        quantity=_int(row.get("quantity")) or 0,
        average_price=_amount(row.get("costPrice")),
        last_price=to_decimal(row.get("ltp")),
    )


def _funds_from_fyers(lines: list[dict[str, Any]]) -> Funds:
    """Equity-segment amounts of Fyers' fund_limit lines (commodity amounts are reported separately by Fyers)."""
    by_id = {_int(line.get("id")): line for line in lines}
    by_title = {str(line.get("title") or "").strip().lower(): line for line in lines}

    def amount(field: str) -> Decimal:
        line_id, title = FUNDS_LINES[field]
        line = by_id.get(line_id) or by_title.get(title)
        if line is None:
            raise BrokerError(f"Fyers funds lack the {title!r} line.")
        return _amount(line.get("equityAmount"))

    return Funds(
        available_cash=amount("available_cash"),
        used_margin=amount("used_margin"),
        opening_balance=amount("opening_balance"),
    )


def _quote_from_fyers(symbol: str, values: dict[str, Any]) -> Quote:
    stamp = _int(values.get("tt"))
    return Quote(
        symbol=symbol,
        last_price=_amount(values.get("lp")),
        bid=_positive(values.get("bid")),
        ask=_positive(values.get("ask")),
        volume=_int(values.get("volume")) or 0,
        open=to_decimal(values.get("open_price")),
        high=to_decimal(values.get("high_price")),
        low=to_decimal(values.get("low_price")),
        close=to_decimal(values.get("prev_close_price")),
        timestamp=datetime.fromtimestamp(stamp, tz=UTC) if stamp else None,
    )


def _jwt_claim(token: str, claim: str) -> str:
    """A claim from the access token's payload, read without verifying (Fyers signs it; we only want the user id)."""
    parts = token.split(".")
    if len(parts) != 3:
        return ""
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        payload = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return ""
    return str(payload.get(claim) or "") if isinstance(payload, dict) else ""
