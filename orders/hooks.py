"""Hooks the order pipeline calls into floors above it: the pre-trade risk check.

The risk engine (rms) sits above orders, yet every order that adds exposure must pass its check before it goes out.
Orders owns the question (`OrderIntent`) and the place it is asked (`pre_trade_check_run`, inside the risk gate of
order placement and modification); the risk engine registers its answer from `RmsConfig.ready()`. The gate fails
closed: with no check registered, nothing is sent to a broker through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from accounts.models import User
from algoterm.api.errors import RiskRejected
from brokers.models import BrokerAccount

# The reasons the order pipeline gives itself (a RISK_REJECTED answer's `reason`); the risk engine's own are in rms.
EXIT_EXCEEDS_POSITION = "EXIT_EXCEEDS_POSITION"  # an exit grown past the position it closes would open another
RISK_ENGINE_UNAVAILABLE = "RISK_ENGINE_UNAVAILABLE"  # no pre-trade check is registered: refuse rather than guess


@dataclass(frozen=True)
class OrderIntent:
    """What the pre-trade check sees of an order about to be placed, or of a working order as a modification
    would leave it (`new_order` False: it is not another order of the day, and it needs margin only for
    `margin_value`, what the modification adds)."""

    account: BrokerAccount
    symbol: str
    side: str
    quantity: int
    lot_size: int
    order_type: str
    product: str
    reference_price: Decimal
    reduces_position: bool
    source: str
    new_order: bool = True
    margin_value: Decimal | None = None
    # What the order path has just read of the user's day, so the check need not read it again: orders placed today
    # and the (symbol, product) of their open positions. None: the check reads them itself.
    orders_today: int | None = None
    open_symbols: frozenset[tuple[str, str]] | None = None


class PreTradeCheck(Protocol):
    def __call__(self, *, user: User, intent: OrderIntent) -> None:
        """Return when the order may go out; raise `RiskRejected` (422 with `reason`) when it may not."""


_pre_trade_checks: list[PreTradeCheck] = []


def pre_trade_check_register(check: PreTradeCheck) -> None:
    """Make `check` the pre-trade check (registering again replaces it: one risk engine decides)."""
    _pre_trade_checks[:] = [check]


def pre_trade_check_run(*, user: User, intent: OrderIntent) -> None:
    """Ask the registered risk engine about `intent`. Without one, every order is refused: an order pipeline that
    cannot ask its risk engine must not send anything on its own judgement."""
    if not _pre_trade_checks:
        raise RiskRejected(
            "The risk engine is not available; no order can be placed or grown now.", reason=RISK_ENGINE_UNAVAILABLE
        )
    for check in _pre_trade_checks:
        check(user=user, intent=intent)
