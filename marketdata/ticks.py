"""The tick bus: one call takes a batch of fresh quotes to every consumer of market data.

`ticks_publish` encodes each quote once, writes the batch to the quote cache in one round trip, lets the simulated
exchange fill resting paper orders the new prices cross, announces the moved symbols
(`marketdata.signals.ticks_published`: tick-driven RMS listens) and fans the batch out to the web processes as one
message (`ticks_fan_out`): distributed, one Redis PUBLISH that every web process's tick hub hears
(`marketdata.tickhub`); embedded, straight to the hubs of this process. The hubs, not Redis, split a batch into what
each connection subscribed to.
"""

from __future__ import annotations

import logging

from django.conf import settings

from algoterm.redis_client import redis_client
from brokers.protocol import Quote
from brokers.services import paper_orders_match
from marketdata.quotes import quote_encode, quote_text, quotes_store
from marketdata.signals import ticks_published
from marketdata.tickhub import hubs_deliver_here, ticks_channel

logger = logging.getLogger(__name__)


def ticks_fan_out(texts: list[str]) -> None:
    """Send a batch of quotes (each as `quote_text` made it) to every web process's tick hub, as one message."""
    if not texts:
        return
    batch = "[" + ",".join(texts) + "]"
    if settings.EMBEDDED:
        hubs_deliver_here(batch)
        return
    redis_client(settings.REDIS_URL).publish(ticks_channel(), batch)


def ticks_publish(quotes: list[Quote], *, fan_out: bool = True) -> int:
    """Returns how many paper/simulator orders the ticks filled."""
    if not quotes:
        return 0
    encoded = [quote_encode(quote) for quote in quotes]
    texts = [quote_text(quote) for quote in encoded]
    quotes_store(encoded, texts)
    symbols = [quote["symbol"] for quote in encoded]
    try:
        fills = paper_orders_match(symbols=symbols)
    except Exception:  # one bad order must not stop ticks reaching subscribers and candles
        logger.exception("matching resting orders failed")
        fills = 0
    # Listeners are best effort: a tick must reach its subscribers whatever happens in them.
    ticks_published.send_robust(sender=ticks_publish, symbols=symbols)
    if fan_out:
        try:
            ticks_fan_out(texts)
        except Exception:  # subscribers are best effort; the cache and the exchange have the ticks already
            logger.exception("tick fan-out failed")
    return fills
