"""Fyers' order socket through the `fyers-apiv3` SDK's `FyersOrderSocket`.

The SDK opens `wss://socket.fyers.in/trade/v3` with websocket-client, authenticating with the handshake header
`authorization: <app id>:<access token>`, subscribes with `{"T": "SUB_ORD", "SLIST": ["orders"], "SUB_T": 1}`
("OnOrders") and pings with a text "ping" every 10 seconds. Fyers pushes `{"s": "ok", "orders": {...}}` with its short
field names (`id`, `org_ord_status`, `qty_filled`, `ordertag`...), which the SDK renames (`id`, `status`,
`filledQty`, `orderTag`...) before calling `on_orders`.

Quirks of the SDK that `RoutedOrderSocket` overrides:

* The class is a process-wide singleton (`__new__` hands back the first instance): every account needs its own.
* Its URL is the name-mangled instance attribute `_FyersOrderSocket__url`: set per instance.
* It reconnects by itself (sleeping 5, 10 ... seconds inside the socket's thread): off (`reconnect=False`); the
  supervisor reconnects with its backoff.
* `connect()` sleeps two seconds after starting the socket's thread, and the thread keeps the websocket-client app to
  itself until the socket opens: `__init_connection` is the SDK's with the app kept (so closing can shut a pending
  handshake) and its thread a daemon (so is the ping thread it starts). The stream waits for the socket to open, at
  most `connect_timeout`.
* Its ping thread sleeps 10 seconds between checks: here it waits on an event that closing sets.
* Its `close_connection` joins a thread it never started: `close` sends the close frame and lets the socket's reader
  see the answer (closing the socket under the reader would leave it waiting forever).
* It prints trade, position and other messages that have no callback: each gets one that ignores it.
* It opens a log file in `log_path`: the SDK's log directory under the system temp directory, as the adapter's.

websocket-client offers no handshake timeout that is not process-wide. A socket that has not opened after
`connect_timeout` is given up (`BrokerUnavailable`): its socket is shut, and should it open meanwhile it is closed at
once, unsubscribed.

A refused token is refused at the handshake (HTTP 401 or 403): `SessionExpired`. Callbacks run on the SDK's threads
and only queue what they got; the stream delivers it on its own thread, which holds the database connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import websocket

from brokers.adapters.fyers import LOG_DIRECTORY
from brokers.models import Broker, BrokerAccount
from brokers.protocol import BrokerUnavailable, InvalidInput, SessionExpired
from brokers.streams import OrderStream

if TYPE_CHECKING:
    from fyers_apiv3.FyersWebsocket.order_ws import FyersOrderSocket

logger = logging.getLogger(__name__)

PING_SECONDS = 10.0
CLOSE_WAIT_SECONDS = 1.0
JOIN_SECONDS = 2.0
REFUSED_STATUSES = frozenset({401, 403})
_CLOSED = object()  # queued when the socket has closed


def routed_order_socket_class() -> type[FyersOrderSocket]:
    from fyers_apiv3.FyersWebsocket.order_ws import FyersOrderSocket  # loaded only when a Fyers stream runs

    class RoutedOrderSocket(FyersOrderSocket):
        """The SDK's order socket for one account and URL, without its own reconnects (see the module docstring)."""

        def __new__(cls, *args: Any, **kwargs: Any) -> RoutedOrderSocket:
            return object.__new__(cls)

        def __init__(self, *, authorization: str, url: str, events: queue.SimpleQueue, ping_seconds: float) -> None:
            os.makedirs(LOG_DIRECTORY, exist_ok=True)
            self.events = events
            self.error: Any = None
            self.opened = threading.Event()
            self.finished = threading.Event()
            self.abandoned = False
            self.ping_seconds = ping_seconds
            self.app: Any = None
            self.t: threading.Thread | None = None
            super().__init__(
                access_token=authorization,
                write_to_file=False,
                log_path=LOG_DIRECTORY,
                on_orders=self._orders,
                on_trades=self._ignored,  # without a callback of its own, the SDK prints what it gets
                on_positions=self._ignored,
                on_general=self._ignored,
                on_error=self._error,
                on_close=self._closed,
                reconnect=False,
            )
            self._FyersOrderSocket__url = url
            handler = self.order_logger.logger_handler
            if handler not in self.order_logger._logger.handlers:  # the SDK's logger was configured by an earlier one
                handler.close()

        def start(self) -> None:
            self._FyersOrderSocket__init_connection()

        def close(self) -> None:
            """Say goodbye and wait for the socket's thread: the server answers a close at once, which wakes the
            thread's reader; a server that does not answer (or a handshake still pending) has its socket shut."""
            self.abandoned = True
            self.restart_flag = False
            app = self.app
            if app is not None:
                app.keep_running = False
                sock = app.sock
                if sock is not None and sock.connected:
                    with contextlib.suppress(Exception):
                        sock.send_close()
                if not self.finished.wait(CLOSE_WAIT_SECONDS if sock is not None and sock.connected else 0):
                    raw = getattr(app.sock, "sock", None)  # the TCP socket, there once connected, handshake or not
                    if raw is not None:
                        with contextlib.suppress(OSError):
                            raw.shutdown(socket.SHUT_RDWR)  # wakes the reader (websocket-client's abort waits for
                            # the handshake to have finished)
            self.finished.set()
            if self.t is not None and self.t is not threading.current_thread():
                self.t.join(JOIN_SECONDS)  # a TCP connect still pending ends on its own, in a daemon thread

        # --- the SDK's hooks ------------------------------------------------------------------------------------

        def _FyersOrderSocket__init_connection(self) -> None:  # noqa: N802 - the SDK's private name, overridden
            self.app = websocket.WebSocketApp(
                self._FyersOrderSocket__url,
                header={"authorization": self._FyersOrderSocket__access_token},
                on_message=lambda ws, message: self._FyersOrderSocket__on_message(message),
                on_error=lambda ws, error: self.On_error(error),
                on_close=lambda ws, code, reason: self._FyersOrderSocket__on_close(ws, code, reason),
                on_open=lambda ws: self._FyersOrderSocket__on_open(ws),
            )
            self.t = threading.Thread(target=self.app.run_forever, name="fyers-order-socket", daemon=True)
            self.t.start()

        def _FyersOrderSocket__on_open(self, ws: Any) -> None:  # noqa: N802
            if self.abandoned:  # it opened after the stream gave up waiting
                ws.close()
                return
            super()._FyersOrderSocket__on_open(ws)
            self.subscribe("OnOrders")
            self.opened.set()

        def _FyersOrderSocket__ping(self) -> None:  # noqa: N802
            while not self.finished.wait(self.ping_seconds):
                app = self.app
                if app is None or app.sock is None or not app.sock.connected:
                    return
                try:
                    app.send("ping")
                except Exception:  # the socket closed between the check and the send; the close reports it
                    return

        def _orders(self, message: Any) -> None:
            if isinstance(message, dict):
                self.events.put(message.get("orders"))

        @staticmethod
        def _ignored(message: Any) -> None:
            logger.debug("Fyers' order socket sent a message that is not about an order; ignored")

        def _error(self, error: Any) -> None:
            if self.error is None:
                self.error = error

        def _closed(self, message: Any) -> None:
            self.finished.set()
            self.events.put(_CLOSED)

    return RoutedOrderSocket


def _refused(error: Any) -> bool:
    return getattr(error, "status_code", None) in REFUSED_STATUSES


class FyersOrderStream(OrderStream):
    """One Fyers account's order socket."""

    broker = Broker.FYERS
    url_setting = "FYERS_ORDER_SOCKET_URL"
    default_url = "wss://socket.fyers.in/trade/v3"
    ping_seconds = PING_SECONDS

    @classmethod
    def credentials(cls, account: BrokerAccount) -> tuple[str, str]:
        if account.broker != Broker.FYERS:
            raise InvalidInput(f"A Fyers order stream needs a Fyers account; {account} is {account.broker}.")
        return str(account.credentials.get("client_id") or ""), str(account.session.get("access_token") or "")

    def stream(self, stop: threading.Event) -> None:
        if not self.identity or not self._access_token:
            raise SessionExpired("The Fyers account has no app id or access token; log in again.")
        events: queue.SimpleQueue = queue.SimpleQueue()
        order_socket = routed_order_socket_class()(
            authorization=f"{self.identity}:{self._access_token}",
            url=self.url,
            events=events,
            ping_seconds=self.ping_seconds,
        )
        order_socket.start()
        try:
            self._wait_open(order_socket, stop)
            if stop.is_set():
                return
            self._connected()
            while not stop.is_set():
                try:
                    event = events.get(timeout=self.receive_poll_seconds)
                except queue.Empty:
                    continue
                if event is _CLOSED:
                    raise BrokerUnavailable(f"Fyers' order socket closed ({type(order_socket.error).__name__}).")
                self._deliver(event)
        finally:
            order_socket.close()

    def _wait_open(self, order_socket: Any, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.connect_timeout
        while not order_socket.opened.is_set() and not stop.is_set():
            if order_socket.finished.is_set():
                if _refused(order_socket.error):
                    raise SessionExpired("Fyers refused the order socket's token: log in again.")
                raise BrokerUnavailable(f"Could not open Fyers' order socket ({type(order_socket.error).__name__}).")
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(f"Fyers' order socket did not open within {self.connect_timeout:g}s.")
            order_socket.opened.wait(self.receive_poll_seconds)
