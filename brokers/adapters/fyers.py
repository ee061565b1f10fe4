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
import csv
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import requests
from django.conf import settings
from fyers_apiv3 import fyersModel

from brokers.egress import PublicProxyAdapter, session_guard
from brokers.protocol import (
    AdapterConfig,
    BrokerAdapter,
    BrokerError,
    BrokerInstrument,
    BrokerOrder,
    BrokerOrderStatus,
    BrokerPosition,
    BrokerRateLimited,
    BrokerSession,
    BrokerTrade,
    BrokerUnavailable,
    Funds,
    HistoricalCandle,
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
    split_symbol,
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

# Historical data: our intervals as Fyers resolutions, and the longest range one /history request may cover (Fyers
# refuses more than 100 days of minute candles and 366 days of daily candles per request).
HISTORY_RESOLUTIONS: dict[str, str] = {"1m": "1", "1d": "D"}
HISTORY_MAX_SPAN_DAYS: dict[str, int] = {"1m": 100, "1d": 366}
HISTORY_OK_STATES = frozenset({"ok", "no_data"})  # "no_data": a valid request for a range without candles

# fund_limit line ids (titles as a fallback, should Fyers renumber them)
FUNDS_LINES: dict[str, tuple[int, str]] = {
    "used_margin": (2, "utilized amount"),
    "opening_balance": (9, "limit at start of the day"),
    "available_cash": (10, "available balance"),
}

# --- symbols: spelled in brokers.symbols (pure, no SDK), used here ---------------------------------------------

# --- the symbol master: Fyers' public per-segment CSVs ---------------------------------------------------------

# The files Fyers publishes (header-less CSV, one per exchange segment) and the columns of every row, in order.
SYMBOL_MASTER_FILES = ("NSE_CM", "BSE_CM", "NSE_FO", "BSE_FO", "MCX_COM", "NSE_CD")
SYMBOL_MASTER_COLUMNS = (
    "fytoken",
    "symbol_details",  # a description: "STATE BANK OF INDIA", "NIFTY 26 Jun 25 24000 CE"
    "instrument_type",  # the exchange instrument type code (FYERS_INSTRUMENT_TYPES)
    "lot_size",
    "tick_size",
    "isin",
    "trading_session",  # "0915-1530|1815-1915:"
    "last_update",  # YYYY-MM-DD
    "expiry",  # epoch seconds (derivatives), empty otherwise
    "ticker",  # the Fyers symbol: NSE:SBIN-EQ
    "exchange",  # 10 NSE, 11 MCX, 12 BSE
    "segment",  # 10 capital market, 11 equity derivatives, 12 currency derivatives, 20 commodity
    "scrip_code",  # the exchange's token
    "underlying",
    "underlying_scrip_code",
    "strike",  # -1.0 when not an option
    "option_type",  # CE, PE, or XX
    "underlying_fytoken",
    "reserved_text",
    "reserved_int",
    "reserved_float",
)
# (Fyers exchange code, segment code) -> our exchange; other pairs (NSE commodity, BSE currency) we do not trade.
SYMBOL_MASTER_EXCHANGES: dict[tuple[int, int], str] = {
    (10, 10): "NSE",
    (12, 10): "BSE",
    (10, 11): "NFO",
    (12, 11): "BFO",
    (10, 12): "CDS",
    (11, 20): "MCX",
}
# Fyers' exchange instrument type codes that we list, by our instrument type (options also need CE/PE in the option
# type column). Cash: 0 EQ, 9 ETF, 50 BSE's "misc" group equities; 10 an index. Futures: 11 FUTIDX, 12 FUTIVX,
# 13 FUTSTK, 16 FUTCUR, 17 FUTIRT, 18 FUTIRC, 25 FUTIRD, 30 FUTCOM. Options: 14 OPTIDX, 15 OPTSTK, 19 OPTCUR,
# 31 OPTFUT (options on commodity futures), 32 OPTCOM. Preference shares, debentures, warrants, bonds, mutual funds and
# the currency segment's underlyings are left out.
FYERS_INSTRUMENT_TYPES: dict[str, frozenset[int]] = {
    "EQ": frozenset({0, 9, 50}),
    "INDEX": frozenset({10}),
    "FUT": frozenset({11, 12, 13, 16, 17, 18, 25, 30}),
    "OPTION": frozenset({14, 15, 19, 31, 32}),
}
FYERS_INDEX_SUFFIX = "-INDEX"


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
    """credentials: {"client_id": the app id ("XJ12345-100"), "secret_key": the app secret, optionally "pin": the
    user's Fyers PIN, which renewing a session with the refresh token needs}.
    config.base_url: the API root (".../api/v3"); config.extra["data_url"]: the data API root (".../data")."""

    broker = "fyers"
    uses_oauth = True
    renews_sessions = True
    historical_max_span_days: ClassVar[dict[str, int]] = HISTORY_MAX_SPAN_DAYS

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
        # The refresh token (valid 15 days) renews the session without the browser; see session_renew.
        refresh_token = str(result.get("refresh_token") or "")
        extra = {"refresh_token": refresh_token} if refresh_token else {}
        self.session = BrokerSession(
            access_token=access_token, broker_user_id=_jwt_claim(access_token, "fy_id"), extra=extra
        )
        if not self.session.broker_user_id:
            profile = self._call(lambda model: model.get_profile(), what="profile")
            user_id = str((profile.get("data") or {}).get("fy_id") or "")
            self.session = BrokerSession(access_token=access_token, broker_user_id=user_id, extra=extra)
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

    def session_renew(self) -> BrokerSession:
        """A new access token from the refresh token Fyers issued at the login (valid 15 days) and the user's PIN,
        without the browser. The refresh token stays the same; any refusal means the user must log in again."""
        session = self.session
        refresh_token = str((session.extra if session else {}).get("refresh_token") or "")
        pin = str(self.credentials.get("pin") or "")
        if session is None or not refresh_token:
            raise SessionExpired("No Fyers refresh token to renew the session with: log in to Fyers again.")
        if not pin:
            raise SessionExpired("Renewing a Fyers session needs the account's Fyers PIN: log in to Fyers again.")
        payload = {
            "grant_type": "refresh_token",
            "appIdHash": _app_id_hash(self._app_id, str(self.credentials.get("secret_key") or "")),
            "refresh_token": refresh_token,
            "pin": pin,
        }
        self._transport.begin()
        try:
            response = self._transport.session.post(f"{self._api_url}/validate-refresh-token", json=payload)
        except requests.RequestException as error:
            raise BrokerUnavailable(f"Fyers did not answer the session renewal: {type(error).__name__}.") from None
        if response.status_code == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            raise BrokerRateLimited("Fyers rate limit reached (session renewal).", retry_after=retry_after)
        if response.status_code >= 500:
            raise BrokerUnavailable(f"Fyers answered HTTP {response.status_code} to the session renewal.")
        try:
            result = response.json()
        except ValueError:
            raise BrokerUnavailable("Fyers sent an unreadable answer to the session renewal.") from None
        token = result.get("access_token") if isinstance(result, dict) else None
        if not isinstance(result, dict) or result.get("s") != "ok" or not token:
            message = str(result.get("message") or "") if isinstance(result, dict) else ""
            raise SessionExpired(
                f"Fyers refused to renew the session ({message or 'no access token'}): log in to Fyers again."
            )
        access_token = str(token)
        extra = dict(session.extra) | {"refresh_token": str(result.get("refresh_token") or refresh_token)}
        self.session = BrokerSession(
            access_token=access_token,
            broker_user_id=_jwt_claim(access_token, "fy_id") or session.broker_user_id,
            extra=extra,
        )
        return self.session

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

    # historical data --------------------------------------------------------------------------------------------

    def historical_candles(
        self, *, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[HistoricalCandle]:
        resolution = HISTORY_RESOLUTIONS.get(interval)
        if resolution is None:
            raise InvalidInput(
                f"Fyers historical data comes in {', '.join(HISTORY_RESOLUTIONS)} candles, not {interval!r}."
            )
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInput("Historical ranges need timezone-aware start and end.")
        if end <= start:
            return []
        # Epoch bounds, both inclusive at Fyers: the last second before `end` keeps a candle starting at `end` out.
        query = {
            "symbol": to_fyers_symbol(symbol),
            "resolution": resolution,
            "date_format": "0",
            "range_from": str(math.floor(start.timestamp())),
            "range_to": str(math.ceil(end.timestamp()) - 1),
            "cont_flag": "1",
        }
        result = self._call(
            lambda model: model.history(data=query), what="historical data", ok_states=HISTORY_OK_STATES
        )
        candles = [_candle_from_fyers(row, daily=interval == "1d") for row in result.get("candles") or []]
        return sorted((candle for candle in candles if start <= candle.start < end), key=lambda candle: candle.start)

    # calls and errors -------------------------------------------------------------------------------------------

    def _model(self) -> fyersModel.FyersModel:
        token = self.session.access_token if self.session else ""
        if not token:
            raise SessionExpired("No Fyers session: log in to Fyers first.")
        if self._sdk is None or self._sdk_token != token:
            self._sdk = _new_fyers_model(self._app_id, token, self._transport)
            self._sdk_token = token
        return self._sdk

    def _call(
        self,
        operation: Callable[[fyersModel.FyersModel], Any],
        *,
        what: str,
        ok_states: frozenset[str] = frozenset({"ok"}),
    ) -> dict[str, Any]:
        model = self._model()
        with _ENDPOINTS.hold(self._api_url, self._data_url):
            self._transport.begin()
            try:
                result = operation(model)
            except Exception as error:  # the SDK's own bugs (e.g. a KeyError on an odd body) must not leak out
                raise BrokerError(f"The Fyers SDK failed during {what}: {type(error).__name__}.") from None
            wire = self._transport.outcome()
        _raise_for(result, wire, swallowed=result is model.service.error_resp, what=what, ok_states=ok_states)
        return result


def _raise_for(
    result: Any, wire: _WireOutcome, *, swallowed: bool, what: str, ok_states: frozenset[str] = frozenset({"ok"})
) -> None:
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
    if result.get("s") in ok_states:
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


def _app_id_hash(app_id: str, secret_key: str) -> str:
    return hashlib.sha256(f"{app_id}:{secret_key}".encode()).hexdigest()


def _candle_from_fyers(row: Any, *, daily: bool) -> HistoricalCandle:
    """[epoch, open, high, low, close, volume]. Daily candles start at 00:00 IST whatever instant of the day Fyers
    stamps them with."""
    try:
        stamp, *values, volume = row[:6]
        moment = datetime.fromtimestamp(int(stamp), tz=IST)
        open_, high, low, close = (Decimal(str(value)).quantize(Decimal("0.01")) for value in values)
        traded = int(Decimal(str(volume)))
    except (TypeError, ValueError, InvalidOperation, OverflowError, OSError):
        raise BrokerError(f"Fyers sent an unreadable candle: {str(row)[:80]}.") from None
    if daily:
        moment = datetime.combine(moment.date(), time(0), tzinfo=IST)
    return HistoricalCandle(start=moment, open=open_, high=high, low=low, close=close, volume=traded)


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


# --- the symbol master (no account needed: Fyers publishes it) ----------------------------------------------------


def instrument_master_fetch(*, url: str = "", timeout: float = 60.0, proxy_url: str = "") -> list[BrokerInstrument]:
    """Every instrument we trade from Fyers' public symbol master: the CSV of each segment in SYMBOL_MASTER_FILES
    under `url` (the directory; FYERS_SYMBOL_MASTER_URL when empty), fetched through the egress guard. Raises
    BrokerUnavailable when a file cannot be downloaded (network, timeout, HTTP error) and InvalidInput, naming the
    file and line, when a file is empty or not in the layout we read: a half-read master must never replace ours."""
    base = (url or settings.FYERS_SYMBOL_MASTER_URL).rstrip("/")
    transport = _Transport(timeout=timeout, proxy_url=proxy_url)
    instruments: list[BrokerInstrument] = []
    try:
        for segment in SYMBOL_MASTER_FILES:
            file_name = f"{segment}.csv"
            text = _symbol_master_download(transport, f"{base}/{file_name}", file_name=file_name)
            instruments += symbol_master_parse(text, file_name=file_name)
    finally:
        transport.session.close()
    return instruments


def _symbol_master_download(transport: _Transport, url: str, *, file_name: str) -> str:
    try:
        response = transport.session.get(url)
    except requests.RequestException as error:
        raise BrokerUnavailable(
            f"Fyers' symbol master {file_name} could not be downloaded: {type(error).__name__}."
        ) from None
    if response.status_code != 200:
        raise BrokerUnavailable(
            f"Fyers' symbol master {file_name} could not be downloaded: HTTP {response.status_code}."
        )
    return response.content.decode("utf-8", errors="replace")


def symbol_master_parse(text: str, *, file_name: str) -> list[BrokerInstrument]:
    """The instruments of one symbol master file (rows of segments and instrument types we do not trade are left
    out); InvalidInput naming the file and line for a row that is not in Fyers' layout, or a file without rows."""
    instruments: list[BrokerInstrument] = []
    reader = csv.reader(io.StringIO(text))
    rows = 0
    try:
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            rows += 1
            where = f"Fyers' symbol master {file_name}, line {reader.line_num}"
            if len(fields) != len(SYMBOL_MASTER_COLUMNS):
                raise InvalidInput(
                    f"{where}: {len(fields)} columns where {len(SYMBOL_MASTER_COLUMNS)} were expected; "
                    "its layout has changed."
                )
            try:
                instrument = _instrument_from_fyers_row(dict(zip(SYMBOL_MASTER_COLUMNS, fields, strict=True)))
            except ValueError as error:
                raise InvalidInput(f"{where}: {error}.") from None
            if instrument is not None:
                instruments.append(instrument)
    except csv.Error as error:
        raise InvalidInput(f"Fyers' symbol master {file_name}, line {reader.line_num}: not CSV ({error}).") from None
    if not rows:
        raise InvalidInput(f"Fyers' symbol master {file_name} is empty.")
    return instruments


def _instrument_from_fyers_row(raw: dict[str, str]) -> BrokerInstrument | None:
    """One row in our vocabulary; None for what we do not trade; ValueError saying what is unreadable."""
    row = {column: value.strip() for column, value in raw.items()}
    exchange = SYMBOL_MASTER_EXCHANGES.get((_whole(row, "exchange"), _whole(row, "segment")))
    code = _whole(row, "instrument_type")
    option_type = row["option_type"].upper()
    kind = next((ours for ours, codes in FYERS_INSTRUMENT_TYPES.items() if code in codes), None)
    if kind == "OPTION":
        kind = option_type if option_type in ("CE", "PE") else None
    if exchange is None or kind is None:
        return None
    ticker = row["ticker"]
    prefix, sep, name = ticker.partition(":")
    if not sep or not prefix or not name:
        raise ValueError(f"symbol ticker {ticker!r} is not like NSE:SBIN-EQ")
    is_derivative = kind in ("FUT", "CE", "PE")
    if kind == "EQ":
        try:
            tradingsymbol = split_symbol(from_fyers_symbol(ticker))[1]
        except InvalidInput:
            raise ValueError(f"symbol ticker {ticker!r} is not a Fyers cash symbol") from None
    else:
        tradingsymbol = name.removesuffix(FYERS_INDEX_SUFFIX) if kind == "INDEX" else name
    lot_size = _whole(row, "lot_size")
    if lot_size < 0:
        raise ValueError(f"lot size {row['lot_size']!r} is negative")
    strike = _number(row, "strike") if kind in ("CE", "PE") else None
    if strike is not None and strike <= 0:
        raise ValueError(f"option strike {row['strike']!r} is not a price")
    return BrokerInstrument(
        exchange=exchange,
        instrument_type=kind,
        tradingsymbol=tradingsymbol,
        broker_id=ticker,
        name=row["symbol_details"],
        underlying=row["underlying"] if kind != "EQ" else "",
        expiry=_expiry_date(row) if is_derivative else None,
        strike=strike,
        lot_size=lot_size,
        tick_size=_number(row, "tick_size"),
        exchange_token=str(_whole(row, "scrip_code")),
        isin=row["isin"] if kind == "EQ" else "",
    )


def _whole(row: dict[str, str], column: str) -> int:
    number = _finite(row, column)
    if number != number.to_integral_value():
        raise ValueError(f"{column.replace('_', ' ')} {row[column]!r} is not a whole number")
    return int(number)


def _finite(row: dict[str, str], column: str) -> Decimal:
    value = row[column]
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{column.replace('_', ' ')} {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{column.replace('_', ' ')} {value!r} is not a number")
    return number


def _number(row: dict[str, str], column: str) -> Decimal:
    number = _finite(row, column)
    return number.normalize() if number == number.to_integral_value() else number


def _expiry_date(row: dict[str, str]) -> date:
    """The expiry's date in IST from the epoch Fyers gives (the expiry day's close)."""
    epoch = _whole(row, "expiry")
    try:
        return datetime.fromtimestamp(epoch, tz=IST).date()
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"expiry {row['expiry']!r} is not an epoch") from None
