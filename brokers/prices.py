"""The simulated exchange's price source: the latest quote in the market-data cache, else a synthetic one.

Quotes live in the market-data quote cache (Redis in production), so the web, worker, feed and simulator processes
see the same prices. `quote_publish` is how a test or the demo moves one price; feeds publish through the tick bus.

Market data stands above brokers, so it plugs its quote cache and tick bus in here (`price_source_register`, from
`MarketDataConfig.ready()`) rather than brokers importing it. Asking for a price while none is registered is an error,
never a silent fall back to synthetic prices for every symbol.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from django.core.exceptions import ImproperlyConfigured

from brokers.protocol import Quote

TICK = Decimal("0.05")

# Rough levels so the demo looks like the market; anything else gets a stable price from its name.
REFERENCE_PRICES = {
    "NSE:NIFTY 50": Decimal("24350"),
    "NSE:NIFTY BANK": Decimal("52400"),
    "NSE:RELIANCE": Decimal("1290"),
    "NSE:INFY": Decimal("1890"),
    "NSE:TCS": Decimal("4150"),
    "NSE:HDFCBANK": Decimal("1740"),
    "NSE:ICICIBANK": Decimal("1290"),
    "NSE:SBIN": Decimal("820"),
    "NSE:ITC": Decimal("470"),
    "NSE:TATAMOTORS": Decimal("780"),
}


def to_tick(value: Decimal) -> Decimal:
    return ((value / TICK).quantize(Decimal("1"), rounding=ROUND_HALF_UP) * TICK).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class PriceSource:
    """Where the market's prices live: the latest quote of a symbol (None when none is cached), the way a batch of
    quotes becomes the market (answering the fills it caused), and more reference levels for synthetic quotes (the
    demo universe's, so its indices and stocks look like the market too)."""

    quote_get: Callable[[str], Quote | None]
    quotes_publish: Callable[[list[Quote]], int]
    reference_levels: Mapping[str, Decimal] = field(default_factory=dict)


_source: PriceSource | None = None


def price_source_register(source: PriceSource) -> None:
    global _source
    _source = source


def _price_source() -> PriceSource:
    if _source is None:
        raise ImproperlyConfigured("No price source is registered; market data registers its quote cache when ready.")
    return _source


def reference_price(symbol: str) -> Decimal | None:
    return REFERENCE_PRICES.get(symbol) or (_source.reference_levels.get(symbol) if _source is not None else None)


def _seed(symbol: str) -> int:
    return int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16)


def synthetic_quote(symbol: str, *, at: float | None = None) -> Quote:
    """A stable, slowly wandering quote derived from the symbol and the clock (no randomness between processes)."""
    seed = _seed(symbol)
    base = reference_price(symbol) or Decimal(100 + seed % 2900)
    now = time.time() if at is None else at
    drift = Decimal(str(round(0.004 * math.sin(now / 300 + seed % 97), 6)))
    last = to_tick(base * (1 + drift))
    depth = 500 + seed % 4500
    return Quote(
        symbol=symbol,
        last_price=last,
        bid=last - TICK,
        ask=last + TICK,
        bid_quantity=depth,
        ask_quantity=depth,
        volume=100_000 + seed % 900_000,
        open=to_tick(base),
        high=max(last, to_tick(base)),
        low=min(last, to_tick(base)),
        close=to_tick(base),
        timestamp=datetime.fromtimestamp(now, tz=UTC),
    )


def quote_for(symbol: str) -> Quote:
    """The market for `symbol`: the quote cache (fed by the market-data feeds), else the synthetic walk."""
    return _price_source().quote_get(symbol) or synthetic_quote(symbol)


def quote_publish(quote: Quote) -> int:
    """Make `quote` the market for its symbol (through the tick bus); returns the fills it caused."""
    return _price_source().quotes_publish([quote])


def quote_at(symbol: str, last_price: Decimal | str, *, depth: int = 1000, spread_ticks: int = 1) -> Quote:
    """A quote around `last_price` (for publishing in tests, the demo and simulator control routes)."""
    last = to_tick(Decimal(str(last_price)))
    half = TICK * spread_ticks
    return Quote(
        symbol=symbol,
        last_price=last,
        bid=last - half,
        ask=last + half,
        bid_quantity=depth,
        ask_quantity=depth,
        timestamp=datetime.now(tz=UTC),
    )
