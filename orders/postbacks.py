"""Broker postbacks: order updates the broker pushes to us, applied through `order_apply_update` like any other
broker news (so a replayed or late postback adds nothing)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from decimal import InvalidOperation
from typing import Any, Literal

from algoterm.api.errors import ValidationFailed
from algoterm.ids import from_compact
from brokers.adapters.zerodha import order_from_kite
from brokers.models import Broker
from orders.models import Order, OrderSource
from orders.services import order_apply_update

logger = logging.getLogger(__name__)

PostbackResult = Literal["applied", "ignored"]


def _kite_order_for(payload: dict[str, Any]) -> Order | None:
    """Ours by the tag we gave the order (its compact id), else by Kite's order id; a tagged order that Kite already
    knows under another id is not this one."""
    orders = Order.objects.select_related("account").filter(account__broker=Broker.ZERODHA)
    broker_order_id = str(payload.get("order_id") or "")
    order_id = from_compact(str(payload.get("tag") or ""))
    order = orders.filter(pk=order_id).first() if order_id else None
    if order is not None and order.broker_order_id not in ("", broker_order_id):
        order = None
    if order is None and broker_order_id:
        order = orders.filter(broker_order_id=broker_order_id).first()
    return order


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
        update = order_from_kite(payload)
    except (KeyError, ValueError, TypeError, AttributeError, InvalidOperation) as error:
        raise ValidationFailed(
            "The postback is not a Kite order.", errors={"payload": [f"Missing or malformed field: {error}"]}
        ) from None
    order_apply_update(order_id=order.pk, update=update, source=OrderSource.BROKER, fresh=False)
    return "applied"
