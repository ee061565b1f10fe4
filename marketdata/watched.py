"""Which symbols `/ws/market-data` clients subscribed lately, so the market-data feed follows them too.

Each web process's tick hub notes a symbol when its first connection there subscribes to it (one sorted-set write,
scored by the time, off the event loop); the market-data supervisor reads the symbols noted within
MARKET_DATA_WATCHED_SECONDS. Embedded, where the web and the feed share a process, the note is a dict in the
in-process cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache

from algoterm.redis_client import redis_client

logger = logging.getLogger(__name__)

_CACHE_KEY = "marketdata:watched"
_local_lock = threading.Lock()


def _key() -> str:
    # Named like the cache's own keys, so whatever clears this deployment's cache clears it too.
    return cache.make_key(_CACHE_KEY)


def symbols_watched_touch(symbols: Iterable[str], *, now: float | None = None) -> None:
    """Note that clients watch `symbols` now. Never raises: a lost note costs a symbol the broker feed follows."""
    stamp = time.time() if now is None else now
    scores = dict.fromkeys(symbols, stamp)
    if not scores:
        return
    if settings.EMBEDDED:
        oldest = stamp - settings.MARKET_DATA_WATCHED_SECONDS
        with _local_lock:
            noted = {symbol: at for symbol, at in (cache.get(_CACHE_KEY) or {}).items() if at >= oldest}
            cache.set(_CACHE_KEY, {**noted, **scores}, timeout=None)
        return
    try:
        client = redis_client(settings.REDIS_URL)
        pipe = client.pipeline(transaction=False)
        pipe.zadd(_key(), scores)
        # Old notes go, so the set stays the size of what is watched.
        pipe.zremrangebyscore(_key(), "-inf", stamp - settings.MARKET_DATA_WATCHED_SECONDS)
        pipe.execute()
    except Exception:
        logger.warning("could not note watched symbols", exc_info=True)


def symbols_watched(*, since: float) -> list[str]:
    """Symbols watched at or after `since` (epoch seconds), most recent first."""
    if settings.EMBEDDED:
        noted = cache.get(_CACHE_KEY) or {}
        recent = [(stamp, symbol) for symbol, stamp in noted.items() if stamp >= since]
        return [symbol for _, symbol in sorted(recent, reverse=True)]
    try:
        members = redis_client(settings.REDIS_URL).zrevrangebyscore(_key(), "+inf", since)
    except Exception:
        logger.warning("could not read watched symbols", exc_info=True)
        return []
    return [member.decode() if isinstance(member, bytes) else member for member in members]
