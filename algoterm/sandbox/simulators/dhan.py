"""Dhan API v2 over the simulated exchange, for the real `dhanhq` SDK.

Routes live under `/v2`, as on api.dhan.co: point the SDK's `DhanHTTP.base_url` at `f"{server.url}/v2"`. Requests
carry `access-token` and `client-id` headers; tokens are issued by `register_client` (Dhan users generate them on
Dhan's web) and all die on `expire_sessions`; `GET /v2/RenewToken` issues a new token valid 24 hours from a valid
one. Bodies use Dhan's camelCase fields and errors Dhan's `{"errorType", "errorCode", "errorMessage"}` envelope.
Rate limits per client: orders 10/s, 250/min, 1000/h, 7000/day; quotes 1/s; other data (charts included) 5/s
(HTTP 429, DH-904).

Historical charts (`POST /v2/charts/intraday`, `/v2/charts/historical`) answer Dhan's parallel arrays from the
Candle table where it has the symbol's candles, else from the same synthetic price path as the Kite simulator.
The compact scrip master (`GET /api-data/api-scrip-master.csv`, no login, as on images.dhan.co) is written in
Dhan's layout from the instrument master; the control route `/__sim__/scrip-master` truncates it for tests.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from algoterm.sandbox.simulators.base import RateWindows, SimRequest, SimResponse, SimulatorApp
from algoterm.sandbox.simulators.kite import SESSION_MINUTES, SESSION_OPEN, synthetic_candle
from brokers import exchange, instruments
from brokers.adapters.dhan import (
    DERIVATIVE_INSTRUMENTS,
    DHAN_ORDER_TYPES,
    DHAN_SIDES,
    DHAN_VALIDITIES,
    EXCHANGE_SEGMENTS,
    HISTORICAL_MAX_SPAN_DAYS,
    INDEX_SEGMENT,
    INDEX_SYMBOLS,
    INDEX_UNDERLYINGS,
    ORDER_STATUSES,
    ORDER_TYPES,
    PRODUCTS,
    SCRIP_MASTER_COLUMNS,
    SEGMENT_EXCHANGES,
    SIDES,
    VALIDITIES,
    chart_instrument,
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
from brokers.symbols import NSE_OTHER_SERIES
from marketdata.calendar import is_trading_day
from marketdata.candles import candles_get
from marketdata.instruments import monthly_expiry
from marketdata.instruments.loader import INDEX_UNDERLYINGS as INDEX_UNDERLYING_BY_SYMBOL
from marketdata.models import Instrument, InstrumentType
from marketdata.selectors import instrument_active_list, instrument_master_count

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

TOKEN_LIFETIME = timedelta(hours=24)
INVALID_TOKEN = "Client ID or user generated access token is invalid or expired."
# Dhan's DH-905 messages: a request it cannot read, and one it reads but has no candles for.
BAD_PARAMETERS = "Missing required fields, bad values for parameters etc."
NO_DATA = "System is unable to fetch data due to incorrect parameters or no data present"
INTRADAY_INTERVALS = (1, 5, 15, 25, 60)
CHART_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
# The scrip master's exchange id and segment letter, by our exchange, for contracts.
CONTRACT_SEGMENTS = {"NFO": ("NSE", "D"), "BFO": ("BSE", "D"), "MCX": ("MCX", "M"), "CDS": ("NSE", "C")}
# When contracts expire, as the scrip master writes it.
EXPIRY_TIMES = {"NFO": "14:30:00", "BFO": "14:30:00", "MCX": "23:30:00", "CDS": "12:00:00"}
NO_STRIKE = "-0.01000"


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


# --- the scrip master ------------------------------------------------------------------------------------------


def _paise(tick_size: Decimal | None) -> str:
    """Dhan writes tick sizes in paise with four decimals: 0.05 rupees is 5.0000."""
    return f"{Decimal(tick_size or 0) * 100:.4f}"


def _strike_text(strike: Decimal) -> str:
    return f"{strike.normalize():f}"


def _is_weekly(instrument: Instrument) -> bool:
    if instrument.exchange not in ("NFO", "BFO") or instrument.expiry is None:
        return False
    expiry = instrument.expiry
    return monthly_expiry(exchange=instrument.exchange, year=expiry.year, month=expiry.month) != expiry


def dhan_scrip_row(instrument: Instrument) -> dict[str, str] | None:
    """One instrument as a row of Dhan's compact scrip master, written the way Dhan writes it; None for an
    instrument without a Dhan security id."""
    if not instrument.dhan_security_id:
        return None
    row = dict.fromkeys(SCRIP_MASTER_COLUMNS, "")
    row |= {
        "SEM_SMST_SECURITY_ID": instrument.dhan_security_id,
        "SEM_LOT_UNITS": f"{max(instrument.lot_size, 1)}.0",
        "SEM_STRIKE_PRICE": NO_STRIKE,
        "SEM_OPTION_TYPE": "XX",
        "SEM_TICK_SIZE": _paise(instrument.tick_size),
        "SEM_EXPIRY_FLAG": "NA",
    }
    kind = instrument.instrument_type
    if kind == InstrumentType.INDEX:
        name = instrument.underlying or instrument.tradingsymbol
        return row | {
            "SEM_EXM_EXCH_ID": instrument.exchange,
            "SEM_SEGMENT": "I",
            "SEM_INSTRUMENT_NAME": "INDEX",
            "SEM_EXPIRY_CODE": "0",
            "SEM_TRADING_SYMBOL": name,
            "SEM_LOT_UNITS": "1.0",
            "SEM_CUSTOM_SYMBOL": instrument.tradingsymbol.title(),
            "SEM_TICK_SIZE": _paise(instrument.tick_size or Decimal("0.05")),
            "SEM_EXCH_INSTRUMENT_TYPE": "INDEX",
            "SEM_SERIES": "X",
            "SM_SYMBOL_NAME": name,
        }
    if kind == InstrumentType.EQ:
        symbol, series = instrument.tradingsymbol, "EQ" if instrument.exchange == "NSE" else "A"
        base, dash, suffix = symbol.rpartition("-")
        if instrument.exchange == "NSE" and dash and suffix in NSE_OTHER_SERIES:
            symbol, series = base, suffix
        name = instrument.name or symbol
        return row | {
            "SEM_EXM_EXCH_ID": instrument.exchange,
            "SEM_SEGMENT": "E",
            "SEM_INSTRUMENT_NAME": "EQUITY",
            "SEM_TRADING_SYMBOL": symbol,
            "SEM_CUSTOM_SYMBOL": name.title(),
            "SEM_EXCH_INSTRUMENT_TYPE": "ES",
            "SEM_SERIES": series,
            "SM_SYMBOL_NAME": name.upper(),
        }
    if instrument.exchange not in CONTRACT_SEGMENTS or instrument.expiry is None:
        return None
    exchange_id, segment = CONTRACT_SEGMENTS[instrument.exchange]
    underlying, expiry = instrument.underlying, instrument.expiry
    is_option = kind in (InstrumentType.CE, InstrumentType.PE)
    if instrument.exchange in DERIVATIVE_INSTRUMENTS:
        future, option = DERIVATIVE_INSTRUMENTS[instrument.exchange]
        dhan_kind = option if is_option else future
    else:
        dhan_kind = ("OPT" if is_option else "FUT") + ("IDX" if underlying in INDEX_UNDERLYINGS else "STK")
    # Dhan's contract symbols name the month (NIFTY-Sep2026-FUT); currency and commodity options the day too.
    day = f"{expiry:%d}" if instrument.exchange == "CDS" or (is_option and instrument.exchange == "MCX") else ""
    month = f"{day}{expiry:%b%Y}"
    if is_option:
        strike = Decimal(instrument.strike or 0)
        trading_symbol = f"{underlying}-{month}-{_strike_text(strike)}-{kind}"
        custom = f"{underlying} {expiry:%d %b} {_strike_text(strike)} {'CALL' if kind == InstrumentType.CE else 'PUT'}"
    else:
        trading_symbol, custom = f"{underlying}-{month}-FUT", f"{underlying} {expiry:%b} FUT"
    return row | {
        "SEM_EXM_EXCH_ID": exchange_id,
        "SEM_SEGMENT": segment,
        "SEM_INSTRUMENT_NAME": dhan_kind,
        "SEM_EXPIRY_CODE": "0",
        "SEM_TRADING_SYMBOL": trading_symbol,
        "SEM_CUSTOM_SYMBOL": custom.upper(),
        "SEM_EXPIRY_DATE": f"{expiry:%Y-%m-%d} {EXPIRY_TIMES[instrument.exchange]}",
        "SEM_STRIKE_PRICE": f"{Decimal(instrument.strike):.5f}" if is_option else NO_STRIKE,
        "SEM_OPTION_TYPE": kind if is_option else "XX",
        "SEM_EXPIRY_FLAG": "W" if _is_weekly(instrument) else "M",
        "SEM_EXCH_INSTRUMENT_TYPE": "OP" if is_option else dhan_kind,
    }


def _static_instruments() -> list[Instrument]:
    """The static instrument table as unsaved Instruments, for a simulator whose instrument master is empty."""
    rows = []
    for known in instruments.DEMO_INSTRUMENTS:
        exchange_code, tradingsymbol = split_symbol(known.symbol)
        is_index = known.symbol in INDEX_SYMBOLS
        rows.append(
            Instrument(
                symbol=known.symbol,
                exchange=exchange_code,
                tradingsymbol=tradingsymbol,
                name=tradingsymbol,
                underlying=INDEX_UNDERLYING_BY_SYMBOL.get(known.symbol, tradingsymbol),
                instrument_type=InstrumentType.INDEX if is_index else InstrumentType.EQ,
                lot_size=known.lot_size,
                tick_size=Decimal(0) if is_index else Decimal("0.05"),
                dhan_security_id=known.dhan_security_id,
            )
        )
    return rows


def scrip_master_csv(rows: Iterable[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCRIP_MASTER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- charts ------------------------------------------------------------------------------------------------------


def _chart_time(value: Any) -> datetime:
    for pattern in CHART_TIME_FORMATS:
        try:
            return datetime.strptime(str(value), pattern).replace(tzinfo=IST)
        except ValueError:
            continue
    raise DhanFailure("input", BAD_PARAMETERS)


def _chart_buckets(*, minutes: int | None, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """(moment the candle's prices start at, seconds it covers) for each candle starting in [start, end) on trading
    days: `minutes`-long candles from the 09:15 open (the last one cut at 15:30), or with None one candle a day,
    stamped 00:00 IST, whose prices span the session."""
    buckets = []
    day = start.date()
    while day <= end.date():
        if is_trading_day(day):
            session_open = datetime.combine(day, SESSION_OPEN, tzinfo=IST)
            if minutes is None:
                if start <= datetime.combine(day, time(0), tzinfo=IST) < end:
                    buckets.append((session_open, SESSION_MINUTES * 60))
            else:
                for offset in range(0, SESSION_MINUTES, minutes):
                    opening = session_open + timedelta(minutes=offset)
                    if start <= opening < end:
                        buckets.append((opening, min(minutes, SESSION_MINUTES - offset) * 60))
        day += timedelta(days=1)
    return buckets


class DhanSimulator(SimulatorApp):
    name = "dhan"

    def __init__(self, *, rate_limits: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """`rate_limits` overrides some of DEFAULT_RATE_LIMITS by bucket ("orders", "quotes", "data")."""
        self._tokens: dict[str, str] = {}  # access token -> client id
        self._token_expiries: dict[str, datetime] = {}  # access token -> when it dies (none: at expire_sessions)
        self._opening_balances: dict[str, Decimal] = {}
        self._scrip_master_rows: int | None = None  # serve only the first N rows (a truncated download)
        self._scrip_master_indices = True  # False leaves the indices out
        self._tokens_lock = threading.Lock()
        limits = DEFAULT_RATE_LIMITS | (rate_limits or {})
        self._rate_windows = {bucket: RateWindows(windows) for bucket, windows in limits.items()}
        super().__init__()

    # --- clients ---------------------------------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        access_token: str,
        *,
        opening_balance: Decimal | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        """What a Dhan user does on Dhan's web: generate an access token for their client id (valid until
        `expires_at`, or until `expire_sessions` when None)."""
        with self._tokens_lock:
            self._tokens[access_token] = client_id
            if expires_at is not None:
                self._token_expiries[access_token] = expires_at
            if opening_balance is not None:
                self._opening_balances[client_id] = opening_balance

    def expire_sessions(self) -> None:
        with self._tokens_lock:
            self._tokens.clear()
            self._token_expiries.clear()

    def client_for_token(self, access_token: str) -> str | None:
        """The client id a live access token belongs to (the feed simulator authenticates its sockets with this)."""
        with self._tokens_lock:
            expires_at = self._token_expiries.get(access_token)
            if expires_at is not None and datetime.now(tz=UTC) >= expires_at:
                return None
            return self._tokens.get(access_token)

    def _authenticated_client(self, request: SimRequest, *, client_header: str = "client-id") -> str:
        token = request.headers.get("access-token") or ""
        claimed = request.headers.get(client_header) or ""
        client_id = self.client_for_token(token)
        if client_id is None or client_id != claimed:
            raise DhanFailure("auth", INVALID_TOKEN)
        return client_id

    # --- scrip master control ----------------------------------------------------------------------------------------

    def scrip_master_truncate(self, *, rows: int | None = None, indices: bool = True) -> None:
        """Serve a damaged scrip master: only its first `rows` rows, and/or without the indices; the defaults
        restore the whole file."""
        self._scrip_master_rows = rows
        self._scrip_master_indices = indices

    def _control(self, request: SimRequest) -> SimResponse:
        if request.path == "/__sim__/scrip-master" and request.method == "POST":
            data = request.json() if request.body else {}
            limit = int(data["rows"]) if data.get("rows") is not None else None
            self.scrip_master_truncate(rows=limit, indices=bool(data.get("indices", True)))
            return SimResponse.json({"ok": True})
        return super()._control(request)

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
            ("POST", r"/v2/charts/intraday", "data", self._chart_intraday),
            ("POST", r"/v2/charts/historical", "data", self._chart_daily),
        ]
        for method, pattern, bucket, handler in routes:
            self.add_route(method, pattern, self._guarded(bucket, handler))
        self.add_route("GET", r"/v2/RenewToken", self._renew_token)
        self.add_route("GET", r"/api-data/api-scrip-master\.csv", self._scrip_master)

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

    # --- historical charts -----------------------------------------------------------------------------------------

    def _chart_intraday(self, request: SimRequest, client_id: str) -> dict[str, list]:
        return self._chart(self._body(request), intraday=True)

    def _chart_daily(self, request: SimRequest, client_id: str) -> dict[str, list]:
        return self._chart(self._body(request), intraday=False)

    def _chart(self, body: dict[str, Any], *, intraday: bool) -> dict[str, list]:
        """Dhan's chart answer: parallel arrays of the candles starting in [fromDate, toDate) and by now."""
        segment = str(body.get("exchangeSegment") or "")
        security_id = str(body.get("securityId") or "")
        known_segment = segment == INDEX_SEGMENT or segment in SEGMENT_EXCHANGES
        symbol = _symbol_for(segment, security_id) if known_segment and security_id else None
        if (
            symbol is None
            or _wire_instrument(symbol)[0] != segment
            or body.get("instrument") != chart_instrument(symbol)
        ):
            raise DhanFailure("input", BAD_PARAMETERS)
        start, end = _chart_time(body.get("fromDate")), _chart_time(body.get("toDate"))
        if end <= start:
            raise DhanFailure("input", BAD_PARAMETERS)
        if intraday:
            try:
                minutes = int(body.get("interval", 1))
            except (TypeError, ValueError):
                raise DhanFailure("input", BAD_PARAMETERS) from None
            if minutes not in INTRADAY_INTERVALS:
                raise DhanFailure("input", BAD_PARAMETERS)
            if end - start > timedelta(days=HISTORICAL_MAX_SPAN_DAYS["1m"]):
                raise DhanFailure(
                    "input",
                    f"Intraday data can be fetched for at most {HISTORICAL_MAX_SPAN_DAYS['1m']} days per request.",
                )
        else:
            minutes = None
            start, end = (datetime.combine(moment.date(), time(0), tzinfo=IST) for moment in (start, end))
        candles = self._candles(symbol, minutes=minutes, start=start, end=min(end, datetime.now(tz=IST)))
        if not candles:
            raise DhanFailure("input", NO_DATA)
        names = ("timestamp", "open", "high", "low", "close", "volume", "open_interest")
        answer: dict[str, list] = {name: [candle[index] for candle in candles] for index, name in enumerate(names)}
        if not body.get("oi"):
            del answer["open_interest"]
        return answer

    @staticmethod
    def _candles(symbol: str, *, minutes: int | None, start: datetime, end: datetime) -> list[tuple]:
        """(epoch seconds, open, high, low, close, volume, open interest) rows: the Candle table's where it holds
        the symbol's candles of this kind in the range, else the synthetic path's."""
        if minutes in (1, None):
            stored = candles_get(symbol=symbol, interval="1m" if minutes else "1d", start=start, end=end)
            if stored:
                return [
                    (
                        int(bar.start.timestamp()),
                        float(bar.open),
                        float(bar.high),
                        float(bar.low),
                        float(bar.close),
                        bar.volume,
                        bar.oi or 0,
                    )
                    for bar in stored
                ]
        rows = []
        for opening, seconds in _chart_buckets(minutes=minutes, start=start, end=end):
            _, open_, high, low, close, volume = synthetic_candle(
                symbol, opening=opening, seconds=seconds, interval="minute" if minutes else "day"
            )
            stamp = opening if minutes else datetime.combine(opening.date(), time(0), tzinfo=IST)
            rows.append((int(stamp.timestamp()), open_, high, low, close, volume, 0))
        return rows

    # --- token renewal ---------------------------------------------------------------------------------------------

    def _renew_token(self, request: SimRequest) -> SimResponse:
        """A new token valid 24 hours from now for a valid one; the old token and every other stay as they were."""
        try:
            client_id = self._authenticated_client(request, client_header="dhanClientId")
            if not self._rate_windows["data"].allow(client_id):
                raise DhanFailure(
                    "rate", "Too many requests on server from single user breaching rate limits. Try throttling."
                )
        except DhanFailure as failure:
            return self.error_response(ERRORS[failure.kind][0], failure.message, failure.kind)
        token = secrets.token_urlsafe(32)
        expires_at = datetime.now(tz=UTC) + TOKEN_LIFETIME
        with self._tokens_lock:
            self._tokens[token] = client_id
            self._token_expiries[token] = expires_at
        return SimResponse.json(
            {
                "dhanClientId": client_id,
                "dhanClientName": f"SIM CLIENT {client_id}",
                "dhanClientUcc": f"SIM{client_id[-5:]}",
                "givenPowerOfAttorney": False,
                "accessToken": token,
                "expiryTime": expires_at.astimezone(IST).strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )

    # --- scrip master ----------------------------------------------------------------------------------------------

    def _scrip_master(self, request: SimRequest) -> SimResponse:
        """Dhan's compact scrip master (no login needed), from the instrument master or, while that is empty, the
        static instrument table; cut short when a test asked for a damaged file."""
        listed = list(instrument_active_list().iterator(chunk_size=5000))
        if not listed and not instrument_master_count():
            listed = _static_instruments()
        if not self._scrip_master_indices:
            listed = [instrument for instrument in listed if instrument.instrument_type != InstrumentType.INDEX]
        rows = [row for row in map(dhan_scrip_row, listed) if row is not None]
        if self._scrip_master_rows is not None:
            rows = rows[: self._scrip_master_rows]
        return SimResponse(200, scrip_master_csv(rows).encode(), "text/csv")
