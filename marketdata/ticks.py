"""The tick bus: one call takes a batch of fresh quotes to every consumer of market data.

`ticks_publish` updates the quote cache, lets the simulated exchange fill resting paper orders the new prices
cross, announces the moved symbols (`marketdata.signals.ticks_published`: tick-driven RMS listens) and fans the ticks
out to the `/ws/market-data` groups (one group per symbol).
"""

from __future__ import annotations

import hashlib
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from brokers.protocol import Quote
from brokers.services import paper_orders_match
from marketdata.quotes import _encode, quotes_put
from marketdata.signals import ticks_published

logger = logging.getLogger(__name__)


def symbol_group(symbol: str) -> str:
    """Channel group names allow only [A-Za-z0-9._-]; symbols have ':', spaces and '&' (NSE:M&M)."""
    return f"md.{hashlib.sha1(symbol.encode()).hexdigest()[:24]}"


def tick_message(quote: Quote) -> dict:
    return {"type": "md.tick", "symbol": quote.symbol, "quote": _encode(quote)}


async def ticks_fan_out(quotes: list[Quote]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for quote in quotes:
        await layer.group_send(symbol_group(quote.symbol), tick_message(quote))


def ticks_publish(quotes: list[Quote], *, fan_out: bool = True) -> int:
    """Returns how many paper/simulator orders the ticks filled."""
    if not quotes:
        return 0
    quotes_put(quotes)
    try:
        fills = paper_orders_match(symbols=[quote.symbol for quote in quotes])
    except Exception:  # one bad order must not stop ticks reaching subscribers and candles
        logger.exception("matching resting orders failed")
        fills = 0
    # Listeners are best effort: a tick must reach its subscribers whatever happens in them.
    ticks_published.send_robust(sender=ticks_publish, symbols=[quote.symbol for quote in quotes])
    if fan_out:
        try:
            async_to_sync(ticks_fan_out)(quotes)
        except Exception:  # subscribers are best effort; the cache and the exchange have the ticks already
            logger.exception("tick fan-out failed")
    return fills
