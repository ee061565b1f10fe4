"""The quote cache: the latest quote per symbol, shared by every process (Redis; in-process when embedded).

Feeds write it through `marketdata.ticks.ticks_publish`; everything else reads it here.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal

from django.core.cache import cache

from brokers.protocol import Quote

_PREFIX = "quote:"
_TTL_SECONDS = 3 * 24 * 3600
_DECIMAL_FIELDS = ("last_price", "bid", "ask", "open", "high", "low", "close")


def _key(symbol: str) -> str:
    # Cache keys must not hold spaces ("NSE:NIFTY 50").
    return f"{_PREFIX}{symbol.replace(' ', '_')}"


def _encode(quote: Quote) -> dict:
    data = asdict(quote)
    for name in _DECIMAL_FIELDS:
        if data[name] is not None:
            data[name] = str(data[name])
    if data["timestamp"] is not None:
        data["timestamp"] = data["timestamp"].isoformat()
    return data


def _decode(data: dict) -> Quote:
    data = dict(data)
    for name in _DECIMAL_FIELDS:
        if data.get(name) is not None:
            data[name] = Decimal(data[name])
    if data.get("timestamp"):
        data["timestamp"] = datetime.fromisoformat(data["timestamp"])
    return Quote(**data)


def quote_get(symbol: str) -> Quote | None:
    data = cache.get(_key(symbol))
    return _decode(data) if data else None


def quotes_get(symbols: list[str]) -> dict[str, Quote]:
    """The cached quotes among `symbols` (missing ones are left out)."""
    found = cache.get_many([_key(symbol) for symbol in symbols])
    by_key = {_key(symbol): symbol for symbol in symbols}
    return {by_key[key]: _decode(data) for key, data in found.items()}


def quotes_put(quotes: list[Quote]) -> None:
    cache.set_many({_key(quote.symbol): _encode(quote) for quote in quotes}, timeout=_TTL_SECONDS)
