"""Live ticks from Dhan's v2 market feed through the `dhanhq` SDK's `MarketFeed`.

The SDK builds the feed URL from the class attribute `MarketFeed.market_feed_wss`, so pointing it elsewhere would
change every feed in the process. `RoutedMarketFeed` instead overrides `connect` per instance: same v2 query
(`version=2&token&clientId&authType=2`), our URL, a bounded handshake; subscribing, parsing and unsubscribing stay
the SDK's. It also keeps the reason code of Dhan's disconnection packet, which the SDK only prints.

Reconnecting is `Feed.run`'s job (the SDK's `run` loop retries every second forever and swallows errors): every
`stream` call opens a new MarketFeed subscribed to the feed's current symbols, so a reconnect is a resubscribe.
`stream` drives the SDK's event loop one receive at a time and publishes between receives, with no loop running,
because the tick bus uses `async_to_sync`, which refuses to run inside a running loop on its own thread.

Dhan sends each instrument's previous close (and previous OI) once on subscription and, in quote mode, OI in
packets of its own, so the feed keeps the latest state per symbol and publishes it merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import threading
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import websockets
from dhanhq import DhanContext
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from brokers.adapters.dhan import dhan_instrument
from brokers.models import Broker, BrokerAccount
from brokers.protocol import BrokerUnavailable, InvalidInput, Quote, SessionExpired
from marketdata.feeds.base import BrokerFeed

if TYPE_CHECKING:
    from dhanhq.marketfeed import MarketFeed

logger = logging.getLogger(__name__)

# Request codes of Dhan's v2 feed, by our mode name.
MODES = {"ticker": 15, "quote": 17, "full": 21}
DISCONNECT_REQUEST = 12
# `MarketFeed`'s numeric exchange segments (its IDX, NSE, NSE_FNO ... constants) by Dhan's segment name.
SEGMENT_CODES = {
    "IDX_I": 0,
    "NSE_EQ": 1,
    "NSE_FNO": 2,
    "NSE_CURRENCY": 3,
    "BSE_EQ": 4,
    "MCX_COMM": 5,
    "BSE_CURRENCY": 7,
    "BSE_FNO": 8,
}
# Disconnection reasons after which retrying with the same credentials cannot help.
AUTH_FAILURES = {
    806: "the account has no data API subscription",
    807: "the access token has expired",
    808: "the client id is invalid",
    809: "authentication failed",
}
CONNECT_TIMEOUT_SECONDS = 15
_POLL_SECONDS = 0.2


def routed_market_feed_class() -> type[MarketFeed]:
    from dhanhq.marketfeed import MarketFeed  # the Dhan SDK's feed: loaded only when a Dhan feed runs

    class RoutedMarketFeed(MarketFeed):
        """The SDK's MarketFeed, connecting to `url` instead of the class-wide `market_feed_wss`."""

        def __init__(self, dhan_context: Any, instruments: list[tuple], *, url: str, open_timeout: float) -> None:
            super().__init__(dhan_context, instruments, version="v2")
            self.url = url
            self.open_timeout = open_timeout
            self.disconnect_reason: int | None = None

        async def connect(self) -> None:
            query = urlencode({"version": 2, "token": self.access_token, "clientId": self.client_id, "authType": 2})
            self.ws = await websockets.connect(f"{self.url}?{query}", open_timeout=self.open_timeout)
            await self.subscribe_instruments()

        def server_disconnection(self, data: bytes) -> dict[str, Any]:
            self.disconnect_reason = struct.unpack_from("<H", data, 8)[0]
            return {"type": "Disconnection", "reason": self.disconnect_reason}

    return RoutedMarketFeed


def _price(value: Any) -> Decimal | None:
    """The SDK formats Dhan's float32 prices as '%.2f' strings; zero means 'not sent'."""
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return price if price else None


class DhanFeed(BrokerFeed):
    """Ticks for `symbols` from one Dhan account's market-feed connection (Dhan allows 5 per user)."""

    source = "dhan"
    modes = MODES
    url_setting = "DHAN_FEED_URL"
    default_url = "wss://api-feed.dhan.co"
    connect_timeout_seconds = CONNECT_TIMEOUT_SECONDS

    def __init__(
        self,
        *,
        client_id: str,
        access_token: str,
        symbols: list[str],
        mode: str = "full",
        **feed_options: Any,
    ) -> None:
        super().__init__(mode=mode, **feed_options)
        if not client_id or not access_token:
            raise SessionExpired("The Dhan account has no client id or access token; connect it again.")
        self.client_id = client_id
        self._access_token = access_token
        self._instruments: dict[tuple[int, str], str] = {}  # (segment code, security id) -> symbol
        self._live: MarketFeed | None = None
        self._latest: dict[str, Quote] = {}
        self._previous: dict[str, tuple[Decimal | None, int]] = {}  # symbol -> (previous close, previous OI)
        self._open_interest: dict[str, int] = {}
        self._add(symbols)

    def __repr__(self) -> str:
        return f"<DhanFeed client_id={self.client_id} symbols={len(self._instruments)} mode={self.mode}>"

    @classmethod
    def from_account(cls, account: BrokerAccount, symbols: list[str], **options: Any) -> DhanFeed:
        if account.broker != Broker.DHAN:
            raise InvalidInput(f"A Dhan feed needs a Dhan account; {account} is {account.broker}.")
        session, credentials = account.session, account.credentials
        return cls(
            client_id=str(credentials.get("client_id") or session.get("broker_user_id") or account.client_id or ""),
            access_token=str(session.get("access_token") or credentials.get("access_token") or ""),
            symbols=symbols,
            **options,
        )

    # --- what to follow ------------------------------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(self._instruments.values())

    @staticmethod
    def _key(symbol: str) -> tuple[int, str]:
        segment, security_id = dhan_instrument(symbol)
        if not security_id:
            raise InvalidInput(f"{symbol} has no Dhan security id in the instrument table.")
        return SEGMENT_CODES[segment], str(security_id)

    def _add(self, symbols: list[str]) -> list[tuple]:
        wanted = {self._key(symbol): symbol for symbol in symbols}  # may read the instrument master: outside the lock
        with self._lock:
            added = [key for key in wanted if key not in self._instruments]
            self._instruments.update({key: wanted[key] for key in added})
        return [(*key, MODES[self.mode]) for key in added]

    def _subscriptions(self) -> list[tuple]:
        with self._lock:
            return [(*key, MODES[self.mode]) for key in self._instruments]

    def subscribe(self, symbols: list[str]) -> None:
        """Follow more symbols, now on the live connection and on every reconnect."""
        added = self._add(symbols)
        live = self._live
        if added and live is not None:
            live.subscribe_symbols(added)

    def unsubscribe(self, symbols: list[str]) -> None:
        keys = [self._key(symbol) for symbol in symbols]
        with self._lock:
            removed = [(*key, MODES[self.mode]) for key in keys if self._instruments.pop(key, None) is not None]
        live = self._live
        if removed and live is not None:
            live.unsubscribe_symbols(removed)

    # --- streaming -----------------------------------------------------------------------------------------------

    def stream(self, stop: threading.Event) -> None:
        """Sets and then clears the calling thread's asyncio event loop (the SDK's doing): call it from a thread
        that runs no other loop, as `run` in the feed's own thread does."""
        market_feed = routed_market_feed_class()(
            DhanContext(self.client_id, self._access_token),
            self._subscriptions(),
            url=self.url,
            open_timeout=self.connect_timeout,
        )
        loop = market_feed.loop
        self._live = market_feed  # symbols followed while the handshake runs go out with the first subscription
        try:
            loop.run_until_complete(self._open(market_feed))
            self.connections_opened += 1
            while not stop.is_set():
                packet = loop.run_until_complete(self._next_packet(market_feed))
                if market_feed.disconnect_reason is not None:
                    raise self._disconnected(market_feed.disconnect_reason)
                if isinstance(packet, dict):
                    quote = self._apply(packet)
                    if quote is not None:
                        self.publish([quote])
        finally:
            self._live = None
            if market_feed.ws is not None:
                loop.run_until_complete(self._close(market_feed))
            loop.close()
            asyncio.set_event_loop(None)  # MarketFeed made its loop this thread's current one

    async def _open(self, market_feed: MarketFeed) -> None:
        try:
            await market_feed.connect()
        except InvalidStatus as error:
            if error.response.status_code in (401, 403):
                raise SessionExpired("Dhan refused the market feed connection: log in again.") from None
            raise BrokerUnavailable(f"Dhan's market feed answered HTTP {error.response.status_code}.") from None
        except ConnectionClosed:
            # Dhan accepts the handshake and then says why it is hanging up; that packet may already be waiting.
            try:
                await asyncio.wait_for(market_feed.get_instrument_data(), 1)
            except (ConnectionClosed, TimeoutError):
                pass
            raise self._disconnected(market_feed.disconnect_reason) from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise BrokerUnavailable(f"Could not reach Dhan's market feed ({type(error).__name__}).") from None

    @staticmethod
    async def _close(market_feed: MarketFeed) -> None:
        # The SDK's `disconnect` does the same but prints to stdout.
        with contextlib.suppress(Exception):
            await market_feed.ws.send(json.dumps({"RequestCode": DISCONNECT_REQUEST}))
        await market_feed.ws.close()

    async def _next_packet(self, market_feed: MarketFeed) -> Any:
        try:
            return await asyncio.wait_for(market_feed.get_instrument_data(), _POLL_SECONDS)
        except TimeoutError:
            return None
        except ConnectionClosed as error:
            raise BrokerUnavailable(f"Dhan's market feed connection dropped ({error}).") from None

    @staticmethod
    def _disconnected(reason: int | None) -> Exception:
        if reason in AUTH_FAILURES:
            return SessionExpired(f"Dhan closed the market feed: {AUTH_FAILURES[reason]} ({reason}).")
        return BrokerUnavailable(f"Dhan closed the market feed (reason {reason}).")

    # --- packets to quotes ---------------------------------------------------------------------------------------

    def _apply(self, packet: dict[str, Any]) -> Quote | None:
        """Fold one parsed packet into the symbol's state; the merged Quote when it carries a new price or OI."""
        with self._lock:
            symbol = self._instruments.get((int(packet.get("exchange_segment", -1)), str(packet.get("security_id"))))
        if symbol is None:  # not ours, or a packet in flight when we unsubscribed
            return None
        kind = packet.get("type")
        if kind == "Previous Close":
            self._previous[symbol] = (_price(packet.get("prev_close")), int(packet.get("prev_OI") or 0))
            return None
        if kind == "OI Data":
            self._open_interest[symbol] = int(packet.get("OI") or 0)
            fields: dict[str, Any] = {}
        elif kind == "Ticker Data":
            fields = {"last_price": _price(packet.get("LTP"))}
        elif kind in ("Quote Data", "Full Data"):
            fields = {
                "last_price": _price(packet.get("LTP")),
                "volume": int(packet.get("volume") or 0),
                "open": _price(packet.get("open")),
                "high": _price(packet.get("high")),
                "low": _price(packet.get("low")),
                "close": _price(packet.get("close")),
            }
            if kind == "Full Data":
                self._open_interest[symbol] = int(packet.get("OI") or 0)
                best = (packet.get("depth") or [{}])[0]
                fields["bid"], fields["ask"] = _price(best.get("bid_price")), _price(best.get("ask_price"))
                fields["bid_quantity"] = int(best.get("bid_quantity") or 0) if fields["bid"] else 0
                fields["ask_quantity"] = int(best.get("ask_quantity") or 0) if fields["ask"] else 0
        else:
            return None
        latest = self._latest.get(symbol)
        day_close = fields.pop("close", None)
        if fields.get("last_price") is None:
            fields.pop("last_price", None)
            if latest is None:
                return None
        previous_close, previous_oi = self._previous.get(symbol, (None, 0))
        open_interest = self._open_interest.get(symbol, 0)
        quote = replace(
            latest or Quote(symbol=symbol, last_price=fields["last_price"]),
            **fields,
            oi=open_interest,
            oi_change=open_interest - previous_oi if open_interest and previous_oi else 0,
            # Dhan's day close is 0 while the market is open; Quote.close is the previous close, as on Kite.
            close=previous_close or day_close or (latest.close if latest else None),
            # The SDK keeps only the time of day of Dhan's last trade time, so a tick is stamped when it arrives.
            timestamp=datetime.now(tz=UTC),
        )
        self._latest[symbol] = quote
        return quote
