"""The simulated exchange's price source: the latest quote in the market-data cache, else a synthetic one.

Quotes live in the market-data quote cache (Redis in production), so the web, worker, feed and simulator processes
see the same prices. `quote_publish` is how a test or the demo moves one price; feeds publish through the tick bus.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from brokers.adapters.base import Quote

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


@lru_cache(maxsize=1)
def _demo_levels() -> dict[str, Decimal]:
    """The demo universe's reference levels, so its indices and stocks look like the market too."""
    from marketdata.instruments import DEMO_INDICES, DEMO_STOCKS

    levels = {index.symbol: index.level for index in DEMO_INDICES}
    levels.update({f"NSE:{stock.tradingsymbol}": stock.level for stock in DEMO_STOCKS})
    return levels


def reference_price(symbol: str) -> Decimal | None:
    return REFERENCE_PRICES.get(symbol) or _demo_levels().get(symbol)


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
    from marketdata.quotes import quote_get

    return quote_get(symbol) or synthetic_quote(symbol)


def quote_publish(quote: Quote) -> int:
    """Make `quote` the market for its symbol (through the tick bus); returns the fills it caused."""
    from marketdata.ticks import ticks_publish

    return ticks_publish([quote])


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
