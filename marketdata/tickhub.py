"""The tick hub: each web process hears every tick batch once and hands each /ws/market-data connection the symbols
it subscribed to.

A batch arrives as one message (distributed: one Redis PUBLISH on `ticks_channel()`, heard by one pub/sub connection
per process and event loop; embedded: `hubs_deliver_here` from the feed's thread). The hub looks up the connections
of each symbol in memory and offers each one the symbol's payload, rendered once per mode. A connection keeps only
the latest payload per symbol until its writer sends them, all together, as one `ticks` message: a client that reads
slowly gets fewer, fuller messages with the newest prices (conflation), never a growing backlog.

Why not the channel layer: it sends one Redis message per group per tick, and each connection receives its own
copy through its own Redis list, so the cost grows with subscribers times symbols. Here it grows with batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import weakref
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from marketdata import selectors
from marketdata.watched import symbols_watched_touch

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_SECONDS = 3.0
# What this process's sockets watch is noted for the market-data feed when first subscribed and again this often.
WATCHED_RENOTE_SECONDS = 600.0
_HEALTH_CHECK_SECONDS = 5.0
_RETRY_MIN_SECONDS, _RETRY_MAX_SECONDS = 0.5, 5.0
_COMPACT = (",", ":")


def ticks_channel() -> str:
    return f"{settings.REDIS_KEY_PREFIX}:ticks"


def tick_payload(encoded_quote: dict[str, Any], mode: str) -> dict[str, Any]:
    return selectors.ltp_payload(encoded_quote) if mode == "ltp" else selectors.quote_payload(encoded_quote)


class TickOutlet(Protocol):
    """A connection as the hub sees it: which mode each subscribed symbol is in, and where its ticks go."""

    modes: dict[str, str]

    def tick_offer(self, symbol: str, text: str, now: float) -> None: ...


class TickHubUnavailable(redis.exceptions.ConnectionError):
    """The hub could not subscribe to the tick bus in time: Redis is down, an outage like any other of Redis's."""


class TickHub:
    """The hub of one event loop. Only that loop's thread touches it."""

    def __init__(self) -> None:
        self.outlets_of: dict[str, set[TickOutlet]] = {}
        self.symbols_of: dict[TickOutlet, set[str]] = {}
        self.batches = 0
        self._watched_noted_at = time.monotonic()
        self._listener: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    # --- connections ------------------------------------------------------------------------------------------------

    async def attach(self, outlet: TickOutlet, symbols: list[str]) -> None:
        """From now on `outlet` is offered every tick of `symbols`; returns once this process hears the tick bus."""
        held = self.symbols_of.setdefault(outlet, set())
        first_here = [symbol for symbol in symbols if symbol not in self.outlets_of]
        for symbol in symbols:
            held.add(symbol)
            self.outlets_of.setdefault(symbol, set()).add(outlet)
        if first_here:
            # The broker feed follows what clients watch: noted off the loop, never awaited.
            asyncio.get_running_loop().run_in_executor(None, symbols_watched_touch, first_here)
        await self._listening()

    def detach(self, outlet: TickOutlet, symbols: list[str] | None = None) -> None:
        """Stop offering `symbols` (all of them when None) to `outlet`."""
        held = self.symbols_of.get(outlet, set())
        for symbol in list(held) if symbols is None else symbols:
            held.discard(symbol)
            outlets = self.outlets_of.get(symbol)
            if outlets is not None:
                outlets.discard(outlet)
                if not outlets:
                    del self.outlets_of[symbol]
        if symbols is None or not held:
            self.symbols_of.pop(outlet, None)
        if not self.symbols_of and self._listener is not None:
            # Nobody here listens: leave the bus (a process with no market-data sockets parses no ticks).
            self._listener.cancel()
            self._listener = None
            self._subscribed.clear()

    # --- ticks ------------------------------------------------------------------------------------------------------

    def deliver(self, batch: str | bytes | list[dict[str, Any]]) -> None:
        quotes = json.loads(batch) if isinstance(batch, str | bytes) else batch
        self.batches += 1
        now = time.monotonic()
        if now - self._watched_noted_at >= WATCHED_RENOTE_SECONDS and self.outlets_of:
            # Sockets held for days keep their symbols watched: noted again now and then, off the loop.
            self._watched_noted_at = now
            asyncio.get_running_loop().run_in_executor(None, symbols_watched_touch, list(self.outlets_of))
        outlets_of = self.outlets_of
        for quote in quotes:
            symbol = quote["symbol"]
            outlets = outlets_of.get(symbol)
            if not outlets:
                continue
            texts: dict[str, str] = {}
            for outlet in tuple(outlets):
                mode = outlet.modes.get(symbol, "ltp")
                text = texts.get(mode)
                if text is None:
                    text = texts[mode] = json.dumps(tick_payload(quote, mode), separators=_COMPACT)
                outlet.tick_offer(symbol, text, now)

    # --- the bus (distributed) --------------------------------------------------------------------------------------

    async def _listening(self) -> None:
        if settings.EMBEDDED:
            return  # the feed's thread calls hubs_deliver_here
        if self._listener is None or self._listener.done():
            self._subscribed.clear()
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="tick-hub")
        try:
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_TIMEOUT_SECONDS)
        except TimeoutError as error:
            raise TickHubUnavailable("The tick bus (Redis) did not answer.") from error

    async def _listen(self) -> None:
        """Hear the bus until cancelled, surviving Redis going away: resubscribe with backoff, then hand every
        connection the cached quotes of its symbols, so nobody keeps a price that moved while the bus was down."""
        retry, first = _RETRY_MIN_SECONDS, True
        while True:
            # No retries inside redis-py: a reconnection it made by itself would resubscribe without the catch-up.
            # The health check PINGs a quiet connection, so a peer that vanished without a reset is noticed.
            client = aioredis.Redis.from_url(
                settings.REDIS_URL,
                socket_connect_timeout=2,
                socket_keepalive=True,
                health_check_interval=_HEALTH_CHECK_SECONDS,
                retry=Retry(NoBackoff(), 0),
                client_name=f"{settings.REDIS_KEY_PREFIX}:tick-hub",  # operators can tell it in CLIENT LIST
            )
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(ticks_channel())
                self._subscribed.set()
                if not first:
                    await self._catch_up()
                first, retry = False, _RETRY_MIN_SECONDS
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_HEALTH_CHECK_SECONDS)
                    if message is None or message["type"] != "message":
                        continue
                    try:
                        self.deliver(message["data"])
                    except Exception:  # one bad batch must not end the hub
                        logger.exception("a tick batch could not be delivered")
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                first = False  # whatever was attached meanwhile gets the cached prices once the bus is back
                logger.warning("the tick bus dropped; resubscribing in %.1fs", retry, exc_info=True)
                await asyncio.sleep(retry)
                retry = min(_RETRY_MAX_SECONDS, retry * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _catch_up(self) -> None:
        from marketdata.quotes import quote_encode, quotes_get

        symbols = sorted(self.outlets_of)
        if symbols:
            quotes = await asyncio.to_thread(quotes_get, symbols)
            self.deliver([quote_encode(quote) for quote in quotes.values()])


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TickHub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def tick_hub() -> TickHub:
    """The running event loop's hub."""
    loop = asyncio.get_running_loop()
    with _hubs_lock:
        hub = _hubs.get(loop)
        if hub is None:
            hub = _hubs[loop] = TickHub()  # keyed weakly by its loop, so it holds no reference to it
        return hub


def hubs_deliver_here(batch: str) -> None:
    """Embedded: hand a batch to every hub of this process, each on its own loop."""
    with _hubs_lock:
        hubs = [(loop, hub) for loop, hub in _hubs.items() if hub.symbols_of]
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, hub in hubs:
        if loop is current:
            hub.deliver(batch)
            continue
        with contextlib.suppress(RuntimeError):  # that loop has closed
            loop.call_soon_threadsafe(hub.deliver, batch)
