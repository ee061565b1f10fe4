"""Live ticks from Zerodha's Kite ticker through the `kiteconnect` SDK's `KiteTicker`.

Twisted's reactor can run only once per process and cannot be restarted, so every KiteFeed in a process shares one
reactor, started on first use in a daemon thread ("twisted-reactor") and never stopped; each `stream` call opens a
fresh `KiteTicker` connection on it. The SDK's own reconnection is switched off (`reconnect_max_tries=0`):
reconnecting is `Feed.run`'s job (backoff with jitter, stop-aware, the same for every broker), and each new
connection subscribes to the feed's current symbols in `on_open`, so a reconnect is also a resubscribe.

Threads: the reactor thread only parses frames (the SDK does) and queues tick batches and order updates; the thread
running `stream` converts ticks to Quotes and publishes them, and hands the connecting user's order updates
(postback-like dicts) to `on_order_update`, so a slow publish or database write never stalls the socket. A feed
built for an account announces them as `kite_order_update_received`, which the orders app applies.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from brokers.instruments import by_symbol
from brokers.models import Broker, BrokerAccount
from brokers.protocol import BrokerUnavailable, InvalidInput, Quote, SessionExpired
from marketdata.feeds.base import BrokerFeed
from marketdata.signals import kite_order_update_received

logger = logging.getLogger(__name__)

MODES = ("ltp", "quote", "full")
CENTS = Decimal("0.01")
CONNECT_TIMEOUT_SECONDS = 15
_POLL_SECONDS = 0.2
# How autobahn reports a refused WebSocket upgrade: "upgrade failed (403 - Forbidden)" in old releases (19.x),
# "upgrade failed [403]: Forbidden" in current ones.
_HANDSHAKE_REFUSED = re.compile(r"upgrade failed [(\[]403\b")

_reactor_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None


def shared_reactor():
    """The process's Twisted reactor, running in a daemon thread (started on first call)."""
    global _reactor_thread
    from twisted.internet import reactor  # importing the reactor installs it: only when a Kite feed runs

    with _reactor_lock:
        if _reactor_thread is None and not reactor.running:
            _reactor_thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, name="twisted-reactor", daemon=True
            )
            _reactor_thread.start()
    deadline = time.monotonic() + 5
    while not reactor.running:
        if time.monotonic() > deadline or (_reactor_thread is not None and not _reactor_thread.is_alive()):
            raise RuntimeError("Twisted's reactor is not running (it cannot be restarted once stopped)")
        time.sleep(0.01)
    return reactor


def _decimal(value: Any) -> Decimal | None:
    # The SDK has already divided the integer paise by 100 into a float; str() gives back the shortest decimal that
    # round-trips, which for n/100 is exactly n/100.
    if value is None:
        return None
    price = Decimal(str(value))
    return price.quantize(CENTS) if price.as_tuple().exponent > -2 else price


def _nonzero(value: Any) -> Decimal | None:
    price = _decimal(value)
    return price if price else None


def _aware(value: datetime | None) -> datetime | None:
    # The SDK builds exchange times with naive `datetime.fromtimestamp` (local time); astimezone reads them as local.
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo is None else value


def quote_from_tick(symbol: str, tick: dict[str, Any]) -> Quote:
    """One `KiteTicker` tick dict (any mode) as our Quote."""
    last_price = _decimal(tick["last_price"]) or Decimal(0)
    received_at = datetime.now(tz=UTC)
    if tick.get("mode") == "ltp":
        return Quote(symbol=symbol, last_price=last_price, timestamp=received_at)
    ohlc = tick.get("ohlc") or {}
    depth = tick.get("depth") or {}
    best_bid = (depth.get("buy") or [{}])[0]
    best_ask = (depth.get("sell") or [{}])[0]
    bid, ask = _nonzero(best_bid.get("price")), _nonzero(best_ask.get("price"))
    return Quote(
        symbol=symbol,
        last_price=last_price,
        bid=bid,
        ask=ask,
        bid_quantity=int(best_bid.get("quantity") or 0) if bid else 0,
        ask_quantity=int(best_ask.get("quantity") or 0) if ask else 0,
        volume=int(tick.get("volume_traded") or 0),
        open=_nonzero(ohlc.get("open")),
        high=_nonzero(ohlc.get("high")),
        low=_nonzero(ohlc.get("low")),
        close=_nonzero(ohlc.get("close")),
        timestamp=_aware(tick.get("exchange_timestamp")) or received_at,
        oi=int(tick.get("oi") or 0),
    )


class KiteFeed(BrokerFeed):
    """Ticks for `symbols` from one Zerodha account's ticker connection (Kite allows 3 per API key)."""

    source = "kite"
    modes = MODES
    url_setting = "KITE_TICKER_URL"
    default_url = "wss://ws.kite.trade"
    connect_timeout_seconds = CONNECT_TIMEOUT_SECONDS

    def __init__(
        self,
        *,
        api_key: str,
        access_token: str,
        symbols: list[str],
        mode: str = "full",
        on_order_update: Callable[[dict[str, Any]], None] | None = None,
        **feed_options: Any,
    ) -> None:
        super().__init__(mode=mode, **feed_options)
        if not api_key or not access_token:
            raise SessionExpired("The Zerodha account has no access token; log in again.")
        self.api_key = api_key
        self._access_token = access_token
        self.on_order_update = on_order_update
        self._tokens: dict[int, str] = {}  # instrument token -> symbol
        self._ticker = None  # the live KiteTicker, touched only on the reactor thread
        self._add_tokens(symbols)

    def __repr__(self) -> str:
        return f"<KiteFeed api_key={self.api_key} symbols={len(self._tokens)} mode={self.mode}>"

    @classmethod
    def from_account(cls, account: BrokerAccount, symbols: list[str], **options: Any) -> KiteFeed:
        if account.broker != Broker.ZERODHA:
            raise InvalidInput(f"A Kite feed needs a Zerodha account; {account} is {account.broker}.")

        def order_update_apply(data: dict[str, Any]) -> None:
            kite_order_update_received.send(sender=cls, account_id=account.pk, data=data)

        options.setdefault("on_order_update", order_update_apply)
        return cls(
            api_key=str(account.credentials.get("api_key") or ""),
            access_token=str(account.session.get("access_token") or ""),
            symbols=symbols,
            **options,
        )

    # --- what to follow ------------------------------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(self._tokens.values())

    def _add_tokens(self, symbols: list[str]) -> list[int]:
        wanted = {}
        for symbol in symbols:
            instrument = by_symbol(symbol)  # may read the instrument master: outside the lock
            if instrument is None or not instrument.kite_token:
                raise InvalidInput(f"{symbol} has no Kite instrument token in the instrument table.")
            wanted[instrument.kite_token] = symbol
        with self._lock:
            added = [token for token in wanted if token not in self._tokens]
            self._tokens.update({token: wanted[token] for token in added})
        return added

    def subscribe(self, symbols: list[str]) -> None:
        """Follow more symbols, now on the live connection and on every reconnect."""
        tokens = self._add_tokens(symbols)
        if tokens:

            def follow(ticker) -> None:
                ticker.subscribe(tokens)
                ticker.set_mode(self.mode, tokens)

            self._on_reactor(follow)

    def unsubscribe(self, symbols: list[str]) -> None:
        instruments = [by_symbol(symbol) for symbol in symbols]
        with self._lock:
            tokens = [
                instrument.kite_token
                for instrument in instruments
                if instrument is not None and self._tokens.pop(instrument.kite_token, None) is not None
            ]
        if tokens:
            self._on_reactor(lambda ticker: ticker.unsubscribe(tokens))

    def _on_reactor(self, action) -> None:
        from twisted.internet import reactor  # importing the reactor installs it: only when a Kite feed runs

        def run() -> None:
            ticker = self._ticker
            if ticker is not None and ticker.is_connected():
                action(ticker)

        reactor.callFromThread(run)

    # --- streaming -----------------------------------------------------------------------------------------------

    def stream(self, stop: threading.Event) -> None:
        from kiteconnect import KiteTicker  # the Kite SDK's ticker: loaded only when a Kite feed runs

        reactor = shared_reactor()
        batches: queue.Queue[list[dict[str, Any]]] = queue.Queue()
        order_updates: queue.Queue[dict[str, Any]] = queue.Queue()
        opened, closed = threading.Event(), threading.Event()
        close_reasons: list[str] = []

        ticker = KiteTicker(
            self.api_key,
            self._access_token,
            root=self.url,
            reconnect_max_tries=0,
            connect_timeout=max(1, int(self.connect_timeout)),
        )

        def on_open(ws) -> None:
            self._ticker = ws
            self.connections_opened += 1
            with self._lock:
                tokens = list(self._tokens)
            if tokens:
                ws.subscribe(tokens)
                ws.set_mode(self.mode, tokens)
            opened.set()

        def on_close(ws, code, reason) -> None:
            close_reasons.append(f"{code} {reason}")
            closed.set()

        def on_noreconnect(ws) -> None:
            close_reasons.append("connection failed")
            closed.set()

        ticker.on_open = on_open
        ticker.on_ticks = lambda ws, ticks: batches.put(ticks)
        if self.on_order_update is not None:
            ticker.on_order_update = lambda ws, data: order_updates.put(data)
        ticker.on_close = on_close
        ticker.on_noreconnect = on_noreconnect
        reactor.callFromThread(ticker.connect, threaded=True)

        try:
            connect_deadline = time.monotonic() + self.connect_timeout
            while not stop.is_set():
                try:
                    self._publish_ticks(batches.get(timeout=_POLL_SECONDS))
                except queue.Empty:
                    pass
                self._apply_order_updates(order_updates)
                if closed.is_set():
                    while not batches.empty():
                        self._publish_ticks(batches.get_nowait())
                    self._apply_order_updates(order_updates)
                    raise self._failure(close_reasons)
                if not opened.is_set() and time.monotonic() > connect_deadline:
                    raise BrokerUnavailable("The Kite ticker did not open in time.")
        finally:
            self._ticker = None
            reactor.callFromThread(ticker.close)
            closed.wait(2)

    @staticmethod
    def _failure(close_reasons: list[str]) -> Exception:
        reason = "; ".join(close_reasons) or "closed"
        # Kite refuses a bad or expired token at the handshake with HTTP 403; retrying the same token cannot help.
        if _HANDSHAKE_REFUSED.search(reason):
            return SessionExpired("Kite refused the ticker connection: the access token is invalid or expired.")
        return BrokerUnavailable(f"The Kite ticker connection dropped ({reason}).")

    def _apply_order_updates(self, updates: queue.Queue[dict[str, Any]]) -> None:
        while not updates.empty():
            data = updates.get_nowait()
            try:
                self.on_order_update(data)
            except Exception:  # one bad order update must not stop the ticks
                logger.exception("Kite ticker order update failed")

    def _publish_ticks(self, ticks: list[dict[str, Any]]) -> None:
        quotes = []
        for tick in ticks:
            token = tick.get("instrument_token")
            with self._lock:
                symbol = self._tokens.get(token)
            if symbol is None:  # a tick in flight when we unsubscribed
                continue
            quotes.append(quote_from_tick(symbol, tick))
        if quotes:
            self.publish(quotes)
