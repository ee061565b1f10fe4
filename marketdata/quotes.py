"""The quote cache: the latest quote per symbol, shared by every process (Redis; in-process when embedded).

Feeds write it through `marketdata.ticks.ticks_publish`; everything else reads it here. Distributed, the cache is one
Redis hash (symbol -> the quote as JSON text), written with one HSET per tick batch: the same text then travels on the
tick bus, so a quote is encoded once. Embedded, it is the in-process cache, one key per symbol.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache

from algoterm.redis_client import redis_client
from brokers.protocol import Quote

_PREFIX = "quote:"
_HASH = "quotes"
_TTL_SECONDS = 3 * 24 * 3600  # a quote no feed has renewed for this long is forgotten
QUOTES_KEPT = timedelta(seconds=_TTL_SECONDS)
_DECIMAL_FIELDS = ("last_price", "bid", "ask", "open", "high", "low", "close")


def _key(symbol: str) -> str:
    # Cache keys must not hold spaces ("NSE:NIFTY 50").
    return f"{_PREFIX}{symbol.replace(' ', '_')}"


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def quote_encode(quote: Quote) -> dict[str, Any]:
    """The quote in JSON-ready form (decimals as strings, the timestamp in ISO 8601). Field by field:
    `dataclasses.asdict` deep-copies, which cost more than the rest of the tick path."""
    timestamp = quote.timestamp
    return {
        "symbol": quote.symbol,
        "last_price": str(quote.last_price),
        "bid": _decimal_text(quote.bid),
        "ask": _decimal_text(quote.ask),
        "bid_quantity": quote.bid_quantity,
        "ask_quantity": quote.ask_quantity,
        "volume": quote.volume,
        "open": _decimal_text(quote.open),
        "high": _decimal_text(quote.high),
        "low": _decimal_text(quote.low),
        "close": _decimal_text(quote.close),
        "timestamp": None if timestamp is None else timestamp.isoformat(),
        "oi": quote.oi,
        "oi_change": quote.oi_change,
    }


def quote_decode(data: dict[str, Any]) -> Quote:
    data = dict(data)
    for name in _DECIMAL_FIELDS:
        if data.get(name) is not None:
            data[name] = Decimal(data[name])
    if data.get("timestamp"):
        data["timestamp"] = datetime.fromisoformat(data["timestamp"])
    return Quote(**data)


def quote_text(encoded: dict[str, Any]) -> str:
    return json.dumps(encoded, separators=(",", ":"))


def _shared_hash() -> str | None:
    """The Redis hash's key when quotes live in Redis; None when embedded (the in-process cache)."""
    return None if settings.EMBEDDED else cache.make_key(_HASH)


def quote_get(symbol: str) -> Quote | None:
    return quotes_get([symbol]).get(symbol)


def quotes_get(symbols: list[str]) -> dict[str, Quote]:
    """The cached quotes among `symbols` (missing ones are left out)."""
    if not symbols:
        return {}
    shared = _shared_hash()
    if shared is None:
        found = cache.get_many([_key(symbol) for symbol in symbols])
        by_key = {_key(symbol): symbol for symbol in symbols}
        return {by_key[key]: quote_decode(data) for key, data in found.items()}
    texts = redis_client(settings.REDIS_URL).hmget(shared, symbols)
    return {symbol: quote_decode(json.loads(text)) for symbol, text in zip(symbols, texts, strict=True) if text}


def quotes_store(encoded: list[dict[str, Any]], texts: list[str]) -> None:
    """Write encoded quotes (and their JSON texts, in the same order) in one round trip."""
    if not encoded:
        return
    shared = _shared_hash()
    if shared is None:
        cache.set_many({_key(quote["symbol"]): quote for quote in encoded}, timeout=_TTL_SECONDS)
        return
    pipe = redis_client(settings.REDIS_URL).pipeline(transaction=False)
    pipe.hset(shared, mapping={quote["symbol"]: text for quote, text in zip(encoded, texts, strict=True)})
    pipe.expire(shared, _TTL_SECONDS)  # a deployment whose feed stopped for good forgets its prices, as keys did
    pipe.execute()


def quotes_prune(*, older_than: datetime) -> int:
    """Forget the quotes last stamped before `older_than` (expired contracts, instruments no feed quotes any more):
    what each key's expiry does by itself in the embedded cache. Returns how many were forgotten."""
    shared = _shared_hash()
    if shared is None:
        return 0
    client = redis_client(settings.REDIS_URL)
    stale = []
    for symbol, text in client.hscan_iter(shared, count=1000):
        stamped = json.loads(text).get("timestamp")
        if stamped and datetime.fromisoformat(stamped) < older_than:
            stale.append(symbol)
    for start in range(0, len(stale), 1000):
        client.hdel(shared, *stale[start : start + 1000])
    return len(stale)


def quotes_put(quotes: list[Quote]) -> None:
    encoded = [quote_encode(quote) for quote in quotes]
    quotes_store(encoded, [quote_text(quote) for quote in encoded])
