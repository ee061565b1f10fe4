"""Fyers' v3 market-data socket ("HSM", binary over WebSocket) as `fyers_apiv3`'s `FyersDataSocket` speaks it, and
the two HTTP reads the SDK makes before it subscribes.

HTTP (`routes_add` puts them on a simulator app; `FyersFeedSimulator` serves them itself unless told not to):
`POST /data/symbol-token` `{"symbols": ["NSE:SBIN-EQ", ...]}` (at most 500) with the bare access token as
Authorization answers `{"s": "ok", "validSymbol": {"NSE:SBIN-EQ": "10100000003045"}, "invalidSymbol": [...]}`: a
fytoken is the 4-digit exchange segment (1010 NSE cash, 1011 NSE F&O, 1012 NSE currency, 1120 MCX, 1210 BSE cash,
1211 BSE F&O), six zeros and the exchange token, from which the SDK builds the topic `sf|nse_cm|3045`. Indices
become `if|nse_cm|Nifty 50` by the exchange's index name, which the SDK reads from
`GET /sym_details/index_hsm_mapping.json` (`{"NSE:NIFTY50-INDEX": "Nifty 50", ...}`).

WebSocket messages, big-endian: uint16 length, uint8 type, uint8 field count, then fields (uint8 id, uint16 length,
value). Requests: 1 authenticate (field 1: the `hsm_key` claim of the access token), 12 mode (field 2: 70 full,
76 lite), 4 subscribe and 5 unsubscribe (field 1: uint16 count then length-prefixed topics; field 2: the channel),
7 pause and 8 resume (channel bits), 3 acknowledge (the message number), and the 3-byte ping `00 01 0b`. The SDK
declares a wrong length on (un)subscribe requests, so requests are read by their fields, never by that length.
Answers: the request's type with field 1 "K" (authentication adds field 2: acknowledge every N data messages, 0 for
never); a refused authentication answers another string and closes. 51 is a custom message (code, text, the type of
the request it answers): 51001 refuses the symbols beyond Fyers' cap of 5000 per user. Data messages are type 6:
uint32 message number, uint16 count, then per topic a snapshot (83: uint16 topic id, the topic name, the field
values as int32 with -2^31 for "none", a 2-byte gap, uint16 multiplier, uint8 precision, then exchange, exchange
token and symbol), an update (85: topic id and every field value) or, on a lite channel, a price (76: topic id and
LTP). Prices travel as integers: price x 10^precision x multiplier.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from websockets.asyncio.server import ServerConnection

from algoterm.sandbox.simulators.base import SimRequest, SimResponse, SimulatorApp, SimulatorServer
from algoterm.sandbox.simulators.kite_ticker import ThreadedWebSocketServer
from brokers.instruments import by_symbol
from brokers.prices import quote_for
from brokers.protocol import InvalidInput, Quote, split_symbol
from brokers.symbols import INDEX_TO_FYERS, from_fyers_symbol

SYMBOL_TOKEN_PATH = "/data/symbol-token"
INDEX_MAPPING_PATH = "/sym_details/index_hsm_mapping.json"
SYMBOLS_PER_LOOKUP = 500
MAX_SYMBOLS_PER_USER = 5000

AUTH, ACK, SUBSCRIBE, UNSUBSCRIBE, DATA, PAUSE, RESUME, PING, MODE, CUSTOM = 1, 3, 4, 5, 6, 7, 8, 11, 12, 51
FULL_MODE, LITE_MODE = 70, 76
SNAPSHOT, UPDATE, LITE = 83, 85, 76
NONE = -(2**31)
INT32_MAX = 2**31 - 1
SYMBOL_LIMIT_EXCEEDED = 51001

# Our exchange -> the HSM segment and its fytoken prefix.
SEGMENTS = {
    "NSE": ("nse_cm", "1010"),
    "NFO": ("nse_fo", "1011"),
    "CDS": ("cde_fo", "1012"),
    "MCX": ("mcx_fo", "1120"),
    "BSE": ("bse_cm", "1210"),
    "BFO": ("bse_fo", "1211"),
}
# The exchange's own names of the indices we map (what Fyers' index mapping file says).
INDEX_NAMES = {
    "NSE:NIFTY50-INDEX": "Nifty 50",
    "NSE:NIFTYBANK-INDEX": "Nifty Bank",
    "NSE:FINNIFTY-INDEX": "Nifty Fin Service",
    "NSE:MIDCPNIFTY-INDEX": "NIFTY MID SELECT",
    "NSE:INDIAVIX-INDEX": "India VIX",
    "BSE:SENSEX-INDEX": "SENSEX",
    "BSE:BANKEX-INDEX": "BANKEX",
}
# Scrip fields, in the order the SDK reads them (its `data_val`); indices carry the first six of `INDEX_FIELDS`.
SCRIP_FIELDS = (
    "ltp",
    "vol_traded_today",
    "last_traded_time",
    "exch_feed_time",
    "bid_size",
    "ask_size",
    "bid_price",
    "ask_price",
    "last_traded_qty",
    "tot_buy_qty",
    "tot_sell_qty",
    "avg_trade_price",
    "OI",
    "low_price",
    "high_price",
    "Yhigh",
    "Ylow",
    "lower_ckt",
    "upper_ckt",
    "open_price",
    "prev_close_price",
)
INDEX_FIELDS = ("ltp", "prev_close_price", "exch_feed_time", "high_price", "low_price", "open_price")


# --- wire encoding -------------------------------------------------------------------------------------------------


def message(kind: int, fields: list[tuple[int, bytes]]) -> bytes:
    body = bytes([kind, len(fields)])
    for field_id, value in fields:
        body += bytes([field_id]) + struct.pack(">H", len(value)) + value
    return struct.pack(">H", len(body)) + body


def answer(kind: int, status: str = "K") -> bytes:
    return message(kind, [(1, status.encode())])


def auth_answer(status: str, ack_every: int) -> bytes:
    return message(AUTH, [(1, status.encode()), (2, struct.pack(">I", ack_every))])


def custom_message(code: int, text: str, ref_type: int) -> bytes:
    return message(CUSTOM, [(1, struct.pack(">i", code)), (2, text.encode()), (3, bytes([ref_type]))])


def data_message(number: int, items: list[bytes]) -> bytes:
    body = bytes([DATA]) + struct.pack(">IH", number, len(items)) + b"".join(items)
    return struct.pack(">H", len(body) & 0xFFFF) + body


def _int32(value: int) -> int:
    return max(-INT32_MAX, min(INT32_MAX, value))


def _scaled(value: Decimal | None, precision: int, multiplier: int) -> int:
    if value is None:
        return NONE
    return _int32(int(value * (10**precision) * multiplier))


def _epoch(value: datetime | None) -> int:
    return int((value or datetime.now(tz=UTC)).timestamp())


def field_values(quote: Quote, *, index: bool, precision: int, multiplier: int) -> list[int]:
    def price(value: Decimal | None) -> int:
        return _scaled(value, precision, multiplier)

    moment = _epoch(quote.timestamp)
    if index:
        return [
            price(quote.last_price),
            price(quote.close),
            moment,
            price(quote.high),
            price(quote.low),
            price(quote.open),
        ]
    band = quote.close or quote.last_price
    return [
        price(quote.last_price),
        _int32(quote.volume),
        moment,
        moment,
        _int32(quote.bid_quantity) if quote.bid else 0,
        _int32(quote.ask_quantity) if quote.ask else 0,
        price(quote.bid) if quote.bid else 0,
        price(quote.ask) if quote.ask else 0,
        1,  # last traded quantity: a quote does not carry it
        _int32(quote.bid_quantity),
        _int32(quote.ask_quantity),
        price(quote.last_price),  # average traded price: likewise
        _int32(quote.oi),
        price(quote.low),
        price(quote.high),
        NONE,  # 52-week high and low: not simulated
        NONE,
        price(band * Decimal("0.8")),  # circuit limits, 20% either side of the previous close
        price(band * Decimal("1.2")),
        price(quote.open),
        price(quote.close),
    ]


def _text(value: str) -> bytes:
    raw = value.encode()[:255]
    return bytes([len(raw)]) + raw


def snapshot_item(topic: Topic, quote: Quote) -> bytes:
    values = field_values(quote, index=topic.index, precision=topic.precision, multiplier=topic.multiplier)
    return (
        bytes([SNAPSHOT])
        + struct.pack(">H", topic.topic_id)
        + _text(topic.name)
        + bytes([len(values)])
        + struct.pack(f">{len(values)}i", *values)
        + b"\x00\x00"
        + struct.pack(">HB", topic.multiplier, topic.precision)
        + _text(topic.exchange)
        + _text(topic.exchange_token)
        + _text(topic.fyers_symbol)
    )


def update_item(topic: Topic, quote: Quote, *, lite: bool) -> bytes:
    values = field_values(quote, index=topic.index, precision=topic.precision, multiplier=topic.multiplier)
    if lite:
        return bytes([LITE]) + struct.pack(">Hi", topic.topic_id, values[0])
    return bytes([UPDATE]) + struct.pack(f">HB{len(values)}i", topic.topic_id, len(values), *values)


def read_fields(data: bytes) -> tuple[int, dict[int, bytes]]:
    """(request type, fields by id) of one client message; the declared length is not trusted (see above)."""
    if len(data) < 4:
        return (data[2] if len(data) == 3 else -1), {}
    fields: dict[int, bytes] = {}
    offset = 4
    for _ in range(data[3]):
        if offset + 3 > len(data):
            break
        field_id, length = data[offset], struct.unpack_from(">H", data, offset + 1)[0]
        fields[field_id] = data[offset + 3 : offset + 3 + length]
        offset += 3 + length
    return data[2], fields


def read_topics(value: bytes) -> list[str]:
    if len(value) < 2:
        return []
    count, offset, topics = struct.unpack_from(">H", value)[0], 2, []
    for _ in range(count):
        if offset >= len(value):
            break
        length = value[offset]
        topics.append(value[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return topics


def _channels(value: bytes) -> set[int]:
    bits = struct.unpack(">Q", value)[0] if len(value) == 8 else 0
    return {channel for channel in range(1, 64) if bits & (1 << channel)}


def token_claims(access_token: str) -> dict[str, Any]:
    """The claims of a JWT-shaped access token ({} when it is not one)."""
    try:
        payload = access_token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}


# --- the simulator ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """What the symbol-token lookup told a client about one symbol."""

    symbol: str  # ours
    fyers_symbol: str
    segment: str
    exchange_token: str


@dataclass
class Topic:
    name: str
    symbol: str
    fyers_symbol: str
    topic_id: int
    channel: int
    index: bool
    exchange: str
    exchange_token: str
    precision: int = 2
    multiplier: int = 1


@dataclass
class SocketClient:
    connection: ServerConnection
    user: str = ""
    topics: dict[str, Topic] = field(default_factory=dict)
    lite_channels: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    next_topic_id: int = 1
    messages_sent: int = 0
    acknowledged: int = 0


class FyersFeedSimulator(ThreadedWebSocketServer):
    """Fyers' data socket on 127.0.0.1, with its symbol-token lookup and index mapping on a small HTTP server
    (`http_url`) unless `serve_http` is False (the demo puts them on the Fyers REST simulator, as Fyers has them on
    its data API host). `stream_interval` streams every subscribed topic from `price_source` (default
    `brokers.prices.quote_for`, the shared market) that often (None: only what `push` sends). Credentials are the
    access tokens given to `register_token` (their `hsm_key` claim authenticates the socket), plus whatever
    `authorize` (an access token or hsm key -> its user, None if unknown) accepts. `price_scales[symbol] =
    (precision, multiplier)` overrides how a symbol's prices travel (default 2 and 1)."""

    def __init__(
        self,
        *,
        port: int = 0,
        http_port: int = 0,
        serve_http: bool = True,
        stream_interval: float | None = None,
        price_source: Callable[[str], Quote] | None = None,
        authorize: Callable[[str], str | None] | None = None,
        max_symbols: int = MAX_SYMBOLS_PER_USER,
        ack_every: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.authorize = authorize
        self.stream_interval = stream_interval
        self.price_source = price_source
        self.max_symbols = max_symbols
        self.ack_every = ack_every
        self.price_scales: dict[str, tuple[int, int]] = {}
        self.clients: dict[ServerConnection, SocketClient] = {}
        self.subscribe_requests = 0  # every subscribe message received, resubscriptions included
        self.symbol_lookups = 0  # symbol-token requests answered
        self.refused_symbols: list[str] = []  # topics refused beyond the cap
        self._credentials: dict[str, str] = {}  # access token or hsm key -> user
        self._listings: dict[tuple[str, str], Listing] = {}  # (segment, exchange token or index name) -> listing
        self._lock = threading.Lock()
        self._http: SimulatorServer | None = (
            SimulatorServer(FyersSymbolsApp(self), port=http_port) if serve_http else None
        )

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> FyersFeedSimulator:
        super().start()
        if self._http is not None:
            self._http.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
        super().stop()

    @property
    def http_url(self) -> str:
        if self._http is None:
            raise RuntimeError("this simulator serves no HTTP of its own (see routes_add)")
        return self._http.url

    @property
    def symbol_token_url(self) -> str:
        return f"{self.http_url}{SYMBOL_TOKEN_PATH}"

    @property
    def index_mapping_url(self) -> str:
        return f"{self.http_url}{INDEX_MAPPING_PATH}"

    def routes_add(self, app: SimulatorApp) -> None:
        """Serve the symbol-token lookup and the index mapping on `app` (e.g. the Fyers REST simulator)."""
        app.add_route("POST", SYMBOL_TOKEN_PATH, self.symbol_token)
        app.add_route("GET", INDEX_MAPPING_PATH, self.index_mapping)

    # --- credentials ---------------------------------------------------------------------------------------------

    def register_token(self, access_token: str) -> None:
        """Accept this access token (and the socket its `hsm_key` claim opens) for the user it names."""
        claims = token_claims(access_token)
        user = str(claims.get("fy_id") or "FYERS-USER")
        with self._lock:
            self._credentials[access_token] = user
            if claims.get("hsm_key"):
                self._credentials[str(claims["hsm_key"])] = user

    def revoke_tokens(self) -> None:
        with self._lock:
            self._credentials.clear()

    def _user(self, credential: str) -> str | None:
        if not credential:
            return None
        with self._lock:
            user = self._credentials.get(credential)
        if user is None and self.authorize is not None:
            user = self.authorize(credential)
        return user

    # --- HTTP: the symbol-token lookup and the index mapping ---------------------------------------------------

    def symbol_token(self, request: SimRequest) -> SimResponse:
        # The SDK sends the bare token; other clients send "app_id:token".
        authorization = request.headers.get("Authorization", "")
        if self._user(authorization.rpartition(":")[2]) is None:
            return SimResponse.json({"s": "error", "code": -16, "message": "Could not authenticate the user"}, 401)
        try:
            names = request.json().get("symbols")
        except (ValueError, AttributeError):
            names = None
        if not isinstance(names, list) or not names or len(names) > SYMBOLS_PER_LOOKUP:
            message = f"Pass 1 to {SYMBOLS_PER_LOOKUP} symbols."
            return SimResponse.json({"s": "error", "code": -50, "message": message}, 400)
        valid, invalid = {}, []
        for name in names:
            listing = self._listing(str(name))
            if listing is None:
                invalid.append(name)
                continue
            prefix = SEGMENTS[split_symbol(listing.symbol)[0]][1]
            token = listing.exchange_token if listing.fyers_symbol not in INDEX_NAMES else self._stable_token(name)
            valid[name] = f"{prefix}000000{token}"
        self.symbol_lookups += 1
        return SimResponse.json({"s": "ok", "code": 200, "message": "", "validSymbol": valid, "invalidSymbol": invalid})

    def index_mapping(self, request: SimRequest) -> SimResponse:
        return SimResponse.json(INDEX_NAMES)

    @staticmethod
    def _stable_token(name: str) -> str:
        return str(10_000 + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) % 90_000)

    def _listing(self, fyers_symbol: str) -> Listing | None:
        try:
            symbol = from_fyers_symbol(fyers_symbol)
            exchange, _ = split_symbol(symbol)
        except InvalidInput:
            return None
        if exchange not in SEGMENTS:
            return None
        segment = SEGMENTS[exchange][0]
        if symbol in INDEX_TO_FYERS:
            name = INDEX_NAMES.get(fyers_symbol) or fyers_symbol.split(":")[1].split("-")[0]
            listing = Listing(symbol, fyers_symbol, segment, name)
        else:
            try:
                instrument = by_symbol(symbol)
            except Exception:  # no instrument master here (a test without the database): unknown
                instrument = None
            if instrument is None or not instrument.dhan_security_id:
                return None
            # Dhan's security ids are the exchanges' own tokens, which is what Fyers' fytokens end with.
            listing = Listing(symbol, fyers_symbol, segment, instrument.dhan_security_id)
        with self._lock:
            self._listings[(listing.segment, listing.exchange_token)] = listing
        return listing

    # --- one connection ------------------------------------------------------------------------------------------

    async def serve_client(self, connection: ServerConnection) -> None:
        streaming = self._stream if self.stream_interval is not None else None
        await self.serve_requests(
            connection, SocketClient(connection), frames=bytes, apply=self._apply, background=streaming
        )

    async def _apply(self, client: SocketClient, data: bytes) -> bool:
        """Apply one request; False when the connection must close."""
        kind, fields = read_fields(data)
        if kind == AUTH:
            user = self._user(fields.get(1, b"").decode("ascii", "replace"))
            if user is None:
                await client.connection.send(auth_answer("Invalid token", 0))
                return False
            client.user = user
            await client.connection.send(auth_answer("K", self.ack_every))
            return True
        if not client.user:  # nothing before authentication
            return kind == PING
        if kind == MODE:
            channels = _channels(fields.get(1, b""))
            if fields.get(2) == bytes([LITE_MODE]):
                client.lite_channels |= channels
            else:
                client.lite_channels -= channels
            await client.connection.send(answer(MODE))
        elif kind in (PAUSE, RESUME):
            channels = _channels(fields.get(1, b""))
            client.paused = client.paused | channels if kind == PAUSE else client.paused - channels
            await client.connection.send(answer(kind))
        elif kind == SUBSCRIBE:
            await self._subscribe(client, read_topics(fields.get(1, b"")), (fields.get(2) or b"\x0b")[0])
        elif kind == UNSUBSCRIBE:
            for name in read_topics(fields.get(1, b"")):
                client.topics.pop(name, None)
            await client.connection.send(answer(UNSUBSCRIBE))
        elif kind == ACK and 1 in fields and len(fields[1]) == 4:
            client.acknowledged = struct.unpack(">I", fields[1])[0]
        return True

    async def _subscribe(self, client: SocketClient, names: list[str], channel: int) -> None:
        self.subscribe_requests += 1
        followed = {name for other in list(self.clients.values()) if other.user == client.user for name in other.topics}
        added, refused = [], []
        for name in names:
            topic = client.topics.get(name) or self._topic(client, name, channel)
            if topic is None or name in client.topics:
                continue
            if name not in followed and len(followed) >= self.max_symbols:
                refused.append(name)
                continue
            followed.add(name)
            added.append(topic)
        await client.connection.send(answer(SUBSCRIBE))
        if added:
            quotes = [await asyncio.to_thread(self._source(), topic.symbol) for topic in added]
            await self._send(client, [snapshot_item(topic, quote) for topic, quote in zip(added, quotes, strict=True)])
            for topic in added:
                client.topics[topic.name] = topic
        if refused:
            self.refused_symbols.extend(refused)
            text = f"Symbol limit of {self.max_symbols} reached; {len(refused)} symbols not subscribed"
            await client.connection.send(custom_message(SYMBOL_LIMIT_EXCEEDED, text, SUBSCRIBE))

    def _topic(self, client: SocketClient, name: str, channel: int) -> Topic | None:
        kind, _, rest = name.partition("|")
        segment, _, token = rest.partition("|")
        if kind not in ("sf", "if"):
            return None  # depth topics are not simulated
        with self._lock:
            listing = self._listings.get((segment, token))
        if listing is None:
            return None
        precision, multiplier = self.price_scales.get(listing.symbol, (2, 1))
        topic = Topic(
            name=name,
            symbol=listing.symbol,
            fyers_symbol=listing.fyers_symbol,
            topic_id=client.next_topic_id,
            channel=channel,
            index=kind == "if",
            exchange=split_symbol(listing.fyers_symbol)[0],
            exchange_token=token,
            precision=precision,
            multiplier=multiplier,
        )
        client.next_topic_id += 1
        return topic

    async def _send(self, client: SocketClient, items: list[bytes]) -> None:
        client.messages_sent += 1
        await client.connection.send(data_message(client.messages_sent, items))

    def _source(self) -> Callable[[str], Quote]:
        return self.price_source or quote_for

    def _live_topics(self, client: SocketClient) -> list[Topic]:
        return [topic for topic in list(client.topics.values()) if topic.channel not in client.paused]

    async def _stream(self, client: SocketClient) -> None:
        while True:
            await asyncio.sleep(self.stream_interval or 1.0)
            items = []
            for topic in self._live_topics(client):
                quote = await asyncio.to_thread(self._source(), topic.symbol)
                items.append(update_item(topic, quote, lite=topic.channel in client.lite_channels))
            if items:
                await self._send(client, items)

    # --- control hooks -------------------------------------------------------------------------------------------

    def push(self, *quotes: Quote) -> int:
        """Send these quotes now, one data message per connection, to every connection following them; returns how
        many updates went out."""

        async def send() -> int:
            sent = 0
            for client in list(self.clients.values()):
                items = [
                    update_item(topic, quote, lite=topic.channel in client.lite_channels)
                    for topic in self._live_topics(client)
                    for quote in quotes
                    if quote.symbol == topic.symbol
                ]
                if items:
                    await self._send(client, items)
                    sent += len(items)
            return sent

        return self.call(send)

    def subscriptions(self) -> dict[str, str]:
        """Every symbol (ours) some authenticated connection follows, with its mode ("full" or "lite")."""
        merged = {}
        for client in list(self.clients.values()):
            for topic in list(client.topics.values()):
                merged[topic.symbol] = "lite" if topic.channel in client.lite_channels else "full"
        return merged


class FyersSymbolsApp(SimulatorApp):
    """The simulator's own HTTP server: the symbol-token lookup and the index mapping."""

    name = "fyers-symbols"

    def __init__(self, simulator: FyersFeedSimulator) -> None:
        self.simulator = simulator
        super().__init__()

    def setup_routes(self) -> None:
        self.simulator.routes_add(self)

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        return SimResponse.json({"s": "error", "code": -status, "message": message}, status=status)
