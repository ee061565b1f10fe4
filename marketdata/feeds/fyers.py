"""Live ticks from Fyers' v3 market-data socket through the `fyers_apiv3` SDK's `FyersDataSocket`.

The SDK was written for one socket per process, talking to Fyers, and `RoutedDataSocket` adapts it per instance:

* `FyersDataSocket` is a singleton (its `__new__` hands back the first instance); ours builds a new one each time.
* Its socket URL is the private `__url` set in `__init__`, and the symbol-token lookup it makes before subscribing
  (`SymbolConversion.symbols_token_api`, with the index mapping from a module constant) is built inside the private
  `__symbol_conversion`: we set the URL on the instance and override that conversion to use our lookup URLs (the
  SDK's own `symbol_to_hsmtoken` still turns `NSE:SBIN-EQ` into the topic `sf|nse_cm|3045`).
* Its `connect` sleeps two seconds and reports success whether or not the socket opened; we open the connection
  ourselves and wait for Fyers' answer to the authentication instead. Its reconnection is off (`reconnect=False`):
  reconnecting is `Feed.run`'s job, and every `stream` call opens a fresh socket subscribed to the feed's current
  symbols, so a reconnect is a resubscribe.
* Its ping thread sleeps ten seconds between pings and its threads are not daemons; ours pings until told to stop,
  so closing (the SDK's `close_connection`, which joins its threads) is prompt, and a socket that opens after we gave
  up on it closes itself instead of starting threads.
* It turns prices into floats before handing them out; we take the merged integer fields it parsed (its private
  `__response_output`), with the topic's precision and multiplier, and build exact Decimals.

Threads: the SDK's WebSocket thread parses and queues; the thread running `stream` converts and publishes, and a
per-connection control thread makes the SDK's (un)subscribe calls, whose symbol-token HTTP request has no timeout, so
a stalled lookup never stalls the ticks or `stop`. The SDK writes its log files into the temp directory the Fyers
adapter uses; neither it nor we log the token.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket as py_socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from django.conf import settings

from brokers.adapters.fyers import LOG_DIRECTORY
from brokers.instruments import static_by_symbol
from brokers.models import Broker, BrokerAccount
from brokers.protocol import BrokerUnavailable, InvalidInput, Quote, SessionExpired
from brokers.symbols import INDEX_TO_FYERS, to_fyers_symbol
from marketdata.feeds.base import BrokerFeed

logger = logging.getLogger(__name__)

MODES = {"lite": True, "full": False}  # our mode -> the SDK's litemode
SYMBOL_UPDATE = "SymbolUpdate"
CHANNEL = 11  # the SDK's default channel
MAX_SYMBOLS = 5000  # Fyers' cap on symbols followed at once
SYMBOLS_PER_LOOKUP = 500  # the symbol-token lookup's batch (the SDK's)
CONNECT_TIMEOUT_SECONDS = 15
PING_SECONDS = 10
CLOSE_SECONDS = 2
HTTP_TIMEOUT_SECONDS = 10
NO_VALUE = -(2**31)
_POLL_SECONDS = 0.2
_BATCH = 500
# The SDK's message types and codes (fyers_apiv3.FyersWebsocket.defines).
AUTH_TYPE, SUBS_TYPE = "cn", "sub"
SYMBOL_LIMIT_EXCEEDED_CODE = 51001


def _quiet(sdk_logger: Any) -> None:
    """The SDK opens a log file per object but its loggers are process-wide and configured once: close the files it
    will not use, and keep its per-call info lines out of the one it does."""
    handler = getattr(sdk_logger, "logger_handler", None)
    if handler is not None and handler not in sdk_logger._logger.handlers:
        handler.close()
    logging.getLogger("FyersDataSocket").setLevel(logging.WARNING)


def routed_data_socket_class() -> type:
    from fyers_apiv3.FyersWebsocket import data_ws  # the Fyers SDK's socket: loaded only when a Fyers feed runs

    class RoutedSymbolConversion(data_ws.SymbolConversion):
        """The SDK's symbol-token lookup, at our URL, with the index mapping we fetched (None: the SDK's own file)."""

        def __init__(self, access_token: str, data_type: str, log_path: str, *, url: str, index_mapping) -> None:
            super().__init__(access_token, data_type, log_path)
            _quiet(self.data_logger)
            self.symbols_token_api = url
            self._index_mapping = index_mapping

        def load_index_hsm_mapping_from_api(self):
            if self._index_mapping is None:
                raise BrokerUnavailable("no index mapping")  # the SDK falls back to the file it ships
            return self._index_mapping

    class RoutedDataSocket(data_ws.FyersDataSocket):
        def __new__(cls, *args: Any, **kwargs: Any):
            return object.__new__(cls)

        def __init__(
            self,
            access_token: str,
            *,
            url: str,
            symbol_token_url: str,
            index_mapping: Callable[[], dict | None],
            lite: bool,
            events: queue.Queue,
        ) -> None:
            super().__init__(
                access_token=access_token,
                write_to_file=True,  # with callbacks set, this only makes its WebSocket thread a daemon
                log_path=LOG_DIRECTORY,
                litemode=lite,
                reconnect=False,
                reconnect_retry=0,
                on_message=lambda message: events.put(("message", message)),
                on_error=lambda error: events.put(("error", error)),
                on_close=lambda message: events.put(("closed", message)),
            )
            _quiet(self.data_logger)
            self._FyersDataSocket__url = url
            self._access_token = access_token
            self._symbol_token_url = symbol_token_url
            self._index_mapping = index_mapping
            self._events = events
            self._closing = threading.Event()
            self._open_lock = threading.Lock()

        def open(self) -> None:
            """Start connecting (a bad or expired token is reported through on_error at once, with no connection)."""
            self._FyersDataSocket__init_connection()
            if self.ws_thread is not None:
                self.ws_thread.name = "fyers-data-socket"

        def shutdown(self) -> None:
            """Close the socket and end the SDK's threads (also when the socket has not opened yet, or dropped)."""
            with self._open_lock:
                self._closing.set()
                ws = self._FyersDataSocket__ws_object
            if ws is None:
                return
            # The SDK's close_connection closes the socket under its reading thread, which then notices only at its
            # next poll (ten seconds). Say goodbye first: the reading thread ends when the server answers.
            sock = ws.sock
            raw = sock.sock if sock is not None else None
            if raw is not None and sock.connected:
                with contextlib.suppress(Exception):
                    sock.send_close()
                self.ws_thread.join(CLOSE_SECONDS)
            if raw is not None:  # end the TCP connection too, answered or not (the library leaves it half-open)
                with contextlib.suppress(OSError):
                    raw.shutdown(py_socket.SHUT_RDWR)
            self.close_connection()

        # --- the SDK's private steps, adapted ----------------------------------------------------------------

        def _FyersDataSocket__on_open(self, ws) -> None:
            with self._open_lock:
                if self._closing.is_set():
                    ws.close()
                    return
                super()._FyersDataSocket__on_open(ws)

        def _FyersDataSocket__ping(self) -> None:
            from websocket import ABNF

            while not self._closing.is_set():
                ws = self._FyersDataSocket__ws_object
                if ws is None or ws.sock is None or not ws.sock.connected:
                    return
                try:
                    ws.send(bytes([0, 1, 11]), opcode=ABNF.OPCODE_BINARY)
                except Exception:  # the connection is going; its close is reported through on_close
                    return
                self._closing.wait(PING_SECONDS)

        def _FyersDataSocket__send_message(self, message) -> None:
            try:
                super()._FyersDataSocket__send_message(message)
            except Exception as error:  # a send racing a drop: the drop is reported through on_close
                logger.debug("Fyers data socket send failed: %s", type(error).__name__)

        def _FyersDataSocket__symbol_conversion(self, symbols: list[str]) -> dict[str, str] | None:
            index_mapping = self._index_mapping() if any(name.endswith("-INDEX") for name in symbols) else None
            conversion = RoutedSymbolConversion(
                self._access_token,
                self.data_type,
                self.log_path,
                url=self._symbol_token_url,
                index_mapping=index_mapping,
            )
            topics: dict[str, str] = {}
            invalid: list[str] = []
            for start in range(0, len(symbols), SYMBOLS_PER_LOOKUP):
                result = conversion.symbol_to_hsmtoken(symbols[start : start + SYMBOLS_PER_LOOKUP])
                if result is None:  # the SDK logged and swallowed the failure (unreachable, not JSON...)
                    self.On_error({"type": SUBS_TYPE, "s": "error", "message": "the symbol-token lookup failed"})
                    return None
                converted, wrong, _, message = result
                if message:
                    self.On_error({"type": SUBS_TYPE, "s": "error", "message": message})
                    return None
                topics.update(converted)
                invalid.extend(wrong)
            if invalid:
                self.On_error(
                    {"type": SUBS_TYPE, "s": "error", "message": "invalid symbols", "invalid_symbols": invalid}
                )
            return topics

        def _FyersDataSocket__response_output(self, data: dict, data_type: str) -> None:
            self._events.put(("tick", dict(data)))

        def unsubscribe_topics(self, fyers_symbols: list[str]) -> None:
            # The SDK only unsubscribes topics of its last subscribe call (`scrips_count`); widen that to all.
            self.scrips_count[self.channel_num] = list(self.symbol_token)
            self.unsubscribe(fyers_symbols, data_type=SYMBOL_UPDATE, channel=CHANNEL)

    return RoutedDataSocket


# --- ticks to quotes ---------------------------------------------------------------------------------------------


def _scaled(raw: Any, precision: int, multiplier: int) -> Decimal | None:
    """An HSM integer price as a Decimal: raw / (10^precision x multiplier), exact; 0 and "none" mean no price."""
    if raw is None or raw == 0 or raw == NO_VALUE:
        return None
    price = Decimal(int(raw)).scaleb(-precision) / multiplier
    quantized = price.quantize(Decimal(1).scaleb(-precision))
    return quantized if quantized == price else price


def _moment(raw: Any) -> datetime | None:
    return datetime.fromtimestamp(int(raw), tz=UTC) if raw and raw != NO_VALUE else None


def quote_from_hsm(symbol: str, data: dict[str, Any], *, lite: bool) -> Quote | None:
    """One topic's merged fields as the SDK keeps them (integers, with `precision` and `multiplier`) as our Quote;
    None while it has no last price."""
    precision, multiplier = int(data.get("precision") or 0), int(data.get("multiplier") or 1)

    def price(key: str) -> Decimal | None:
        return _scaled(data.get(key), precision, multiplier)

    last_price = price("ltp")
    if last_price is None:
        return None
    received_at = datetime.now(tz=UTC)
    if lite:  # the rest of the snapshot is not kept up to date in lite mode
        return Quote(symbol=symbol, last_price=last_price, timestamp=received_at)
    timestamp = _moment(data.get("exch_feed_time")) or _moment(data.get("last_traded_time")) or received_at
    fields: dict[str, Any] = {
        "open": price("open_price"),
        "high": price("high_price"),
        "low": price("low_price"),
        "close": price("prev_close_price"),  # Quote.close is the previous close, as on Kite
        "timestamp": timestamp,
    }
    if data.get("type") == "sf":
        bid, ask = price("bid_price"), price("ask_price")
        fields |= {
            "bid": bid,
            "ask": ask,
            "bid_quantity": int(data.get("bid_size") or 0) if bid else 0,
            "ask_quantity": int(data.get("ask_size") or 0) if ask else 0,
            "volume": max(0, int(data.get("vol_traded_today") or 0)),
            "oi": max(0, int(data.get("OI") or 0)),
        }
    return Quote(symbol=symbol, last_price=last_price, **fields)


class _Control:
    """A connection's control thread: runs the SDK's (un)subscribe calls in order, off the ticking thread."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="fyers-feed-control", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                logger.exception("Fyers data socket request failed")


class FyersFeed(BrokerFeed):
    """Ticks for `symbols` from one Fyers account's data socket (Fyers follows at most 5000 symbols per user)."""

    source = "fyers"
    modes = MODES
    url_setting = "FYERS_FEED_URL"
    default_url = "wss://socket.fyers.in/hsm/v1-5/prod"
    connect_timeout_seconds = CONNECT_TIMEOUT_SECONDS

    def __init__(
        self,
        *,
        app_id: str,
        access_token: str,
        symbols: list[str],
        mode: str = "full",
        symbol_token_url: str | None = None,
        index_mapping_url: str | None = None,
        **feed_options: Any,
    ) -> None:
        super().__init__(mode=mode, **feed_options)
        if not access_token:
            raise SessionExpired("The Fyers account has no access token; log in again.")
        self.app_id = app_id
        # The SDK wants the bare token (it reads the hsm_key claim out of it); drop an "app_id:" prefix.
        self._access_token = access_token.rpartition(":")[2]
        self.symbol_token_url = symbol_token_url or getattr(
            settings, "FYERS_SYMBOL_TOKEN_URL", "https://api-t1.fyers.in/data/symbol-token"
        )
        self.index_mapping_url = index_mapping_url or getattr(
            settings, "FYERS_INDEX_MAPPING_URL", "https://public.fyers.in/sym_details/index_hsm_mapping.json"
        )
        self._index_mapping: dict | None = None
        self._symbols: dict[str, str] = {}  # Fyers symbol -> ours
        self._live: Any = None  # (socket, control) of the authenticated connection
        self._add(symbols)

    def __repr__(self) -> str:
        return f"<FyersFeed app_id={self.app_id} symbols={len(self._symbols)} mode={self.mode}>"

    @classmethod
    def from_account(cls, account: BrokerAccount, symbols: list[str], **options: Any) -> FyersFeed:
        if account.broker != Broker.FYERS:
            raise InvalidInput(f"A Fyers feed needs a Fyers account; {account} is {account.broker}.")
        return cls(
            app_id=str(account.credentials.get("client_id") or ""),
            access_token=str(account.session.get("access_token") or ""),
            symbols=symbols,
            **options,
        )

    # --- what to follow ------------------------------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(self._symbols.values())

    @staticmethod
    def _fyers_symbols(symbols: list[str]) -> dict[str, str]:
        """Ours -> Fyers': the instrument master's Fyers symbol, else our spelling rule (the well-known instruments
        and indices need no database)."""
        spelled = {symbol: to_fyers_symbol(symbol) for symbol in symbols}  # raises InvalidInput for nonsense
        unknown = {symbol for symbol in symbols if not static_by_symbol(symbol) and symbol not in INDEX_TO_FYERS}
        if unknown:
            from marketdata.models import Instrument

            rows = Instrument.objects.filter(symbol__in=unknown).exclude(fyers_symbol="")
            spelled |= dict(rows.values_list("symbol", "fyers_symbol"))
        return spelled

    def _add(self, symbols: list[str]) -> list[str]:
        wanted = {fyers: ours for ours, fyers in self._fyers_symbols(symbols).items()}  # outside the lock: may query
        with self._lock:
            added = [fyers for fyers in wanted if fyers not in self._symbols]
            if len(self._symbols) + len(added) > MAX_SYMBOLS:
                raise InvalidInput(f"Fyers follows at most {MAX_SYMBOLS} symbols per connection.")
            self._symbols.update({fyers: wanted[fyers] for fyers in added})
        return added

    def subscribe(self, symbols: list[str]) -> None:
        """Follow more symbols, now on the live connection and on every reconnect."""
        added = self._add(symbols)
        live = self._live
        if added and live is not None:
            socket, control = live
            control.submit(lambda: socket.subscribe(added, data_type=SYMBOL_UPDATE, channel=CHANNEL))

    def unsubscribe(self, symbols: list[str]) -> None:
        fyers_symbols = self._fyers_symbols(symbols)
        with self._lock:
            removed = [fyers for fyers in fyers_symbols.values() if self._symbols.pop(fyers, None) is not None]
        live = self._live
        if removed and live is not None:
            socket, control = live
            control.submit(lambda: socket.unsubscribe_topics(removed))

    def _forget(self, fyers_symbols: list[str]) -> None:
        with self._lock:
            for fyers in fyers_symbols:
                self._symbols.pop(fyers, None)

    def index_mapping(self) -> dict | None:
        """Fyers' index names for HSM topics (fetched once per feed; None: the SDK uses the file it ships)."""
        if self._index_mapping is None and self.index_mapping_url:
            try:
                response = requests.get(self.index_mapping_url, timeout=HTTP_TIMEOUT_SECONDS)
                response.raise_for_status()
                self._index_mapping = response.json()
            except (requests.RequestException, ValueError) as error:
                logger.warning("Fyers index mapping unavailable (%s); using the SDK's own", type(error).__name__)
        return self._index_mapping

    # --- streaming -----------------------------------------------------------------------------------------------

    def stream(self, stop: threading.Event) -> None:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        socket = routed_data_socket_class()(
            self._access_token,
            url=self.url,
            symbol_token_url=self.symbol_token_url,
            index_mapping=self.index_mapping,
            lite=MODES[self.mode],
            events=events,
        )
        control = _Control()
        pending: set[str] = set()  # symbols of the first subscription, until Fyers confirms it
        deadline: float | None = time.monotonic() + self.connect_timeout  # for the next expected answer
        try:
            socket.open()
            while not stop.is_set():
                try:
                    batch = [events.get(timeout=_POLL_SECONDS)]
                except queue.Empty:
                    if deadline is not None and time.monotonic() > deadline:
                        raise BrokerUnavailable(
                            "Fyers' data socket did not confirm the subscription in time."
                            if self._live
                            else "Fyers' data socket did not open in time."
                        ) from None
                    continue
                while len(batch) < _BATCH and not events.empty():
                    batch.append(events.get_nowait())
                quotes = []
                for kind, payload in batch:
                    if kind == "tick":
                        quote = self._quote(payload)
                        if quote is not None:
                            quotes.append(quote)
                    elif kind == "message" and payload.get("s") == "ok":
                        if payload.get("type") == AUTH_TYPE and self._live is None:
                            pending = self._opened(socket, control)
                            deadline = time.monotonic() + self.connect_timeout if pending else None
                        elif payload.get("type") == SUBS_TYPE:
                            pending, deadline = set(), None
                    elif kind == "error":
                        pending = self._error(payload, pending)
                        if not pending:
                            deadline = None if self._live else deadline
                    elif kind == "closed":
                        if quotes:
                            self.publish(quotes)
                        raise BrokerUnavailable("Fyers' data socket connection dropped.")
                if quotes:
                    self.publish(quotes)
        finally:
            self._live = None
            control.stop()
            socket.shutdown()

    def _opened(self, socket: Any, control: _Control) -> set[str]:
        """Authenticated: subscribe to everything followed; returns what the subscription asked for."""
        self.connections_opened += 1
        self._live = (socket, control)  # symbols followed from now on go out on this connection too
        with self._lock:
            fyers_symbols = list(self._symbols)
        if fyers_symbols:
            control.submit(lambda: socket.subscribe(fyers_symbols, data_type=SYMBOL_UPDATE, channel=CHANNEL))
        return set(fyers_symbols)

    def _error(self, error: Any, pending: set[str]) -> set[str]:
        """Raise for errors that end the connection; returns the first subscription's symbols still unanswered."""
        if not isinstance(error, dict):  # the WebSocket library's exception: its close follows
            status = getattr(error, "status_code", None)
            if status in (401, 403):
                raise SessionExpired("Fyers refused the data socket connection: log in again.")
            logger.info("Fyers data socket error: %s", type(error).__name__)
            return pending
        code, message = error.get("code"), error.get("message")
        if error.get("type") == AUTH_TYPE:
            # Expired (checked by the SDK from the token itself), malformed, or refused by Fyers: retrying the same
            # token cannot help.
            raise SessionExpired(f"Fyers refused the data socket: {message} ({code}); log in again.")
        if error.get("invalid_symbols"):
            invalid = [str(name) for name in error["invalid_symbols"]]
            logger.warning("Fyers does not know %d symbols; not following them: %s", len(invalid), invalid[:20])
            self._forget(invalid)
            return pending - set(invalid)
        if code == SYMBOL_LIMIT_EXCEEDED_CODE:
            logger.warning("Fyers refused symbols beyond its limit: %s", message)
            return set()
        if error.get("type") == SUBS_TYPE and pending:
            raise BrokerUnavailable(f"Fyers' subscription failed: {message}.")
        logger.warning("Fyers data socket: %s (%s)", message, code)
        return pending

    def _quote(self, data: dict[str, Any]) -> Quote | None:
        fyers_symbol = str(data.get("symbol") or "")
        with self._lock:
            symbol = self._symbols.get(fyers_symbol)
        if symbol is None:  # not ours, or a tick in flight when we unsubscribed
            return None
        return quote_from_hsm(symbol, data, lite=MODES[self.mode])
