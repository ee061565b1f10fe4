"""Dhan's live order updates through the `dhanhq` SDK's `OrderUpdate`.

Dhan's order-update socket takes one login message, `{"LoginReq": {"MsgCode": 42, "ClientId", "Token"},
"UserType": "SELF"}`, and then pushes `{"Type": "order_alert", "Data": {...}}` for every change to any order of that
client (placed from anywhere), with Dhan's PascalCase order fields (`OrderNo`, `Status`, `TradedQty`,
`CorrelationId`...).

The SDK's `OrderUpdate` reads its URL from `self.order_feed_wss`, handshakes without a timeout, prints the login
message (token included) to stdout and prints every message that is not an order alert. `RoutedOrderUpdate` keeps
the SDK's instance state and its alert dispatch (`handle_order_update` hands an alert to `on_update`) and replaces
the two printing parts: it connects to our URL with a bounded handshake and sends the login silently.

The stream drives the SDK's coroutines one receive at a time on a loop of its own and delivers each alert between
receives, with no loop running, because what it calls writes through the ORM, which refuses to run inside a running
loop. Dhan answers a refused login by closing the socket right away; a server close before any message, within
`LOGIN_REFUSAL_SECONDS` of the login and with a code other than "going away / restart / try later", is read as that
refusal (`SessionExpired`). Anything else that ends the connection is `BrokerUnavailable`, retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import websockets
from dhanhq import DhanContext
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from brokers.models import Broker, BrokerAccount
from brokers.protocol import BrokerUnavailable, InvalidInput, SessionExpired
from brokers.streams import OrderStream

if TYPE_CHECKING:
    from dhanhq.orderupdate import OrderUpdate

logger = logging.getLogger(__name__)
# The websockets library logs every frame at DEBUG, and the login frame carries the access token: this connection's
# library logger never goes below INFO, whatever the logging configuration says.
wire_logger = logging.getLogger(f"{__name__}.wire")
wire_logger.setLevel(logging.INFO)

LOGIN_MESSAGE_CODE = 42
ORDER_ALERT = "order_alert"
LOGIN_REFUSAL_SECONDS = 5.0
# Server close codes that say "come back later", never "who are you": going away, server error, restart, try again.
RETRYABLE_CLOSE_CODES = frozenset({1001, 1011, 1012, 1013, 1014})


def routed_order_update_class() -> type[OrderUpdate]:
    from dhanhq.orderupdate import OrderUpdate  # the Dhan SDK's order socket: loaded only when a Dhan stream runs

    class RoutedOrderUpdate(OrderUpdate):
        """The SDK's OrderUpdate, connecting to `url` with a bounded handshake and printing nothing."""

        def __init__(self, dhan_context: Any, *, url: str, open_timeout: float, on_update: Any) -> None:
            super().__init__(dhan_context)
            self.order_feed_wss = url
            self.open_timeout = open_timeout
            self.on_update = on_update  # the SDK hands every order alert to it
            self.ws: Any = None

        def login_message(self) -> dict[str, Any]:
            return {
                "LoginReq": {
                    "MsgCode": LOGIN_MESSAGE_CODE,
                    "ClientId": str(self.client_id),
                    "Token": str(self.access_token),
                },
                "UserType": "SELF",
            }

        async def open(self) -> None:
            self.ws = await websockets.connect(self.order_feed_wss, open_timeout=self.open_timeout, logger=wire_logger)
            await self.ws.send(json.dumps(self.login_message()))

        async def connect_order_update(self) -> None:
            """The SDK's entry point, without its print of the login message."""
            await self.open()
            async for message in self.ws:
                self.handle_order_update(json.loads(message))

        def handle_order_update(self, order_update: Any) -> Any:
            if isinstance(order_update, dict) and order_update.get("Type") == ORDER_ALERT:
                return super().handle_order_update(order_update)
            logger.debug("Dhan's order socket sent a message that is not an order alert; ignored")
            return None

    return RoutedOrderUpdate


class DhanOrderStream(OrderStream):
    """One Dhan account's order-update socket."""

    broker = Broker.DHAN
    url_setting = "DHAN_ORDER_SOCKET_URL"
    default_url = "wss://api-order-update.dhan.co"

    @classmethod
    def credentials(cls, account: BrokerAccount) -> tuple[str, str]:
        if account.broker != Broker.DHAN:
            raise InvalidInput(f"A Dhan order stream needs a Dhan account; {account} is {account.broker}.")
        session, credentials = account.session, account.credentials
        client_id = str(credentials.get("client_id") or session.get("broker_user_id") or account.client_id or "")
        return client_id, str(session.get("access_token") or "")

    def stream(self, stop: threading.Event) -> None:
        """Sets no event loop on the calling thread: the loop is the stream's own and closed on return."""
        if not self.identity or not self._access_token:
            raise SessionExpired("The Dhan account has no client id or access token; connect it again.")
        order_update = routed_order_update_class()(
            DhanContext(self.identity, self._access_token),
            url=self.url,
            open_timeout=self.connect_timeout,
            on_update=self._alert,
        )
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open(order_update))
            self._connected()
            refusal_window_ends = time.monotonic() + LOGIN_REFUSAL_SECONDS
            heard = False
            while not stop.is_set():
                message = loop.run_until_complete(self._next(order_update, heard, refusal_window_ends))
                if message is not None:
                    heard = True
                    order_update.handle_order_update(message)
        finally:
            if order_update.ws is not None:
                loop.run_until_complete(self._close(order_update))
            loop.close()

    def _alert(self, order_update: dict[str, Any]) -> None:
        self._deliver(order_update.get("Data"))

    async def _open(self, order_update: Any) -> None:
        try:
            await order_update.open()
        except InvalidStatus as error:
            if error.response.status_code in (401, 403):
                raise SessionExpired("Dhan refused the order-update socket: log in again.") from None
            raise BrokerUnavailable(f"Dhan's order-update socket answered HTTP {error.response.status_code}.") from None
        except ConnectionClosed:
            raise BrokerUnavailable("Dhan's order-update socket closed during the login.") from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise BrokerUnavailable(f"Could not reach Dhan's order-update socket ({type(error).__name__}).") from None

    async def _next(self, order_update: Any, heard: bool, refusal_window_ends: float) -> dict[str, Any] | None:
        try:
            raw = await asyncio.wait_for(order_update.ws.recv(), self.receive_poll_seconds)
        except TimeoutError:
            return None
        except ConnectionClosed as error:
            closed_by_dhan = error.rcvd is not None and error.rcvd.code not in RETRYABLE_CLOSE_CODES
            if closed_by_dhan and not heard and time.monotonic() < refusal_window_ends:
                raise SessionExpired(
                    "Dhan closed the order-update socket right after the login: the client id or token was refused."
                ) from None
            raise BrokerUnavailable(f"Dhan's order-update socket closed ({error}).") from None
        try:
            message = json.loads(raw)
        except (TypeError, ValueError):
            logger.info("%s: a message that is not JSON; ignored", self)
            return None
        return message if isinstance(message, dict) else None

    @staticmethod
    async def _close(order_update: Any) -> None:
        with contextlib.suppress(Exception):
            await order_update.ws.close()
