"""Market-data reads for a user: instruments, last prices, quotes and candles.

Every user sees the same market today; `user` is taken so plans can gate segments and depth later.
A symbol is known when the instrument master lists it or a feed has quoted it.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet

from algoterm.api.errors import AppError, ErrorCode, NotFound, ValidationFailed
from brokers.adapters.base import Quote
from marketdata.candles import CandleBar, candles_get, candles_span_check
from marketdata.models import Candle, Instrument
from marketdata.quotes import _encode, quote_get, quotes_get

MAX_SYMBOLS_PER_REQUEST = 100


_SYMBOL = re.compile(r"^[A-Z]{2,5}:[^\x00-\x1f\x7f]{1,58}$")


def symbol_normalize(symbol: str) -> str:
    """`nse:infy ` -> `NSE:INFY`; anything that cannot be a symbol is a 400 before it reaches the database."""
    normalized = symbol.strip().upper()
    if not _SYMBOL.match(normalized):
        raise ValidationFailed(errors={"symbol": [f"Not a symbol: {normalized[:64]!r}; symbols look like NSE:INFY."]})
    return normalized


def symbols_unknown(*, symbols: list[str], quoted: set[str] | None = None) -> list[str]:
    """Those of `symbols` that neither the instrument master nor the quote cache knows."""
    quoted = set(quotes_get(symbols)) if quoted is None else quoted
    remaining = [symbol for symbol in symbols if symbol not in quoted]
    if not remaining:
        return []
    listed = set(Instrument.objects.filter(symbol__in=remaining).values_list("symbol", flat=True))
    return [symbol for symbol in remaining if symbol not in listed]


def ltp_get(*, user, symbol: str) -> Quote:
    """The latest quote of a symbol: 404 when nobody knows it, 503 when it is listed but no feed has quoted it."""
    quote = quote_get(symbol)
    if quote is not None:
        return quote
    if Instrument.objects.filter(symbol=symbol).exists():
        raise AppError(
            f"No price for {symbol} yet; the market-data feed has not quoted it.", code=ErrorCode.SERVICE_UNAVAILABLE
        )
    raise NotFound(f"Unknown symbol {symbol}.")


def quotes_list(*, user, symbols: list[str]) -> tuple[dict[str, Quote], list[str]]:
    """The cached quotes among `symbols`, and the symbols without one (unknown, or not quoted yet)."""
    quotes = quotes_get(symbols)
    return quotes, [symbol for symbol in symbols if symbol not in quotes]


def candles_list(*, user, symbol: str, interval: str, start: datetime, end: datetime) -> list[CandleBar]:
    candles_span_check(interval=interval, start=start, end=end)
    if symbols_unknown(symbols=[symbol]) and not Candle.objects.filter(symbol=symbol).exists():
        raise NotFound(f"Unknown symbol {symbol}.")
    return candles_get(symbol=symbol, interval=interval, start=start, end=end)


def _number(value: str | Decimal | None) -> float | None:
    return None if value is None else float(value)


def quote_payload(encoded: dict[str, Any]) -> dict[str, Any]:
    """How the API shows a quote (REST and WebSocket alike), from the quote cache's encoding of it."""
    ltp = Decimal(encoded["last_price"])
    close = Decimal(encoded["close"]) if encoded.get("close") else None
    change = ltp - close if close else None
    return {
        "symbol": encoded["symbol"],
        "ltp": float(ltp),
        "bid": _number(encoded.get("bid")),
        "ask": _number(encoded.get("ask")),
        "bid_quantity": encoded.get("bid_quantity", 0),
        "ask_quantity": encoded.get("ask_quantity", 0),
        "volume": encoded.get("volume", 0),
        "open": _number(encoded.get("open")),
        "high": _number(encoded.get("high")),
        "low": _number(encoded.get("low")),
        "close": _number(close),
        "change": None if change is None else float(change),
        "change_percent": None if change is None else float(round(change / close * 100, 2)),
        "oi": encoded.get("oi", 0),
        "oi_change": encoded.get("oi_change", 0),
        "timestamp": encoded.get("timestamp"),
    }


def ltp_payload(encoded: dict[str, Any]) -> dict[str, Any]:
    return {"symbol": encoded["symbol"], "ltp": float(encoded["last_price"]), "timestamp": encoded.get("timestamp")}


def quote_render(quote: Quote) -> dict[str, Any]:
    return quote_payload(_encode(quote))


def instrument_list(
    *,
    user,
    search: str = "",
    exchange: str = "",
    instrument_type: str = "",
    underlying: str = "",
    expiry: date | None = None,
    include_inactive: bool = False,
) -> QuerySet[Instrument]:
    """Instruments matching every given filter; `search` looks in symbol, tradingsymbol and name, ignoring case."""
    instruments = Instrument.objects.all()
    if not include_inactive:
        instruments = instruments.filter(is_active=True)
    if search:
        instruments = instruments.filter(
            Q(symbol__icontains=search) | Q(tradingsymbol__icontains=search) | Q(name__icontains=search)
        )
    if exchange:
        instruments = instruments.filter(exchange=exchange.upper())
    if instrument_type:
        instruments = instruments.filter(instrument_type=instrument_type.upper())
    if underlying:
        instruments = instruments.filter(underlying=underlying.upper())
    if expiry is not None:
        instruments = instruments.filter(expiry=expiry)
    return instruments.order_by("symbol")
