"""Zerodha's Kite ticker (market-data WebSocket) as `kiteconnect.KiteTicker` expects it.

The client connects to `ws://HOST:PORT?api_key=..&access_token=..`; an unknown pair is refused at the handshake
with HTTP 403, like Kite. Client text frames: `{"a": "subscribe", "v": [tokens]}`, `{"a": "unsubscribe", ...}`,
`{"a": "mode", "v": [mode, [tokens]]}`. Server binary frames, big-endian: uint16 packet count, then per packet a
uint16 length and the body (8 bytes LTP, 44 quote, 184 full; indices 28 quote, 32 full), prices in paise, plus a
1-byte heartbeat every second. A new subscription streams in quote mode until told otherwise.

`ThreadedWebSocketServer` (shared with the Dhan feed simulator) runs a `websockets` server on 127.0.0.1 in its
own thread and event loop, with the hooks tests need: push a tick now, drop every connection, count them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from brokers.instruments import by_kite_token, by_symbol
from brokers.prices import quote_for
from brokers.protocol import Quote

logger = logging.getLogger(__name__)


class ThreadedWebSocketServer:
    """A WebSocket server on 127.0.0.1 in a thread of its own. Subclasses implement `refuse` (the handshake check)
    and `serve_client` (one connection's life)."""

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self.connections: set[ServerConnection] = set()
        self.clients: dict[ServerConnection, Any] = {}  # what a subclass knows of each connection
        self.connections_accepted = 0
        self.handshakes_refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._serve_forever, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        if self._startup_error is not None:
            raise RuntimeError(f"{type(self).__name__} could not start") from self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _serve_forever(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # surfaced to `start` when it happens before the server is up
            self._startup_error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A client that never answers a close (a refused one, abandoned mid-handshake) holds a stop for close_timeout.
        async with serve(
            self._handle, "127.0.0.1", self.port, process_request=self._process_request, close_timeout=1
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        query = parse_qs(urlsplit(request.path).query)
        params = {name: values[0] for name, values in query.items()}
        refusal = self.refuse(params)
        if refusal is None:
            return None
        self.handshakes_refused += 1
        return connection.respond(refusal, f"{refusal.phrase}\n")

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections.add(connection)
        self.connections_accepted += 1
        try:
            await self.serve_client(connection)
        except ConnectionClosed:
            pass
        finally:
            self.connections.discard(connection)

    # --- for subclasses ------------------------------------------------------------------------------------------

    def refuse(self, params: dict[str, str]) -> HTTPStatus | None:
        """The HTTP status that refuses this handshake, or None to accept it."""
        return None

    async def serve_client(self, connection: ServerConnection) -> None:
        raise NotImplementedError

    async def serve_requests(
        self,
        connection: ServerConnection,
        client: Any,
        *,
        frames: type,
        apply: Callable[[Any, Any], Awaitable[bool]],
        background: Callable[[Any], Coroutine[Any, Any, Any]] | None = None,
    ) -> None:
        """A feed client's life: registered in `self.clients`, `background(client)` running beside it (the price
        stream), and each message of type `frames` applied in turn until `apply` answers False, which closes it."""
        self.clients[connection] = client
        task = asyncio.create_task(background(client)) if background is not None else None
        try:
            async for message in connection:
                if isinstance(message, frames) and not await apply(client, message):
                    await connection.close()
                    return
        finally:
            if task is not None:
                task.cancel()
            self.clients.pop(connection, None)

    # --- control hooks for tests and the demo (call from any thread) -----------------------------------------------

    def call(self, coroutine: Callable[[], Coroutine[Any, Any, Any]], *, timeout: float = 5.0) -> Any:
        """Run `coroutine()` on the server's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        return asyncio.run_coroutine_threadsafe(coroutine(), self._loop).result(timeout)

    def drop_connections(self) -> int:
        """Cut every connection without a closing handshake, like a network failure; returns how many."""

        async def abort_all() -> int:
            dropped = list(self.connections)
            for connection in dropped:
                connection.transport.abort()
            return len(dropped)

        return self.call(abort_all)

    def wait_until(self, condition: Callable[[], bool], *, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()


# --- Kite's binary tick packets --------------------------------------------------------------------------------

MODE_LTP, MODE_QUOTE, MODE_FULL = "ltp", "quote", "full"
MODES = (MODE_LTP, MODE_QUOTE, MODE_FULL)
INDICES_SEGMENT = 9  # the low byte of an instrument token names its segment; 9 is indices (not tradable)
DEPTH_LEVELS = 5


def price_divisor(instrument_token: int) -> int:
    """What Kite divides prices by for this token's segment (CDS in 1e-7 rupees, BCD and NCO in 1e-4, else paise)."""
    segment = instrument_token & 0xFF
    if segment == 3:
        return 10_000_000
    if segment in (6, 12):
        return 10_000
    return 100


def _scaled(value: Decimal | None, divisor: int) -> int:
    return int((value or Decimal(0)) * divisor) if value is not None else 0


def _epoch(value: datetime | None) -> int:
    return int((value or datetime.now(tz=UTC)).timestamp())


def tick_packet(instrument_token: int, quote: Quote, mode: str) -> bytes:
    """One tick in `mode` for `instrument_token`, exactly as `KiteTicker._parse_binary` reads it."""
    divisor = price_divisor(instrument_token)

    def price(value: Decimal | None) -> int:
        return _scaled(value, divisor)

    last = price(quote.last_price)
    if mode == MODE_LTP:
        return struct.pack(">II", instrument_token, last)
    if instrument_token & 0xFF == INDICES_SEGMENT:
        close = price(quote.close)
        change = last - close if close else 0
        body = struct.pack(
            ">IIIIIIi", instrument_token, last, price(quote.high), price(quote.low), price(quote.open), close, change
        )
        return body if mode == MODE_QUOTE else body + struct.pack(">I", _epoch(quote.timestamp))
    body = struct.pack(
        ">11I",
        instrument_token,
        last,
        1,  # last traded quantity: a quote does not carry it
        last,  # average traded price: likewise
        quote.volume,
        quote.bid_quantity,
        quote.ask_quantity,
        price(quote.open),
        price(quote.high),
        price(quote.low),
        price(quote.close),
    )
    if mode == MODE_QUOTE:
        return body
    timestamp = _epoch(quote.timestamp)
    body += struct.pack(">IIIII", timestamp, quote.oi, quote.oi, quote.oi, timestamp)
    tick = price(Decimal("0.05"))
    bids = [(quote.bid_quantity, price(quote.bid) - level * tick if quote.bid else 0) for level in range(DEPTH_LEVELS)]
    asks = [(quote.ask_quantity, price(quote.ask) + level * tick if quote.ask else 0) for level in range(DEPTH_LEVELS)]
    for quantity, level_price in bids + asks:
        body += struct.pack(">IIHxx", quantity if level_price else 0, level_price, 1 if level_price else 0)
    return body


def tick_frame(packets: list[bytes]) -> bytes:
    frame = struct.pack(">H", len(packets))
    for packet in packets:
        frame += struct.pack(">H", len(packet)) + packet
    return frame


HEARTBEAT = b"\x00"


@dataclass
class TickerClient:
    connection: ServerConnection
    api_key: str
    modes: dict[int, str] = field(default_factory=dict)  # subscribed token -> mode


class KiteTickerSimulator(ThreadedWebSocketServer):
    """Kite's ticker on 127.0.0.1. `stream_interval` streams every subscribed token from `price_source` (default
    `brokers.prices.quote_for`, the shared market) that often (None: only ticks pushed with `push`). Tokens are
    those registered with `register_token`, plus whatever `authorize` accepts."""

    def __init__(
        self,
        *,
        port: int = 0,
        stream_interval: float | None = None,
        heartbeat_interval: float = 1.0,
        price_source: Callable[[str], Quote] | None = None,
        authorize: Callable[[str, str], bool] | None = None,
    ) -> None:
        super().__init__(port=port)
        self.authorize = authorize  # (api_key, access_token) -> known, e.g. the REST simulator's sessions
        self.stream_interval = stream_interval
        self.heartbeat_interval = heartbeat_interval
        self.price_source = price_source
        self.clients: dict[ServerConnection, TickerClient] = {}
        self.subscribe_requests = 0  # every subscribe frame received, resubscriptions included
        self._tokens: set[tuple[str, str]] = set()
        self._tokens_lock = threading.Lock()

    # --- credentials ---------------------------------------------------------------------------------------------

    def register_token(self, api_key: str, access_token: str) -> None:
        with self._tokens_lock:
            self._tokens.add((api_key, access_token))

    def revoke_tokens(self) -> None:
        with self._tokens_lock:
            self._tokens.clear()

    def refuse(self, params: dict[str, str]) -> HTTPStatus | None:
        with self._tokens_lock:
            credentials = (params.get("api_key", ""), params.get("access_token", ""))
            known = credentials in self._tokens
        if not known and self.authorize is not None:
            known = self.authorize(*credentials)
        return None if known else HTTPStatus.FORBIDDEN

    # --- one connection ------------------------------------------------------------------------------------------

    async def serve_client(self, connection: ServerConnection) -> None:
        params = parse_qs(urlsplit(connection.request.path).query)
        client = TickerClient(connection, params.get("api_key", [""])[0])
        self.clients[connection] = client
        background = [asyncio.create_task(self._heartbeats(client))]
        if self.stream_interval is not None:
            background.append(asyncio.create_task(self._stream(client)))
        try:
            async for message in connection:
                if isinstance(message, str):
                    self._apply(client, message)
        finally:
            for task in background:
                task.cancel()
            self.clients.pop(connection, None)

    def _apply(self, client: TickerClient, message: str) -> None:
        try:
            request = json.loads(message)
            action, value = request["a"], request["v"]
        except (ValueError, KeyError, TypeError):
            return
        if action == "subscribe":
            self.subscribe_requests += 1
            for token in value:
                client.modes.setdefault(int(token), MODE_QUOTE)
        elif action == "unsubscribe":
            for token in value:
                client.modes.pop(int(token), None)
        elif action == "mode" and isinstance(value, list) and len(value) == 2 and value[0] in MODES:
            for token in value[1]:
                if int(token) in client.modes:
                    client.modes[int(token)] = value[0]

    async def _heartbeats(self, client: TickerClient) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await client.connection.send(HEARTBEAT)

    async def _stream(self, client: TickerClient) -> None:
        source = self.price_source or quote_for
        while True:
            await asyncio.sleep(self.stream_interval or 1.0)
            packets = []
            for token, mode in list(client.modes.items()):
                instrument = by_kite_token(token)
                if instrument is not None:
                    quote = await asyncio.to_thread(source, instrument.symbol)
                    packets.append(tick_packet(token, quote, mode))
            if packets:
                await client.connection.send(tick_frame(packets))

    # --- control hooks -------------------------------------------------------------------------------------------

    def push(self, *quotes: Quote) -> int:
        """Send these quotes now, in one frame per connection, to every connection subscribed to their symbols;
        returns how many connections got a frame."""
        tokens = []
        for quote in quotes:
            instrument = by_symbol(quote.symbol)
            if instrument is None:
                raise ValueError(f"{quote.symbol} has no Kite instrument token")
            tokens.append((instrument.kite_token, quote))

        async def send() -> int:
            sent = 0
            for client in list(self.clients.values()):
                packets = [
                    tick_packet(token, quote, client.modes[token]) for token, quote in tokens if token in client.modes
                ]
                if packets:
                    await client.connection.send(tick_frame(packets))
                    sent += 1
            return sent

        return self.call(send)

    def push_order_update(self, order: dict[str, Any]) -> None:
        """A postback-style order update as the ticker sends it (text frame)."""

        async def send() -> None:
            for client in list(self.clients.values()):
                await client.connection.send(json.dumps({"type": "order", "data": order}))

        self.call(send)

    def subscriptions(self) -> dict[int, str]:
        """Every token some connection follows, with its mode."""
        merged: dict[int, str] = {}
        for client in list(self.clients.values()):
            merged.update(client.modes)
        return merged
