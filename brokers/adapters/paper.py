"""The built-in paper broker: the simulated exchange, reached directly (no HTTP)."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import transaction

from brokers import exchange
from brokers.models import SimAccount, SimOrder, Venue
from brokers.prices import quote_for
from brokers.protocol import (
    BrokerAdapter,
    BrokerOrder,
    BrokerPosition,
    BrokerSession,
    BrokerTrade,
    Funds,
    Holding,
    ModifyRequest,
    OrderRequest,
    Quote,
    split_symbol,
)


class PaperAdapter(BrokerAdapter):
    broker = "paper"
    uses_oauth = False

    def __repr__(self) -> str:
        return f"PaperAdapter(account={self.account_ref})"

    def _opening_balance(self) -> Decimal:
        return Decimal(str(self.credentials.get("opening_balance") or settings.PAPER_OPENING_BALANCE))

    def _account(self) -> SimAccount:
        return exchange.exchange_account(
            venue=Venue.PAPER, client_id=self.account_ref, opening_balance=self._opening_balance()
        )

    def complete_login(self, *, params: dict[str, str], redirect_uri: str) -> BrokerSession:
        self._account()
        return BrokerSession(access_token="paper", broker_user_id=self.account_ref)

    def place_order(self, request: OrderRequest) -> str:
        with transaction.atomic():
            account = exchange.exchange_account_locked(
                venue=Venue.PAPER, client_id=self.account_ref, opening_balance=self._opening_balance()
            )
            order = exchange.place_locked(account=account, request=request)
        self._placed = {order.order_id: order}
        return order.order_id

    def modify_order(self, broker_order_id: str, request: ModifyRequest) -> None:
        exchange.modify(account=self._account(), order_id=broker_order_id, request=request)

    def cancel_order(self, broker_order_id: str) -> None:
        exchange.cancel(account=self._account(), order_id=broker_order_id)

    def orders(self) -> list[BrokerOrder]:
        return [exchange.to_broker_order(order) for order in exchange.orders(account=self._account())]

    def order_as_placed(self, broker_order_id: str) -> BrokerOrder | None:
        """The order this adapter just placed, as the exchange left it then (filled, resting or rejected), without
        another read; None for any other. Answered once. A quote that fills it later is announced (and reconciled)
        like any fill of a resting order."""
        placed: SimOrder | None = getattr(self, "_placed", {}).pop(broker_order_id, None)
        return exchange.to_broker_order(placed) if placed is not None else None

    def order(self, broker_order_id: str) -> BrokerOrder:
        return self.order_as_placed(broker_order_id) or exchange.to_broker_order(
            exchange.get_order(account=self._account(), order_id=broker_order_id)
        )

    def orders_by_tag(self, tag: str) -> list[BrokerOrder]:
        return [exchange.to_broker_order(order) for order in self._account().orders.filter(tag=tag)]

    def trades(self) -> list[BrokerTrade]:
        return exchange.trades(account=self._account())

    def positions(self) -> list[BrokerPosition]:
        return exchange.positions(account=self._account())

    def holdings(self) -> list[Holding]:
        return exchange.holdings(account=self._account())

    def funds(self) -> Funds:
        return exchange.funds(account=self._account())

    def quotes(self, symbols: list[str]) -> dict[str, Quote]:
        for symbol in symbols:
            split_symbol(symbol)
        return {symbol: quote_for(symbol) for symbol in symbols}
