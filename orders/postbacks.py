"""Broker postbacks and socket order updates: order updates the broker pushes to us, applied through
`order_apply_update` like any other broker news (so a replayed or late update adds nothing)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from decimal import InvalidOperation
from typing import Any, Literal

from algoterm.api.errors import ValidationFailed
from algoterm.ids import from_compact
from brokers.adapters.base import BrokerOrder
from brokers.adapters.zerodha import order_from_kite
from brokers.models import Broker
from orders.models import Order, OrderSource
from orders.services import order_apply_update

logger = logging.getLogger(__name__)

PostbackResult = Literal["applied", "ignored"]


class _NotAKiteOrder(Exception):
    pass


def _kite_order_for(payload: dict[str, Any], *, account_id: str | None = None) -> Order | None:
    """Ours by the tag we gave the order (its compact id), else by Kite's order id; a tagged order that Kite already
    knows under another id is not this one. With `account_id`, only that account's orders."""
    orders = Order.objects.select_related("account").filter(account__broker=Broker.ZERODHA)
    if account_id is not None:
        orders = orders.filter(account_id=account_id)
    broker_order_id = str(payload.get("order_id") or "")
    order_id = from_compact(str(payload.get("tag") or ""))
    order = orders.filter(pk=order_id).first() if order_id else None
    if order is not None and order.broker_order_id not in ("", broker_order_id):
        order = None
    if order is None and broker_order_id:
        order = orders.filter(broker_order_id=broker_order_id).first()
    return order


def _kite_update(payload: dict[str, Any]) -> BrokerOrder:
    try:
        return order_from_kite(payload)
    except (KeyError, ValueError, TypeError, AttributeError, InvalidOperation) as error:
        raise _NotAKiteOrder(f"Missing or malformed field: {error}") from None


def _kite_apply(order: Order, update: BrokerOrder) -> PostbackResult:
    order_apply_update(order_id=order.pk, update=update, source=OrderSource.BROKER, fresh=False)
    return "applied"


def kite_checksum(*, order_id: str, order_timestamp: str, api_secret: str) -> str:
    return hashlib.sha256(f"{order_id}{order_timestamp}{api_secret}".encode()).hexdigest()


def kite_postback_apply(*, payload: dict[str, Any]) -> PostbackResult:
    """Apply one Kite postback. Unknown orders are ignored (Kite also posts orders placed outside AlgoTerm); a
    checksum that the order's account's API secret does not produce is 400 and changes nothing."""
    order = _kite_order_for(payload)
    if order is None:
        logger.info("Kite postback for an order we do not know (%s) ignored", payload.get("order_id"))
        return "ignored"
    api_secret = str(order.account.credentials.get("api_secret") or "")
    expected = kite_checksum(
        order_id=str(payload.get("order_id") or ""),
        order_timestamp=str(payload.get("order_timestamp") or ""),
        api_secret=api_secret,
    )
    received = str(payload.get("checksum") or "")
    # A disconnected account's secret is wiped: its postbacks cannot be verified, so they count as forged.
    if not api_secret or not hmac.compare_digest(expected.encode(), received.encode()):
        raise ValidationFailed("The postback's checksum is wrong.", errors={"checksum": ["Does not match."]})
    try:
        update = _kite_update(payload)
    except _NotAKiteOrder as error:
        raise ValidationFailed("The postback is not a Kite order.", errors={"payload": [str(error)]}) from None
    return _kite_apply(order, update)


def kite_socket_update_apply(*, account_id: str, data: dict[str, Any]) -> PostbackResult:
    """Apply one order update from the Kite ticker opened with `account_id`'s access token. The socket is
    authenticated by that token, so there is no checksum; only that account's orders can match. Unknown orders and
    malformed updates are ignored and logged rather than raised: the caller is a market-data feed."""
    if not isinstance(data, dict):
        logger.info("Kite ticker order update for %s is not an object; ignored", account_id)
        return "ignored"
    order = _kite_order_for(data, account_id=account_id)
    if order is None:
        logger.info("Kite ticker order update (%s) matches no order of %s; ignored", data.get("order_id"), account_id)
        return "ignored"
    try:
        update = _kite_update(data)
    except _NotAKiteOrder as error:
        logger.info("Kite ticker order update for %s is not a Kite order (%s); ignored", order.pk, error)
        return "ignored"
    return _kite_apply(order, update)
