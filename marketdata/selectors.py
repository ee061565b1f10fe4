"""Market-data reads for a user: instruments, last prices, quotes and candles.

Every user sees the same market today; `user` is taken so plans can gate segments and depth later.
A symbol is known when the instrument master lists it or a feed has quoted it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import F, FloatField, Func, Q, QuerySet, Window
from django.db.models.functions import Cast, RowNumber, TruncDate

from algoterm.api.errors import AppError, ErrorCode, NotFound, ValidationFailed
from brokers.protocol import Quote
from marketdata.calendar import IST
from marketdata.candles import MINUTE, CandleBar, candles_get, candles_span_check
from marketdata.models import Candle, Instrument, InstrumentType
from marketdata.quotes import quote_encode, quote_get, quotes_get

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
    return quote_payload(quote_encode(quote))


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


# --- derivative contracts and stored 1-minute candles, as the strategies' live engine and backtests read them ---

DERIVATIVE_TYPES = (InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE)


def instrument_derivatives_exist(*, underlying: str) -> bool:
    """Whether the instrument master lists any future or option of `underlying` (active or not)."""
    return Instrument.objects.filter(underlying=underlying, instrument_type__in=DERIVATIVE_TYPES).exists()


def instrument_derivative_lot_size(*, underlying: str) -> int | None:
    """The lot size of `underlying`'s derivatives: an active contract's, the latest expiry's first."""
    return (
        Instrument.objects.filter(underlying=underlying, instrument_type__in=DERIVATIVE_TYPES)
        .order_by("-is_active", "-expiry")
        .values_list("lot_size", flat=True)
        .first()
    )


def _active_contracts(*, underlying: str, instrument_types: Sequence[str], expiring_from: date) -> QuerySet[Instrument]:
    return Instrument.objects.filter(
        underlying=underlying, instrument_type__in=instrument_types, expiry__gte=expiring_from, is_active=True
    )


def instrument_contract_expiries(
    *, underlying: str, instrument_types: Sequence[str], expiring_from: date
) -> list[date]:
    """The expiries, oldest first, of `underlying`'s active contracts of `instrument_types` expiring on or after
    `expiring_from`."""
    contracts = _active_contracts(underlying=underlying, instrument_types=instrument_types, expiring_from=expiring_from)
    return list(contracts.order_by("expiry").values_list("expiry", flat=True).distinct())


def instrument_contract_list(
    *, underlying: str, instrument_types: Sequence[str], expiring_from: date, expiry: date
) -> list[Instrument]:
    """`underlying`'s active contracts of `instrument_types` expiring on `expiry` (none if that precedes
    `expiring_from`), by symbol."""
    contracts = _active_contracts(underlying=underlying, instrument_types=instrument_types, expiring_from=expiring_from)
    return list(contracts.filter(expiry=expiry))


class _EpochSeconds(Func):
    """A datetime column as Unix seconds, computed by the database, so no datetime objects are built per row."""

    # date_part gives float8 directly; EXTRACT gives numeric (PostgreSQL 14+), slower to compute and convert.
    template = "date_part('epoch', %(expressions)s)"
    output_field = FloatField()

    def as_sqlite(self, compiler, connection, **extra_context):
        # SQLite (embedded mode) keeps UTC datetimes as text, which julianday reads; the Unix epoch is day 2440587.5.
        return self.as_sql(
            compiler,
            connection,
            template="ROUND((julianday(%(expressions)s) - 2440587.5) * 86400.0)",
            **extra_context,
        )


def _float(name: str) -> Cast:
    return Cast(name, FloatField())


_CANDLE_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


def _ist_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=IST)


def _candle_rows(candles: QuerySet[Candle], *leading: Any, volume: bool = True) -> QuerySet:
    """Rows of `leading` columns, then start (epoch seconds), open, high, low, close and volume, all floats."""
    prices = _CANDLE_PRICE_COLUMNS if volume else _CANDLE_PRICE_COLUMNS[:-1]
    return candles.values_list(*leading, _EpochSeconds("start"), *(_float(name) for name in prices))


def minute_candle_rows(*, symbol: str, since: date, until: date, volume: bool = False) -> list[tuple[float, ...]]:
    """`symbol`'s 1-minute candles of the IST days since..until, oldest first, as (start in epoch seconds, open,
    high, low, close[, volume]) floats: one query, for callers that load them straight into arrays."""
    rows = _candle_rows(
        Candle.objects.filter(
            symbol=symbol,
            interval=MINUTE,
            start__gte=_ist_midnight(since),
            start__lt=_ist_midnight(until + timedelta(days=1)),
        ).order_by("start"),
        volume=volume,
    )
    # Every column already arrives as a float, so the rows are fetched as the driver returns them, without
    # Django's per-value converters: a year of minutes is ~0.5 million values.
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _candle_days_portable(days: Sequence[tuple[str, date]]) -> list[tuple[Any, ...]]:
    """(symbol, start epoch, open, high, low, close, volume) of each (symbol, IST day), by symbol and start."""
    days_of_symbols = Q(
        *(
            Q(symbol=symbol, start__gte=_ist_midnight(day), start__lt=_ist_midnight(day + timedelta(days=1)))
            for symbol, day in days
        ),
        _connector=Q.OR,
    )
    return list(
        _candle_rows(Candle.objects.filter(days_of_symbols, interval=MINUTE).order_by("symbol", "start"), "symbol")
    )


def _candle_days_postgresql(days: Sequence[tuple[str, date]]) -> list[tuple[Any, ...]]:
    """The same rows as `_candle_days_portable`, joined against the days as arrays: one short statement whatever
    their number, where Django would compile hundreds of OR-ed lookups."""
    sql = (
        "SELECT candle.symbol, date_part('epoch', candle.start), candle.open::float8, candle.high::float8, "
        "candle.low::float8, candle.close::float8, candle.volume::float8 "
        "FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS wanted(symbol, since, until) "
        f"JOIN {connection.ops.quote_name(Candle._meta.db_table)} AS candle ON candle.symbol = wanted.symbol "
        "AND candle.interval = %s AND candle.start >= wanted.since AND candle.start < wanted.until "
        "ORDER BY candle.symbol, candle.start"
    )
    params = [
        [symbol for symbol, _ in days],
        [_ist_midnight(day) for _, day in days],
        [_ist_midnight(day + timedelta(days=1)) for _, day in days],
        MINUTE,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def minute_candle_day_rows(*, days: Sequence[tuple[str, date]]) -> list[tuple[Any, ...]]:
    """(symbol, start in epoch seconds, open, high, low, close, volume) of the 1-minute candles of each (symbol, IST
    day), by symbol and start, in one query. SQLite bounds the parameters of a query: ask for a few hundred days at
    a time."""
    fetch = _candle_days_postgresql if connection.vendor == "postgresql" else _candle_days_portable
    return fetch(days)


def minute_candle_last_prices(
    *, asks: Sequence[tuple[Sequence[str], date, datetime]]
) -> list[tuple[str, float, float, float]]:
    """For each ask (symbols, IST day, moment): each symbol's last 1-minute candle of that day starting at or
    before the moment, as (symbol, start in epoch seconds, open, close); none for a symbol without one. One query,
    ranking candles per symbol and IST day, so the asks of one query must be of different days."""
    asked = Q(
        *(Q(symbol__in=symbols, start__gte=_ist_midnight(day), start__lte=moment) for symbols, day, moment in asks),
        _connector=Q.OR,
    )
    latest = (
        Candle.objects.filter(asked, interval=MINUTE)
        .annotate(
            recency=Window(
                RowNumber(),
                partition_by=[F("symbol"), TruncDate("start", tzinfo=IST)],
                order_by=F("start").desc(),
            )
        )
        .filter(recency=1)
        .values_list("symbol", _EpochSeconds("start"), _float("open"), _float("close"))
    )
    return list(latest)


def instrument_listed_symbols(*, limit: int) -> list[str]:
    """The active indices and stocks of the instrument master (what every feed follows), by symbol, at most
    `limit`."""
    listed = Instrument.objects.filter(
        is_active=True, instrument_type__in=[InstrumentType.INDEX, InstrumentType.EQ]
    ).order_by("symbol")
    return list(listed.values_list("symbol", flat=True)[:limit])


def instrument_underlyings(*, symbols: list[str]) -> dict[str, str]:
    """Each known symbol's underlying (its trading symbol where it has none, as for a stock); unknown symbols are
    left out."""
    rows = Instrument.objects.filter(symbol__in=symbols).values_list("symbol", "underlying", "tradingsymbol")
    return {symbol: underlying or tradingsymbol for symbol, underlying, tradingsymbol in rows}


def instrument_master_count() -> int:
    """How many instruments the master holds (0 before the first load)."""
    return Instrument.objects.count()


def instrument_active_list(*, exchange: str | None = None) -> QuerySet[Instrument]:
    """The active instruments of the master, in primary-key order, optionally of one exchange."""
    instruments = Instrument.objects.filter(is_active=True).order_by("pk")
    return instruments.filter(exchange=exchange) if exchange else instruments


def candle_history_exists(*, symbol: str, interval: str, before: datetime) -> bool:
    """Whether any stored candle of this symbol and interval starts before the moment."""
    return Candle.objects.filter(symbol=symbol, interval=interval, start__lt=before).exists()
