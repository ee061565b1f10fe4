"""Dhan's v2 live market feed (WebSocket) as `dhanhq.MarketFeed` expects it.

The client connects to `ws://HOST:PORT?version=2&token=..&clientId=..&authType=2`. Requests are JSON text frames
`{"RequestCode": 15|17|21, "InstrumentCount": n, "InstrumentList": [{"ExchangeSegment": "NSE_EQ", "SecurityId":
"1594"}]}` (ticker, quote, full; the code + 1 unsubscribes; 12 disconnects). Responses are binary, one packet per
frame, little-endian, each starting with an 8-byte header (uint8 response code, uint16 packet length, uint8 segment,
int32 security id): 2 ticker (16 bytes), 4 quote (50), 5 OI (12), 6 previous close (16), 8 full (162),
50 disconnection (10, with a uint16 reason: 805 too many connections, 806 data plan, 807 token expired,
808 invalid client id, 809 authentication failed). An unknown token is accepted at the handshake, then told 809
(808 for a known token with another client id) and closed. Subscribing in quote or full mode first sends the
previous close packet; quote mode sends OI in a packet of its own.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection

from algoterm.sandbox.simulators.kite_ticker import ThreadedWebSocketServer
from brokers.adapters.dhan import dhan_instrument, symbol_from_dhan
from brokers.prices import quote_for
from brokers.protocol import Quote

TICKER, QUOTE, FULL = 15, 17, 21
UNSUBSCRIBE = {TICKER + 1: TICKER, QUOTE + 1: QUOTE, FULL + 1: FULL}
DISCONNECT_REQUEST = 12

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
SEGMENT_NAMES = {code: name for name, code in SEGMENT_CODES.items()}

TICKER_PACKET, QUOTE_PACKET, OI_PACKET, PREV_CLOSE_PACKET, FULL_PACKET, DISCONNECT_PACKET = 2, 4, 5, 6, 8, 50
TOO_MANY_CONNECTIONS, TOKEN_EXPIRED, INVALID_CLIENT_ID, AUTHENTICATION_FAILED = 805, 807, 808, 809
DEPTH_LEVELS = 5


def _f(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


def _epoch(value: datetime | None) -> int:
    return int((value or datetime.now(tz=UTC)).timestamp())


def _header(code: int, length: int, segment: int, security_id: int) -> bytes:
    return struct.pack("<BHBI", code, length, segment, security_id)


def ticker_packet(segment: int, security_id: int, quote: Quote) -> bytes:
    return _header(TICKER_PACKET, 16, segment, security_id) + struct.pack(
        "<fI", _f(quote.last_price), _epoch(quote.timestamp)
    )


def previous_close_packet(segment: int, security_id: int, previous_close: Decimal, previous_oi: int) -> bytes:
    return _header(PREV_CLOSE_PACKET, 16, segment, security_id) + struct.pack("<fI", _f(previous_close), previous_oi)


def oi_packet(segment: int, security_id: int, oi: int) -> bytes:
    return _header(OI_PACKET, 12, segment, security_id) + struct.pack("<I", oi)


def _trade_fields(quote: Quote) -> tuple:
    # LTP, last traded quantity, last trade time, average price, volume, total sell quantity, total buy quantity
    return (
        _f(quote.last_price),
        1,
        _epoch(quote.timestamp),
        _f(quote.last_price),
        quote.volume,
        quote.ask_quantity,
        (quote.bid_quantity),
    )


def quote_packet(segment: int, security_id: int, quote: Quote) -> bytes:
    # The day's close stays 0 while the market is open; the previous close comes in its own packet.
    return _header(QUOTE_PACKET, 50, segment, security_id) + struct.pack(
        "<fHIfIIIffff", *_trade_fields(quote), _f(quote.open), 0.0, _f(quote.high), _f(quote.low)
    )


def full_packet(segment: int, security_id: int, quote: Quote) -> bytes:
    body = struct.pack(
        "<fHIfIIIIIIffff",
        *_trade_fields(quote),
        quote.oi,
        quote.oi,
        quote.oi,
        _f(quote.open),
        0.0,
        _f(quote.high),
        _f(quote.low),
    )
    tick = Decimal("0.05")
    for level in range(DEPTH_LEVELS):
        bid = quote.bid - level * tick if quote.bid else None
        ask = quote.ask + level * tick if quote.ask else None
        body += struct.pack(
            "<IIHHff",
            quote.bid_quantity if bid else 0,
            quote.ask_quantity if ask else 0,
            1 if bid else 0,
            1 if ask else 0,
            _f(bid),
            _f(ask),
        )
    return _header(FULL_PACKET, 162, segment, security_id) + body


def disconnect_packet(reason: int) -> bytes:
    return _header(DISCONNECT_PACKET, 10, 0, 0) + struct.pack("<H", reason)


PACKETS_BY_MODE: dict[int, Callable[[int, int, Quote], bytes]] = {
    TICKER: ticker_packet,
    QUOTE: quote_packet,
    FULL: full_packet,
}


@dataclass
class FeedClient:
    connection: ServerConnection
    client_id: str
    modes: dict[tuple[int, int], int] = field(default_factory=dict)  # (segment, security id) -> request code


class DhanFeedSimulator(ThreadedWebSocketServer):
    """Dhan's v2 market feed on 127.0.0.1. `stream_interval` streams every subscription from `price_source` (default
    `brokers.prices.quote_for`, the shared market) that often (None: only what `push` sends). Tokens are those
    registered with `register_token`, plus whatever `authorize` maps to a client id. `previous_closes[symbol] =
    (price, oi)` overrides the previous-day close sent on subscription (default: the price source's close, OI 0)."""

    def __init__(
        self,
        *,
        port: int = 0,
        stream_interval: float | None = None,
        price_source: Callable[[str], Quote] | None = None,
        max_connections_per_client: int = 5,
        authorize: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(port=port)
        self.authorize = authorize  # access token -> its client id (None: unknown), e.g. the REST simulator's
        self.stream_interval = stream_interval
        self.price_source = price_source
        self.max_connections_per_client = max_connections_per_client
        self.previous_closes: dict[str, tuple[Decimal, int]] = {}
        self.clients: dict[ServerConnection, FeedClient] = {}
        self.subscribe_requests = 0  # every subscribe frame received, resubscriptions included
        self._tokens: dict[str, str] = {}  # access token -> client id
        self._tokens_lock = threading.Lock()

    # --- credentials ---------------------------------------------------------------------------------------------

    def register_token(self, client_id: str, access_token: str) -> None:
        with self._tokens_lock:
            self._tokens[access_token] = client_id

    def revoke_tokens(self) -> None:
        with self._tokens_lock:
            self._tokens.clear()

    def _refusal_reason(self, params: dict[str, str]) -> int | None:
        with self._tokens_lock:
            client_id = self._tokens.get(params.get("token", ""))
        if client_id is None and self.authorize is not None:
            client_id = self.authorize(params.get("token", ""))
        if client_id is None:
            return AUTHENTICATION_FAILED
        if client_id != params.get("clientId"):
            return INVALID_CLIENT_ID
        open_for_client = sum(1 for client in self.clients.values() if client.client_id == client_id)
        if open_for_client >= self.max_connections_per_client:
            return TOO_MANY_CONNECTIONS
        return None

    # --- one connection ------------------------------------------------------------------------------------------

    async def serve_client(self, connection: ServerConnection) -> None:
        params = {name: values[0] for name, values in parse_qs(urlsplit(connection.request.path).query).items()}
        refusal = self._refusal_reason(params)
        if refusal is not None:
            await connection.send(disconnect_packet(refusal))
            await connection.close()
            return
        streaming = self._stream if self.stream_interval is not None else None
        await self.serve_requests(
            connection, FeedClient(connection, params["clientId"]), frames=str, apply=self._apply, background=streaming
        )

    async def _apply(self, client: FeedClient, message: str) -> bool:
        """Apply one request; False when the client asked to disconnect."""
        try:
            request = json.loads(message)
            code = int(request["RequestCode"])
        except (ValueError, KeyError, TypeError):
            return True
        if code == DISCONNECT_REQUEST:
            return False
        wanted = []
        for item in request.get("InstrumentList") or []:
            segment = SEGMENT_CODES.get(str(item.get("ExchangeSegment")))
            try:
                security_id = int(item.get("SecurityId"))
            except (TypeError, ValueError):
                continue
            if segment is not None:
                wanted.append((segment, security_id))
        if code in PACKETS_BY_MODE:
            self.subscribe_requests += 1
            # Like Dhan, the previous close goes out before any tick of the new subscription.
            if code in (QUOTE, FULL):
                for segment, security_id in wanted:
                    packet = await self._previous_close_packet(segment, security_id)
                    if packet is not None:
                        await client.connection.send(packet)
            for key in wanted:
                client.modes[key] = code
        elif code in UNSUBSCRIBE:
            for key in wanted:
                if client.modes.get(key) == UNSUBSCRIBE[code]:
                    del client.modes[key]
        return True

    def _symbol(self, segment: int, security_id: int) -> str | None:
        try:
            return symbol_from_dhan(SEGMENT_NAMES[segment], security_id)
        except Exception:
            return None

    async def _previous_close_packet(self, segment: int, security_id: int) -> bytes | None:
        symbol = self._symbol(segment, security_id)
        if symbol is None:
            return None
        if symbol in self.previous_closes:
            close, oi = self.previous_closes[symbol]
        else:
            quote = await asyncio.to_thread(self._source(), symbol)
            close, oi = quote.close or quote.last_price, 0
        return previous_close_packet(segment, security_id, close, oi)

    def _source(self) -> Callable[[str], Quote]:
        return self.price_source or quote_for

    async def _stream(self, client: FeedClient) -> None:
        while True:
            await asyncio.sleep(self.stream_interval or 1.0)
            for (segment, security_id), code in list(client.modes.items()):
                symbol = self._symbol(segment, security_id)
                if symbol is not None:
                    quote = await asyncio.to_thread(self._source(), symbol)
                    for packet in self._packets(segment, security_id, quote, code):
                        await client.connection.send(packet)

    @staticmethod
    def _packets(segment: int, security_id: int, quote: Quote, code: int) -> list[bytes]:
        packets = [PACKETS_BY_MODE[code](segment, security_id, quote)]
        if code == QUOTE and quote.oi:
            packets.append(oi_packet(segment, security_id, quote.oi))
        return packets

    # --- control hooks -------------------------------------------------------------------------------------------

    def push(self, *quotes: Quote) -> int:
        """Send these quotes now to every connection subscribed to them; returns how many packets went out."""
        keys = []
        for quote in quotes:
            segment_name, security_id = dhan_instrument(quote.symbol)
            keys.append(((SEGMENT_CODES[segment_name], int(security_id)), quote))

        async def send() -> int:
            sent = 0
            for client in list(self.clients.values()):
                for key, quote in keys:
                    if key in client.modes:
                        for packet in self._packets(*key, quote, client.modes[key]):
                            await client.connection.send(packet)
                            sent += 1
            return sent

        return self.call(send)

    def disconnect_all(self, reason: int = TOKEN_EXPIRED) -> None:
        """Tell every client why it is being disconnected (a disconnection packet), then close."""

        async def disconnect() -> None:
            for client in list(self.clients.values()):
                await client.connection.send(disconnect_packet(reason))
                await client.connection.close()

        self.call(disconnect)

    def subscriptions(self) -> dict[str, int]:
        """Every symbol some connection follows, with its request code (15 ticker, 17 quote, 21 full)."""
        merged: dict[str, int] = {}
        for client in list(self.clients.values()):
            for (segment, security_id), code in client.modes.items():
                merged[self._symbol(segment, security_id) or f"{SEGMENT_NAMES.get(segment)}:{security_id}"] = code
        return merged
