"""Dhan (API v2) through the official `dhanhq` SDK.

The SDK never raises: every call answers `{"status": "success"|"failure", "remarks": ..., "data": ...}`. A failure
whose `remarks` is a dict carries Dhan's own `errorCode`/`errorType`/`errorMessage`; a failure whose `remarks` is a
string means the SDK caught something itself (connection refused, timeout, a body that is not JSON). The SDK drops
the HTTP status, so errors are classified by Dhan's error code alone.

Each adapter builds its own `DhanContext`, and the base URL, timeout and proxy are set on that context's own
`DhanHTTP` instance (and its own `requests.Session`), so no class attribute is touched and accounts never share state.

Beside the SDK: the published scrip master (`instrument_master_fetch`, a public CSV the SDK would read with pandas)
and token renewal (`DhanAdapter.session_renew`, which the SDK only offers as a module-level call without a timeout
or proxy) go through our own guarded `requests` sessions.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from urllib.parse import quote as url_quote
from zoneinfo import ZoneInfo

import requests
from dhanhq import DhanContext, DhanHTTP, dhanhq
from django.conf import settings

from brokers import instruments
from brokers.egress import PublicProxyAdapter, session_guard
from brokers.protocol import (
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

logger = logging.getLogger(__name__)
IST = ZoneInfo("Asia/Kolkata")

# --- vocabulary: ours -> Dhan, and Dhan -> ours ------------------------------------------------------------------

EXCHANGE_SEGMENTS: dict[str, str] = {
    "NSE": "NSE_EQ",
    "BSE": "BSE_EQ",
    "NFO": "NSE_FNO",
    "BFO": "BSE_FNO",
    "MCX": "MCX_COMM",
    "CDS": "NSE_CURRENCY",
}
SEGMENT_EXCHANGES: dict[str, str] = {segment: exchange for exchange, segment in EXCHANGE_SEGMENTS.items()}

# Indices live in Dhan's IDX_I segment whatever their exchange; the instrument table does not say which symbols are
# indices yet, so they are listed here. They can be quoted but not traded.
INDEX_SEGMENT = "IDX_I"
INDEX_SYMBOLS: frozenset[str] = frozenset({"NSE:NIFTY 50", "NSE:NIFTY BANK", "NSE:NIFTY FIN SERVICE", "BSE:SENSEX"})

SIDES: dict[Side, str] = {Side.BUY: "BUY", Side.SELL: "SELL"}
DHAN_SIDES: dict[str, Side] = {dhan: side for side, dhan in SIDES.items()}

PRODUCTS: dict[Product, str] = {Product.MIS: "INTRADAY", Product.CNC: "CNC", Product.NRML: "MARGIN"}
# Products only Dhan has are read as their nearest kind: cover/bracket orders are intraday, MTF is delivery.
DHAN_PRODUCTS: dict[str, Product] = {dhan: product for product, dhan in PRODUCTS.items()} | {
    "CO": Product.MIS,
    "BO": Product.MIS,
    "MTF": Product.CNC,
}

ORDER_TYPES: dict[OrderType, str] = {
    OrderType.MARKET: "MARKET",
    OrderType.LIMIT: "LIMIT",
    OrderType.SL: "STOP_LOSS",
    OrderType.SL_M: "STOP_LOSS_MARKET",
}
DHAN_ORDER_TYPES: dict[str, OrderType] = {dhan: order_type for order_type, dhan in ORDER_TYPES.items()}

VALIDITIES: dict[Validity, str] = {Validity.DAY: "DAY", Validity.IOC: "IOC"}
DHAN_VALIDITIES: dict[str, Validity] = {dhan: validity for validity, dhan in VALIDITIES.items()}

# Dhan has no separate state for a stop order waiting for its trigger: both are PENDING (see `order_status`).
DHAN_ORDER_STATUSES: dict[str, BrokerOrderStatus] = {
    "TRANSIT": BrokerOrderStatus.PENDING,
    "PENDING": BrokerOrderStatus.OPEN,
    "TRIGGERED": BrokerOrderStatus.OPEN,
    "PART_TRADED": BrokerOrderStatus.PARTIALLY_FILLED,
    "TRADED": BrokerOrderStatus.FILLED,
    "REJECTED": BrokerOrderStatus.REJECTED,
    "CANCELLED": BrokerOrderStatus.CANCELLED,
    "EXPIRED": BrokerOrderStatus.EXPIRED,
}
ORDER_STATUSES: dict[BrokerOrderStatus, str] = {
    BrokerOrderStatus.PENDING: "TRANSIT",
    BrokerOrderStatus.OPEN: "PENDING",
    BrokerOrderStatus.TRIGGER_PENDING: "PENDING",
    BrokerOrderStatus.PARTIALLY_FILLED: "PART_TRADED",
    BrokerOrderStatus.FILLED: "TRADED",
    BrokerOrderStatus.REJECTED: "REJECTED",
    BrokerOrderStatus.CANCELLED: "CANCELLED",
    BrokerOrderStatus.EXPIRED: "EXPIRED",
}

# Dhan's trading API codes (DH-9xx) and its data API codes (8xx).
ERROR_CODES: dict[str, type[BrokerError]] = {
    "DH-901": SessionExpired,  # client id or access token invalid or expired
    "DH-902": BrokerError,  # no access: Data API not subscribed or Trading API not enabled; a new login won't help
    "DH-903": BrokerError,  # account problem, e.g. segment not activated
    "DH-904": BrokerRateLimited,
    "DH-905": InvalidInput,
    "DH-906": OrderRejected,
    "DH-907": BrokerError,  # data error
    "DH-908": BrokerUnavailable,  # internal server error
    "DH-909": BrokerUnavailable,  # network error between Dhan's API and its backend
    "DH-910": BrokerError,
    "800": BrokerUnavailable,
    "804": InvalidInput,  # too many instruments
    "805": BrokerRateLimited,
    "806": BrokerError,  # data APIs not subscribed
    "807": SessionExpired,
    "808": SessionExpired,
    "809": SessionExpired,
    "810": SessionExpired,
    "811": InvalidInput,
    "812": InvalidInput,
    "813": InvalidInput,
    "814": InvalidInput,
}

NO_HOLDINGS_CODE = "DH-1111"  # Dhan answers an empty demat account with this error instead of an empty list
CORRELATION_ID = re.compile(r"[A-Za-z0-9 _-]{1,30}")
STOP_TYPES = ("STOP_LOSS", "STOP_LOSS_MARKET")

# --- historical data: Dhan's chart instruments and span limits ---------------------------------------------------

# The underlyings whose contracts are index derivatives (FUTIDX/OPTIDX) rather than stock ones (FUTSTK/OPTSTK).
INDEX_UNDERLYINGS: frozenset[str] = frozenset(
    {"NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY", "NIFTYNXT50", "SENSEX", "BANKEX", "SENSEX50"}
)
# Dhan's `instrument` for a derivative, by our exchange and (future, option).
DERIVATIVE_INSTRUMENTS: dict[str, tuple[str, str]] = {
    "MCX": ("FUTCOM", "OPTFUT"),
    "CDS": ("FUTCUR", "OPTCUR"),
}
# Dhan: intraday (minute) charts cover at most 90 days a request. Daily charts go back to the listing with no
# documented span limit; ten years a request keeps one answer to about 2,500 candles.
HISTORICAL_MAX_SPAN_DAYS: dict[str, int] = {"1m": 90, "1d": 3650}
INTRADAY_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DAILY_DATE_FORMAT = "%Y-%m-%d"
# Dhan answers a range without candles (a holiday, a contract not yet listed) with DH-905 and this message.
NO_DATA_MESSAGE = "no data present"

# --- the scrip master ------------------------------------------------------------------------------------------

SCRIP_MASTER_COLUMNS = (
    "SEM_EXM_EXCH_ID",
    "SEM_SEGMENT",
    "SEM_SMST_SECURITY_ID",
    "SEM_INSTRUMENT_NAME",
    "SEM_EXPIRY_CODE",
    "SEM_TRADING_SYMBOL",
    "SEM_LOT_UNITS",
    "SEM_CUSTOM_SYMBOL",
    "SEM_EXPIRY_DATE",
    "SEM_STRIKE_PRICE",
    "SEM_OPTION_TYPE",
    "SEM_TICK_SIZE",
    "SEM_EXPIRY_FLAG",
    "SEM_EXCH_INSTRUMENT_TYPE",
    "SEM_SERIES",
    "SM_SYMBOL_NAME",
)
# What a row cannot be read without; the others (names, series, flags) are optional.
SCRIP_MASTER_REQUIRED_COLUMNS = (
    "SEM_EXM_EXCH_ID",
    "SEM_SEGMENT",
    "SEM_SMST_SECURITY_ID",
    "SEM_INSTRUMENT_NAME",
    "SEM_TRADING_SYMBOL",
    "SEM_LOT_UNITS",
    "SEM_EXPIRY_DATE",
    "SEM_STRIKE_PRICE",
    "SEM_OPTION_TYPE",
    "SEM_TICK_SIZE",
)
# (SEM_EXM_EXCH_ID, SEM_SEGMENT) -> our exchange: E equity, I index, D derivatives, M commodities, C currency.
# BSE's currency segment (BCD) and anything else is not traded here.
SCRIP_MASTER_EXCHANGES: dict[tuple[str, str], str] = {
    ("NSE", "E"): "NSE",
    ("BSE", "E"): "BSE",
    ("NSE", "I"): "NSE",
    ("BSE", "I"): "BSE",
    ("NSE", "D"): "NFO",
    ("BSE", "D"): "BFO",
    ("MCX", "M"): "MCX",
    ("NSE", "C"): "CDS",
}
EQUITY_INSTRUMENT = "EQUITY"
INDEX_INSTRUMENT = "INDEX"
NSE_EQUITY_SERIES = "EQ"
# Dhan writes tick sizes in paise (5.0000 is a 0.05 rupee tick) and "no strike" as -0.01.
PAISE_PER_RUPEE = Decimal(100)
# A contract's trading symbol is UNDERLYING-[DD]MonYYYY-[STRIKE-]FUT|CE|PE; underlyings may hold a dash (BAJAJ-AUTO).
_CONTRACT_SYMBOL = re.compile(r"^(?P<underlying>.+)-(?:\d{1,2})?[A-Z][a-z]{2}\d{4}-")


def order_status(dhan_status: str, dhan_order_type: str = "", filled_quantity: int = 0) -> BrokerOrderStatus:
    """Dhan's status as ours; an unfilled PENDING stop order is read as waiting for its trigger."""
    status = _lookup(DHAN_ORDER_STATUSES, dhan_status, "order status")
    if dhan_status == "PENDING" and dhan_order_type in STOP_TYPES and filled_quantity == 0:
        return BrokerOrderStatus.TRIGGER_PENDING
    return status


def error_for(remarks: dict[str, Any], *, operation: str) -> BrokerError:
    """The error for a failure Dhan described; unknown codes keep Dhan's own message."""
    code = str(remarks.get("error_code") or "")
    message = str(remarks.get("error_message") or remarks.get("error_type") or "no message")
    error_class = ERROR_CODES.get(code, BrokerError)
    return error_class(f"Dhan {operation}: {message} ({code or 'no code'}).")


def dhan_instrument(symbol: str) -> tuple[str, str]:
    """`NSE:INFY` -> ("NSE_EQ", "1594"); InvalidInput for symbols outside the instrument table."""
    exchange, _ = split_symbol(symbol)
    instrument = instruments.by_symbol(symbol)
    if instrument is None:
        raise InvalidInput(f"{symbol} has no Dhan security id in the instrument table.")
    segment = INDEX_SEGMENT if symbol in INDEX_SYMBOLS else EXCHANGE_SEGMENTS[exchange]
    return segment, instrument.dhan_security_id


def chart_instrument(symbol: str) -> str:
    """Dhan's `instrument` for the charts API: EQUITY, INDEX, or the derivative's kind (FUTIDX, OPTSTK, FUTCOM...),
    read from our symbol (contracts carry Kite's tradingsymbols: NIFTY25JUNFUT, RELIANCE25JUN1300CE)."""
    exchange, tradingsymbol = split_symbol(symbol)
    if symbol in INDEX_SYMBOLS:
        return INDEX_INSTRUMENT
    if exchange in ("NSE", "BSE"):
        return EQUITY_INSTRUMENT
    is_option = tradingsymbol.endswith(("CE", "PE"))
    if not is_option and not tradingsymbol.endswith("FUT"):
        raise InvalidInput(f"{symbol} is neither a future nor an option.")
    if exchange in DERIVATIVE_INSTRUMENTS:
        future, option = DERIVATIVE_INSTRUMENTS[exchange]
        return option if is_option else future
    on_index = any(
        tradingsymbol.startswith(underlying) and tradingsymbol[len(underlying) : len(underlying) + 1].isdigit()
        for underlying in INDEX_UNDERLYINGS
    )
    return ("OPT" if is_option else "FUT") + ("IDX" if on_index else "STK")


def symbol_from_dhan(segment: str, security_id: Any, trading_symbol: str = "") -> str:
    """Dhan's (segment, securityId) as our symbol; instruments missing from our table fall back to their name."""
    exchanges = ("NSE", "BSE") if segment in (INDEX_SEGMENT, "ALL") else (SEGMENT_EXCHANGES.get(segment),)
    for exchange in exchanges:
        instrument = instruments.by_dhan_security_id(exchange, str(security_id)) if exchange else None
        if instrument is not None:
            return instrument.symbol
    if exchanges[0] and trading_symbol:
        return f"{exchanges[0]}:{trading_symbol}"
    raise BrokerError(f"Dhan sent security {security_id} in segment {segment!r}, which we cannot name.")


def _lookup(table: dict[str, Any], value: Any, what: str) -> Any:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise BrokerError(f"Dhan sent an unknown {what} {value!r}.") from None


def _nonzero(value: Any) -> Decimal | None:
    """Dhan writes 0 for 'no price'."""
    number = to_decimal(value)
    return None if number is None or number == 0 else number


def _dhan_time(value: Any, pattern: str = "%Y-%m-%d %H:%M:%S") -> datetime | None:
    try:
        parsed = datetime.strptime(str(value), pattern)
    except ValueError:
        return None
    return None if parsed.year < 1990 else parsed.replace(tzinfo=IST)


def _renewal_expiry(value: Any) -> datetime | None:
    """Dhan's `expiryTime` (ISO 8601; without an offset it is exchange time) as an aware datetime."""
    try:
        moment = datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=IST)


def _first(data: Any) -> dict[str, Any]:
    """Single-order endpoints have answered both an object and a one-item list."""
    if isinstance(data, list):
        if not data:
            raise InvalidInput("Dhan has no such order.")
        data = data[0]
    if not isinstance(data, dict):
        raise BrokerUnavailable("Dhan answered an order lookup with something that is not an order.")
    return data


# --- wire -> values ----------------------------------------------------------------------------------------------


def parse_order(item: dict[str, Any]) -> BrokerOrder:
    dhan_type = item["orderType"]
    filled = int(item.get("filledQty") or 0)
    return BrokerOrder(
        broker_order_id=str(item["orderId"]),
        symbol=symbol_from_dhan(item["exchangeSegment"], item["securityId"], item.get("tradingSymbol") or ""),
        side=_lookup(DHAN_SIDES, item["transactionType"], "transaction type"),
        quantity=int(item["quantity"]),
        filled_quantity=filled,
        order_type=_lookup(DHAN_ORDER_TYPES, dhan_type, "order type"),
        product=_lookup(DHAN_PRODUCTS, item["productType"], "product type"),
        status=order_status(item["orderStatus"], dhan_type, filled),
        price=_nonzero(item.get("price")),
        trigger_price=_nonzero(item.get("triggerPrice")),
        average_price=_nonzero(item.get("averageTradedPrice")),
        validity=DHAN_VALIDITIES.get(item.get("validity") or "DAY", Validity.DAY),
        tag=item.get("correlationId") or "",
        status_message=item.get("omsErrorDescription") or "",
        placed_at=_dhan_time(item.get("createTime")),
        updated_at=_dhan_time(item.get("updateTime")),
    )


def parse_trade(item: dict[str, Any]) -> BrokerTrade:
    return BrokerTrade(
        trade_id=str(item.get("exchangeTradeId") or item["orderId"]),
        broker_order_id=str(item["orderId"]),
        symbol=symbol_from_dhan(item["exchangeSegment"], item["securityId"], item.get("tradingSymbol") or ""),
        side=_lookup(DHAN_SIDES, item["transactionType"], "transaction type"),
        quantity=int(item["tradedQuantity"]),
        price=to_decimal(item["tradedPrice"]),
        traded_at=_dhan_time(item.get("exchangeTime")) or _dhan_time(item.get("createTime")),
    )


def parse_position(item: dict[str, Any]) -> BrokerPosition:
    quantity = int(item["netQty"])
    average = to_decimal(item.get("costPrice")) or Decimal("0.00")
    unrealized = to_decimal(item.get("unrealizedProfit")) or Decimal("0.00")
    # Dhan's positions carry no last price; it follows from the unrealized PnL of an open position.
    last_price = (average + unrealized / quantity).quantize(Decimal("0.01")) if quantity else None
    return BrokerPosition(
        symbol=symbol_from_dhan(item["exchangeSegment"], item["securityId"], item.get("tradingSymbol") or ""),
        product=_lookup(DHAN_PRODUCTS, item["productType"], "product type"),
        quantity=quantity,
        average_price=average,
        last_price=last_price,
        realized_pnl=to_decimal(item.get("realizedProfit")) or Decimal("0.00"),
        unrealized_pnl=unrealized,
        buy_quantity=int(item.get("buyQty") or 0),
        sell_quantity=int(item.get("sellQty") or 0),
    )


def parse_holding(item: dict[str, Any]) -> Holding:
    return Holding(
        symbol=symbol_from_dhan(item.get("exchange") or "ALL", item["securityId"], item.get("tradingSymbol") or ""),
        quantity=int(item["totalQty"]),
        average_price=to_decimal(item["avgCostPrice"]),
        last_price=_nonzero(item.get("lastTradedPrice")),
    )


def parse_funds(data: dict[str, Any]) -> Funds:
    # "availabelBalance" is how Dhan spells it; the corrected spelling is accepted should they fix it.
    available = data["availabelBalance"] if "availabelBalance" in data else data["availableBalance"]
    return Funds(
        available_cash=to_decimal(available),
        used_margin=to_decimal(data.get("utilizedAmount")) or Decimal("0.00"),
        opening_balance=to_decimal(data.get("sodLimit")) or Decimal("0.00"),
    )


def parse_quote(symbol: str, item: dict[str, Any]) -> Quote:
    depth = item.get("depth") or {}
    best_bid = (depth.get("buy") or [{}])[0]
    best_ask = (depth.get("sell") or [{}])[0]
    ohlc = item.get("ohlc") or {}
    return Quote(
        symbol=symbol,
        last_price=to_decimal(item["last_price"]),
        bid=_nonzero(best_bid.get("price")),
        ask=_nonzero(best_ask.get("price")),
        bid_quantity=int(best_bid.get("quantity") or 0),
        ask_quantity=int(best_ask.get("quantity") or 0),
        volume=int(item.get("volume") or 0),
        open=_nonzero(ohlc.get("open")),
        high=_nonzero(ohlc.get("high")),
        low=_nonzero(ohlc.get("low")),
        close=_nonzero(ohlc.get("close")),
        timestamp=_dhan_time(item.get("last_trade_time"), "%d/%m/%Y %H:%M:%S"),
    )


def parse_candles(data: Any, *, start: datetime, end: datetime) -> list[HistoricalCandle]:
    """Dhan's chart answer (parallel arrays open, high, low, close, volume, timestamp in epoch seconds, and
    open_interest when asked for) as candles starting in [start, end), oldest first."""
    if data in (None, "") or (isinstance(data, dict) and not data.get("timestamp")):
        return []
    stamps = data["timestamp"]
    columns = [data[name] for name in ("open", "high", "low", "close", "volume")]
    interest = data.get("open_interest") or []
    if any(len(column) != len(stamps) for column in columns) or (interest and len(interest) != len(stamps)):
        raise ValueError("the candle arrays differ in length")
    candles = []
    for index, stamp in enumerate(stamps):
        opening = datetime.fromtimestamp(float(stamp), tz=IST)
        if not start <= opening < end:
            continue
        open_, high, low, close, volume = (column[index] for column in columns)
        candles.append(
            HistoricalCandle(
                start=opening,
                open=to_decimal(open_),
                high=to_decimal(high),
                low=to_decimal(low),
                close=to_decimal(close),
                volume=int(volume or 0),
                # Dhan reports 0 open interest for instruments that have none; we store that as no OI.
                oi=(int(interest[index] or 0) or None) if interest else None,
            )
        )
    candles.sort(key=lambda candle: candle.start)
    return candles


# --- the scrip master --------------------------------------------------------------------------------------------


def _scrip_text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value).strip()


def _scrip_number(row: dict[str, Any], column: str) -> Decimal:
    raw = _scrip_text(row, column)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{column} {raw!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{column} {raw!r} is not a number")
    return value


def _scrip_expiry(row: dict[str, Any]) -> date | None:
    """Dhan writes contract expiries as `2026-09-29 14:30:00` (the expiry moment); non-contracts have none, or a
    placeholder like 0001-01-01."""
    raw = _scrip_text(row, "SEM_EXPIRY_DATE")
    if not raw:
        return None
    try:
        expiry = date.fromisoformat(raw[:10])
    except ValueError:
        raise ValueError(f"SEM_EXPIRY_DATE {raw!r} is not a date") from None
    return expiry if expiry.year >= 1990 else None


def instrument_from_scrip_row(row: dict[str, Any]) -> BrokerInstrument | None:
    """One row of Dhan's compact scrip master as a BrokerInstrument; None for what we do not trade (other
    exchanges and segments, instrument kinds we do not list); ValueError for a row that cannot be read."""
    exchange = SCRIP_MASTER_EXCHANGES.get(
        (_scrip_text(row, "SEM_EXM_EXCH_ID").upper(), _scrip_text(row, "SEM_SEGMENT").upper())
    )
    if exchange is None:
        return None
    kind = _scrip_text(row, "SEM_INSTRUMENT_NAME").upper()
    security_id = _scrip_text(row, "SEM_SMST_SECURITY_ID")
    trading_symbol = _scrip_text(row, "SEM_TRADING_SYMBOL")
    if not security_id.isdigit():
        raise ValueError(f"SEM_SMST_SECURITY_ID {security_id!r} is not a security id")
    if not trading_symbol:
        raise ValueError(f"security {security_id} has no SEM_TRADING_SYMBOL")
    lot_units = _scrip_number(row, "SEM_LOT_UNITS")
    tick_size = (_scrip_number(row, "SEM_TICK_SIZE") / PAISE_PER_RUPEE).normalize()
    common = {
        "exchange": exchange,
        "broker_id": security_id,
        "exchange_token": security_id,  # Dhan's security id is the exchange's own token
        "lot_size": max(int(lot_units), 1),
    }
    segment = _scrip_text(row, "SEM_SEGMENT").upper()
    if segment == "I":
        if kind != INDEX_INSTRUMENT:
            return None
        return BrokerInstrument(
            instrument_type="INDEX",
            tradingsymbol=trading_symbol,
            name=_scrip_text(row, "SEM_CUSTOM_SYMBOL") or trading_symbol,
            tick_size=max(tick_size, Decimal(0)),
            **common,
        )
    if tick_size <= 0:
        raise ValueError(f"{trading_symbol} has no tick size")
    if segment == "E":
        if kind != EQUITY_INSTRUMENT:
            return None
        series = _scrip_text(row, "SEM_SERIES").upper()
        # NSE names its non-EQ series in the symbol (SOMECO-BE), as Kite and our symbols do; BSE groups do not.
        has_series = exchange == "NSE" and series not in ("", NSE_EQUITY_SERIES, "NA", "X")
        return BrokerInstrument(
            instrument_type="EQ",
            tradingsymbol=f"{trading_symbol}-{series}" if has_series else trading_symbol,
            name=_scrip_text(row, "SM_SYMBOL_NAME") or _scrip_text(row, "SEM_CUSTOM_SYMBOL"),
            underlying=trading_symbol,
            tick_size=tick_size,
            **common,
        )
    if kind.startswith("FUT"):
        instrument_type, strike = "FUT", None
    elif kind.startswith("OPT"):
        instrument_type = _scrip_text(row, "SEM_OPTION_TYPE").upper()
        if instrument_type not in ("CE", "PE"):
            raise ValueError(f"{trading_symbol} is an option of type {instrument_type!r}")
        strike = _scrip_number(row, "SEM_STRIKE_PRICE").quantize(Decimal("0.01"))
        if strike <= 0:
            raise ValueError(f"{trading_symbol} is an option without a strike")
    else:
        return None
    expiry = _scrip_expiry(row)
    if expiry is None:
        raise ValueError(f"{trading_symbol} is a contract without an expiry")
    match = _CONTRACT_SYMBOL.match(trading_symbol)
    underlying = match.group("underlying") if match else _scrip_text(row, "SM_SYMBOL_NAME")
    if not underlying:
        raise ValueError(f"cannot tell the underlying of {trading_symbol}")
    return BrokerInstrument(
        instrument_type=instrument_type,
        tradingsymbol=trading_symbol,
        name=_scrip_text(row, "SEM_CUSTOM_SYMBOL"),
        underlying=underlying,
        expiry=expiry,
        strike=strike,
        tick_size=tick_size,
        **common,
    )


def instruments_from_scrip_master(lines: Iterable[str]) -> list[BrokerInstrument]:
    """Dhan's compact scrip master CSV, line by line, as the instruments we trade. Rows of segments we do not
    trade are skipped, and so are rows that cannot be read (both are counted in the log); a file without the
    required columns, or without a single instrument we trade, is InvalidInput."""
    reader = csv.DictReader(lines)
    header = [name.strip().lstrip("\ufeff") for name in (reader.fieldnames or [])]
    missing = [column for column in SCRIP_MASTER_REQUIRED_COLUMNS if column not in header]
    if missing:
        raise InvalidInput(f"Dhan's scrip master lacks the column(s) {', '.join(missing)}; is it the scrip master?")
    reader.fieldnames = header
    instruments: list[BrokerInstrument] = []
    skipped: Counter[str] = Counter()
    rows = 0
    for row in reader:
        rows += 1
        try:
            instrument = instrument_from_scrip_row(row)
        except (ValueError, ArithmeticError) as error:
            skipped["unreadable"] += 1
            if skipped["unreadable"] <= 5:
                logger.warning("Dhan scrip master line %d skipped: %s", reader.line_num, error)
            continue
        if instrument is None:
            skipped["not traded"] += 1
        else:
            instruments.append(instrument)
    if rows == 0:
        raise InvalidInput("Dhan's scrip master has a header but no rows.")
    if not instruments:
        raise InvalidInput(f"Dhan's scrip master lists none of the instruments we trade ({rows} rows read).")
    logger.info(
        "Dhan scrip master: %d instruments from %d rows; skipped %d not traded, %d unreadable.",
        len(instruments),
        rows,
        skipped["not traded"],
        skipped["unreadable"],
    )
    return instruments


def _guard_egress(session: requests.Session, proxy_url: str) -> requests.Session:
    """Every connection of `session` through the egress guard, and through the account's proxy when it has one."""
    session_guard(session, PublicProxyAdapter(proxy_url))
    if proxy_url:
        session.proxies = {"http": proxy_url, "https": proxy_url}
        # requests lets HTTP(S)_PROXY from the environment win over session proxies; the account's proxy must win.
        session.trust_env = False
    return session


def _decoded_lines(response: requests.Response) -> Iterator[str]:
    for raw in response.iter_lines():
        yield raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8", errors="replace")


def instrument_master_fetch(*, url: str = "", timeout: float = 60.0, proxy_url: str = "") -> list[BrokerInstrument]:
    """Downloads Dhan's published compact scrip master (a public CSV of some 200,000 rows; no login) and reads it
    as it streams in. `url` defaults to the DHAN_SCRIP_MASTER_URL setting. Network failures, timeouts and 5xx are
    BrokerUnavailable; a file that is not the scrip master, or is empty, is InvalidInput."""
    url = url or settings.DHAN_SCRIP_MASTER_URL
    with _guard_egress(requests.Session(), proxy_url) as session:
        try:
            with session.get(url, timeout=timeout, stream=True) as response:
                if response.status_code == 429:
                    raise BrokerRateLimited("Dhan's scrip master: too many downloads; try again shortly.")
                if response.status_code >= 500:
                    raise BrokerUnavailable(f"Dhan's scrip master is unavailable (HTTP {response.status_code}).")
                if response.status_code >= 400:
                    raise BrokerError(f"Dhan's scrip master could not be fetched (HTTP {response.status_code}).")
                return instruments_from_scrip_master(_decoded_lines(response))
        except requests.RequestException as error:
            raise BrokerUnavailable(f"Dhan's scrip master could not be downloaded ({type(error).__name__}).") from None
        except csv.Error as error:
            raise InvalidInput(f"Dhan's scrip master is not a readable CSV ({error}).") from None


# --- the adapter -------------------------------------------------------------------------------------------------


class DhanAdapter(BrokerAdapter):
    broker = "dhan"
    uses_oauth = False
    renews_sessions = True
    historical_max_span_days: ClassVar[dict[str, int]] = HISTORICAL_MAX_SPAN_DAYS
    _client: dhanhq | None = None  # built on first use, per adapter

    def __repr__(self) -> str:
        return f"<DhanAdapter account={self.account_ref} client_id={self._client_id or '?'}>"

    __str__ = __repr__

    # connection -----------------------------------------------------------------------------------------------

    @property
    def _client_id(self) -> str:
        return str(self.credentials.get("client_id") or (self.session.broker_user_id if self.session else "") or "")

    @property
    def _access_token(self) -> str:
        return (self.session.access_token if self.session else "") or str(self.credentials.get("access_token") or "")

    def _new_client(self, client_id: str, access_token: str) -> dhanhq:
        try:
            context = DhanContext(client_id, access_token)
            http = context.get_dhan_http()
        except Exception as error:  # DhanContext swallows its own failures and leaves a half-built context
            raise BrokerError(f"Could not set up the Dhan SDK ({type(error).__name__}).") from None
        if self.config.base_url:
            http.base_url = self.config.base_url.rstrip("/")
        http.timeout = self.config.timeout
        _guard_egress(http.session, self.config.proxy_url)
        return dhanhq(context)

    def _sdk(self) -> dhanhq:
        if self._client is None:
            if not self._client_id or not self._access_token:
                raise SessionExpired("Dhan needs a client id and an access token; connect the account again.")
            self._client = self._new_client(self._client_id, self._access_token)
        return self._client

    def _call(
        self,
        operation: str,
        call: Callable[[], Any],
        *,
        empty_codes: tuple[str, ...] = (),
        access_token: str | None = None,
    ) -> Any:
        """Runs one SDK call and returns its `data`, or raises the error its failure maps to; a failure with one of
        `empty_codes` is Dhan's way of saying 'nothing' and returns None. `access_token` (default: the session's) is
        scrubbed from every error."""
        try:
            response = call()
        except Exception as error:  # the SDK promises not to raise; if it does, its exception must not escape
            raise BrokerError(f"Dhan {operation} failed inside the SDK ({type(error).__name__}).") from None
        if not isinstance(response, dict):
            raise BrokerUnavailable(f"Dhan {operation}: the SDK returned no response.")
        if response.get("status") == "success":
            return response.get("data")
        remarks = response.get("remarks")
        if isinstance(remarks, dict) and remarks.get("error_code") in empty_codes:
            return None
        if isinstance(remarks, dict):
            error = error_for(remarks, operation=operation)
        else:  # transport failure, timeout, or a body that is not JSON (an HTML error page, say)
            error = BrokerUnavailable(f"Dhan {operation}: no usable answer ({str(remarks)[:200]}).")
        token = access_token if access_token is not None else self._access_token
        if token and token in error.detail:
            error.detail = error.detail.replace(token, "***")
            error.args = (error.detail,)
        raise error

    def _read(self, operation: str, parse: Callable[[Any], Any], data: Any) -> Any:
        """Parses a success body; a body of the wrong shape is treated like garbage on the wire."""
        try:
            return parse(data)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, InvalidOperation):
            raise BrokerUnavailable(f"Dhan {operation}: the answer was not in the expected shape.") from None

    def _read_list(self, operation: str, parse: Callable[[dict[str, Any]], Any], data: Any) -> list[Any]:
        if data in (None, ""):
            return []
        return self._read(operation, lambda rows: [parse(row) for row in rows], data)

    # login ------------------------------------------------------------------------------------------------------

    def complete_login(self, *, params: dict[str, str], redirect_uri: str) -> BrokerSession:
        """Dhan tokens are made by the user on Dhan's web; checking one is a fund-limit call that must succeed."""
        client_id = str(params.get("client_id") or self.credentials.get("client_id") or "")
        access_token = str(params.get("access_token") or self.credentials.get("access_token") or "")
        if not client_id or not access_token:
            raise InvalidInput("Dhan needs the client id and an access token generated on web.dhan.co.")
        client = self._new_client(client_id, access_token)
        self._call("token check", client.get_fund_limits, access_token=access_token)
        self.session = BrokerSession(access_token=access_token, broker_user_id=client_id)
        self._client = client
        return self.session

    def logout(self) -> None:
        """Dhan has no logout endpoint: a token lives until it expires or the user revokes it on Dhan's web."""

    def session_renew(self) -> BrokerSession:
        """GET /RenewToken: a new token for another 24 hours from the current, still valid one (Dhan web tokens last
        a day). The SDK offers this only as a bare `requests.get` without timeout or proxy, so it goes through a
        guarded session of ours with the account's timeout and proxy. An invalid or expired token is
        SessionExpired: the user must generate a new one on Dhan's web."""
        client_id, token = self._client_id, self._access_token
        if not client_id or not token:
            raise SessionExpired("Dhan needs a client id and an access token; connect the account again.")
        url = f"{(self.config.base_url or DhanHTTP.API_BASE_URL).rstrip('/')}/RenewToken"
        headers = {"access-token": token, "dhanClientId": client_id, "Accept": "application/json"}
        with _guard_egress(requests.Session(), self.config.proxy_url) as session:
            try:
                response = session.get(url, headers=headers, timeout=self.config.timeout)
            except requests.RequestException as error:
                raise BrokerUnavailable(f"Dhan token renewal: no answer ({type(error).__name__}).") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BrokerUnavailable(f"Dhan token renewal: an unreadable answer (HTTP {response.status_code}).")
        if response.status_code >= 400:
            error = self._renewal_error(response.status_code, body)
            if token in error.detail:
                error.detail = error.detail.replace(token, "***")
                error.args = (error.detail,)
            raise error
        new_token = str(body.get("accessToken") or body.get("token") or "")
        if not new_token:
            raise BrokerUnavailable("Dhan token renewal: the answer carried no token.")
        extra: dict[str, Any] = {}
        expires_at = _renewal_expiry(body.get("expiryTime"))
        if expires_at is not None:
            extra["expires_at"] = expires_at.isoformat()
        self.session = BrokerSession(
            access_token=new_token, broker_user_id=str(body.get("dhanClientId") or client_id), extra=extra
        )
        self._client = None  # the next call builds an SDK client with the new token
        return self.session

    @staticmethod
    def _renewal_error(status: int, body: dict[str, Any]) -> BrokerError:
        remarks = {
            "error_code": body.get("errorCode"),
            "error_type": body.get("errorType"),
            "error_message": body.get("errorMessage") or body.get("message"),
        }
        error = error_for(remarks, operation="token renewal")
        if status in (401, 403) and type(error) is BrokerError:
            return SessionExpired(error.detail)
        if status >= 500 and type(error) is BrokerError:
            return BrokerUnavailable(error.detail)
        if status == 429 and type(error) is BrokerError:
            return BrokerRateLimited(error.detail)
        return error

    # trading ----------------------------------------------------------------------------------------------------

    def place_order(self, request: OrderRequest) -> str:
        """Returns Dhan's order id. An order the exchange refuses (funds, holdings) still gets an id and shows up
        REJECTED with Dhan's reason in `status_message`; only a malformed request raises."""
        segment, security_id = dhan_instrument(request.symbol)
        if segment == INDEX_SEGMENT:
            raise InvalidInput(f"{request.symbol} is an index and cannot be traded.")
        if request.tag and not CORRELATION_ID.fullmatch(request.tag):
            raise InvalidInput("Dhan correlation ids are 1-30 letters, digits, spaces, '_' or '-'.")
        uses_price = request.order_type in (OrderType.LIMIT, OrderType.SL)
        uses_trigger = request.order_type in (OrderType.SL, OrderType.SL_M)
        sdk = self._sdk()
        data = self._call(
            "place order",
            lambda: sdk.place_order(
                security_id=security_id,
                exchange_segment=segment,
                transaction_type=SIDES[request.side],
                quantity=request.quantity,
                order_type=ORDER_TYPES[request.order_type],
                product_type=PRODUCTS[request.product],
                price=float(request.price or 0) if uses_price else 0,
                trigger_price=float(request.trigger_price or 0) if uses_trigger else 0,
                validity=VALIDITIES[request.validity],
                tag=request.tag or None,
            ),
        )
        return self._read("place order", lambda body: str(body["orderId"]), data)

    def modify_order(self, broker_order_id: str, request: ModifyRequest) -> None:
        """Dhan wants the whole order restated, so the fields not being changed come from the current order."""
        current = self.order(broker_order_id)
        order_type = request.order_type or current.order_type
        price = request.price if request.price is not None else current.price
        trigger_price = request.trigger_price if request.trigger_price is not None else current.trigger_price
        uses_price = order_type in (OrderType.LIMIT, OrderType.SL)
        uses_trigger = order_type in (OrderType.SL, OrderType.SL_M)
        sdk = self._sdk()
        self._call(
            "modify order",
            lambda: sdk.modify_order(
                order_id=broker_order_id,
                order_type=ORDER_TYPES[order_type],
                leg_name=None,
                quantity=request.quantity if request.quantity is not None else current.quantity,
                price=float(price or 0) if uses_price else 0,
                trigger_price=float(trigger_price or 0) if uses_trigger else 0,
                disclosed_quantity=0,
                validity=VALIDITIES[current.validity],
            ),
        )

    def cancel_order(self, broker_order_id: str) -> None:
        sdk = self._sdk()
        self._call("cancel order", lambda: sdk.cancel_order(broker_order_id))

    # reads ------------------------------------------------------------------------------------------------------

    def orders(self) -> list[BrokerOrder]:
        return self._read_list("order book", parse_order, self._call("order book", self._sdk().get_order_list))

    def order(self, broker_order_id: str) -> BrokerOrder:
        sdk = self._sdk()
        data = self._call("order lookup", lambda: sdk.get_order_by_id(url_quote(str(broker_order_id), safe="")))
        return self._read("order lookup", lambda body: parse_order(_first(body)), data)

    def orders_by_tag(self, tag: str) -> list[BrokerOrder]:
        if not tag:
            return []
        sdk = self._sdk()
        try:
            data = self._call(
                "order by correlation id", lambda: sdk.get_order_by_correlationID(url_quote(tag, safe=""))
            )
        except (InvalidInput, OrderRejected):  # Dhan answers an unknown correlation id with an error
            return []
        if not data:
            return []
        rows = data if isinstance(data, list) else [data]
        return self._read_list("order by correlation id", parse_order, rows)

    def trades(self) -> list[BrokerTrade]:
        return self._read_list("trade book", parse_trade, self._call("trade book", self._sdk().get_trade_book))

    def positions(self) -> list[BrokerPosition]:
        return self._read_list("positions", parse_position, self._call("positions", self._sdk().get_positions))

    def holdings(self) -> list[Holding]:
        data = self._call("holdings", self._sdk().get_holdings, empty_codes=(NO_HOLDINGS_CODE,))
        return self._read_list("holdings", parse_holding, data)

    def funds(self) -> Funds:
        return self._read("fund limits", parse_funds, self._call("fund limits", self._sdk().get_fund_limits))

    def quotes(self, symbols: list[str]) -> dict[str, Quote]:
        """One POST /marketfeed/quote for all symbols (Dhan allows one quote call a second)."""
        if not symbols:
            return {}
        wanted: dict[tuple[str, str], str] = {dhan_instrument(symbol): symbol for symbol in symbols}
        payload: dict[str, list[int]] = {}
        for segment, security_id in wanted:
            payload.setdefault(segment, []).append(int(security_id))
        sdk = self._sdk()
        data = self._call("quotes", lambda: sdk.quote_data(payload))
        return self._read("quotes", lambda body: self._quotes_from(body, wanted), data)

    def historical_candles(
        self, *, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[HistoricalCandle]:
        """POST /charts/intraday (1-minute candles, at most 90 days a request) or /charts/historical (daily
        candles, stamped 00:00 IST; `toDate` is exclusive). A range Dhan has no candles for is an empty list."""
        if interval not in HISTORICAL_MAX_SPAN_DAYS:
            wanted = ", ".join(HISTORICAL_MAX_SPAN_DAYS)
            raise InvalidInput(f"Dhan historical candles come as {wanted}; got {interval!r}.")
        if end <= start:
            return []
        segment, security_id = dhan_instrument(symbol)
        instrument = chart_instrument(symbol)
        with_oi = instrument not in (EQUITY_INSTRUMENT, INDEX_INSTRUMENT)
        sdk = self._sdk()
        if interval == "1m":
            # Minute-precise bounds in exchange time; candles outside [start, end) are dropped below.
            first, last = (moment.astimezone(IST).strftime(INTRADAY_TIME_FORMAT) for moment in (start, end))

            def call() -> Any:
                return sdk.intraday_minute_data(security_id, segment, instrument, first, last, interval=1, oi=with_oi)

        else:
            local_end = end.astimezone(IST)
            # toDate is exclusive: a range ending during a day must still cover that day.
            last_day = local_end.date() + timedelta(days=1 if local_end.time() != time(0) else 0)
            first = start.astimezone(IST).date().strftime(DAILY_DATE_FORMAT)
            last = last_day.strftime(DAILY_DATE_FORMAT)

            def call() -> Any:
                return sdk.historical_daily_data(security_id, segment, instrument, first, last, oi=with_oi)

        try:
            data = self._call("historical candles", call)
        except InvalidInput as error:
            if NO_DATA_MESSAGE in error.detail.lower():
                return []
            raise
        return self._read("historical candles", lambda body: parse_candles(body, start=start, end=end), data)

    @staticmethod
    def _quotes_from(body: dict[str, Any], wanted: dict[tuple[str, str], str]) -> dict[str, Quote]:
        by_segment = body["data"]
        result: dict[str, Quote] = {}
        for (segment, security_id), symbol in wanted.items():
            item = (by_segment.get(segment) or {}).get(security_id)
            if item:
                result[symbol] = parse_quote(symbol, item)
        return result
