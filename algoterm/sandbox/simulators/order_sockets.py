"""What the brokers' order-update socket simulators share: they hear the simulated exchange's order changes while
they run, and know which access token belongs to which broker client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Self

from algoterm.sandbox.simulators.kite_ticker import ThreadedWebSocketServer
from brokers import exchange


class OrderSocketServer(ThreadedWebSocketServer):
    """A WebSocket server whose `_orders_changed(venue, client_id, order_ids)` is called for every order change on
    the simulated exchange while it runs. Tokens registered here, else `authorize` (e.g. the REST simulator's
    sessions), say whose a credential is."""

    def __init__(self, *, port: int = 0, authorize: Callable[[str], str | None] | None = None) -> None:
        super().__init__(port=port)
        self.authorize = authorize
        self._tokens: dict[str, str] = {}  # credential -> the broker's client id
        self._tokens_lock = threading.Lock()

    def start(self) -> Self:
        super().start()
        exchange.order_changes_listen(self._orders_changed)
        return self

    def stop(self) -> None:
        exchange.order_changes_unlisten(self._orders_changed)
        super().stop()

    def _orders_changed(self, venue: str, client_id: str, order_ids: list[str]) -> None:
        raise NotImplementedError

    def _token_set(self, credential: str, client_id: str) -> None:
        with self._tokens_lock:
            self._tokens[credential] = client_id

    def revoke_tokens(self) -> None:
        with self._tokens_lock:
            self._tokens.clear()

    def _owner_of(self, credential: str) -> str | None:
        with self._tokens_lock:
            owner = self._tokens.get(credential)
        if owner is None and self.authorize is not None and credential:
            owner = self.authorize(credential)
        return owner
