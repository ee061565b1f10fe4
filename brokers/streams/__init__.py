"""Order sockets: the WebSocket on which a broker pushes news of one account's orders (Dhan's order-update socket,
Fyers' order socket; Zerodha's order updates ride on its market-data ticker, see marketdata.feeds.kite).

An `OrderStream` is one connection's life: it connects through the broker's SDK with the account's token, hands
every pushed order object to `on_update`, and ends by returning (asked to stop) or raising (`SessionExpired` when
the broker refused the token, `BrokerUnavailable` for anything else). Reconnecting is the supervisor's job
(`brokers.streams.supervisor`): one stream per live Dhan or Fyers account, with a backoff, and none while a refused
token stays the same.

What a stream receives is only a signal that an order changed. It is announced with
`brokers.signals.broker_order_update_received`; the orders app reads the named order from the broker's books.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from brokers.models import Broker, BrokerAccount
from brokers.signals import broker_order_update_received

logger = logging.getLogger(__name__)

OrderUpdateHandler = Callable[[dict[str, Any]], None]


def order_update_announce(*, account_id: str, broker: str, data: dict[str, Any]) -> None:
    """Tell the floors above that `account_id`'s order socket pushed `data` (the broker's order object)."""
    broker_order_update_received.send(sender=OrderStream, account_id=account_id, broker=broker, data=data)


class OrderStream(abc.ABC):
    """One account's order socket (see the module docstring). Subclasses name the broker, the URL setting and how
    an account's credentials are read, and implement `stream`."""

    broker: str = ""
    url_setting: str = ""
    default_url: str = ""
    connect_timeout_seconds: float = 15.0
    receive_poll_seconds: float = 0.2  # how often a waiting stream looks at its stop event

    def __init__(
        self,
        *,
        account_id: str,
        identity: str,
        access_token: str,
        on_update: OrderUpdateHandler | None = None,
        on_connected: Callable[[], None] | None = None,
        url: str | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.account_id = account_id
        self.identity = identity  # Dhan's client id, Fyers' app id: who the token is for
        self._access_token = access_token
        self.on_update = on_update or self._announce
        self.on_connected = on_connected
        self.url = url or getattr(settings, self.url_setting, "") or self.default_url
        self.connect_timeout = self.connect_timeout_seconds if connect_timeout is None else connect_timeout
        self.connections_opened = 0
        self.updates_received = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} account={self.account_id} {self.identity}>"

    # --- credentials ---------------------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def credentials(cls, account: BrokerAccount) -> tuple[str, str]:
        """(identity, access token) of the account's live session; empty strings when it has none."""

    @classmethod
    def from_account(cls, account: BrokerAccount, **options: Any) -> OrderStream:
        identity, access_token = cls.credentials(account)
        return cls(account_id=account.pk, identity=identity, access_token=access_token, **options)

    @classmethod
    def fingerprint(cls, account: BrokerAccount) -> str:
        """Changes whenever the account's token (or whom it is for) changes; never reveals the token."""
        identity, access_token = cls.credentials(account)
        return hashlib.sha256(f"{cls.broker}\x00{identity}\x00{access_token}".encode()).hexdigest()

    # --- the connection ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def stream(self, stop: threading.Event) -> None:
        """Connect, log in and deliver every pushed order until `stop` is set (return) or the connection ends
        (raise `SessionExpired` when the broker refused the token, `BrokerUnavailable` otherwise)."""

    def _connected(self) -> None:
        self.connections_opened += 1
        if self.on_connected is not None:
            self.on_connected()

    def _deliver(self, data: Any) -> None:
        """Hand one pushed order object on; a handler's failure is logged and the stream keeps listening."""
        if not isinstance(data, dict):
            logger.info("%s pushed an order update that is not an object; ignored", self)
            return
        self.updates_received += 1
        close_old_connections()  # a long-lived thread: drop a database connection the server has closed meanwhile
        try:
            self.on_update(data)
        except Exception:
            logger.exception("%s: handling a pushed order update failed", self)

    def _announce(self, data: dict[str, Any]) -> None:
        order_update_announce(account_id=self.account_id, broker=self.broker, data=data)


def order_stream_class(broker: str) -> type[OrderStream]:
    """The order-socket stream of `broker` (its SDK loads with it); KeyError for brokers without one here."""
    if broker == Broker.DHAN:
        from brokers.streams.dhan import DhanOrderStream

        return DhanOrderStream
    if broker == Broker.FYERS:
        from brokers.streams.fyers import FyersOrderStream

        return FyersOrderStream
    raise KeyError(broker)


STREAMED_BROKERS: tuple[str, ...] = (Broker.DHAN, Broker.FYERS)


def pushed_order_tag(*, broker: str, wire_tag: Any) -> str:
    """Our tag (the order's compact id) as a push carries it: Fyers echoes it as "1:<tag>" ("2:Untagged" when there
    is none); Dhan's correlation id is the tag itself."""
    if broker == Broker.FYERS:
        from brokers.adapters.fyers import tag_from_fyers

        return tag_from_fyers(wire_tag)
    return str(wire_tag or "") if isinstance(wire_tag, str | int) else ""
