"""Broker postbacks and socket order updates: order updates the broker pushes to us.

A push is a signal, never a fact. Kite's checksum covers only the order id and timestamp, Dhan's postback carries no
signature at all, and a socket message is only as good as the socket, so nothing in a pushed body (quantity, fills,
prices, status) is written: a push that names one of our orders makes us read that order from the broker's own
books, and what the books say is applied. A burst of pushes for one order costs one read: a read already queued (not
yet started) covers every push that arrives before it starts.

Every push names its order the same two ways, read here and nowhere else: by our tag (the order's compact id, which
the adapters send as Kite's `tag`, Dhan's `correlationId` and Fyers' `orderTag`) and by the broker's order id. The
tag wins unless the broker already knows our order under another id; matching is always among the orders of the
account(s) the push can speak for: the socket's own account, or the Dhan accounts of the postback's client id."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from decimal import InvalidOperation
from typing import Any, Literal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import QuerySet

from algoterm.api.errors import ValidationFailed
from algoterm.ids import from_compact
from algoterm.tasking import task_send
from brokers.gateway import kite_order_parse
from brokers.models import Broker
from brokers.protocol import BrokerOrder
from brokers.streams import pushed_order_tag
from orders.models import Order
from orders.services import order_refresh_from_broker

logger = logging.getLogger(__name__)

PostbackResult = Literal["applied", "ignored"]


class _NotAKiteOrder(Exception):
    pass


class _NotAnOrder(Exception):
    pass


@dataclass(frozen=True)
class _Named:
    """What a push says about which order it is: our tag and the broker's order id. The rest is never read."""

    tag: str
    broker_order_id: str


def _pushed_order_for(orders: QuerySet[Order], named: _Named) -> Order | None:
    """Ours by the tag we gave the order (its compact id), else by the broker's order id; a tagged order that the
    broker already knows under another id is not this one. `orders`: those the push can speak for."""
    orders = orders.select_related("account")
    order_id = from_compact(named.tag)
    order = orders.filter(pk=order_id).first() if order_id else None
    if order is not None and order.broker_order_id not in ("", named.broker_order_id):
        order = None
    if order is None and named.broker_order_id:
        order = orders.filter(broker_order_id=named.broker_order_id).first()
    return order


def _kite_order_for(payload: dict[str, Any], *, account_id: str | None = None) -> Order | None:
    """The order a Kite push names by its `tag` and `order_id`; with `account_id`, only that account's orders."""
    orders = Order.objects.filter(account__broker=Broker.ZERODHA)
    if account_id is not None:
        orders = orders.filter(account_id=account_id)
    named = _Named(tag=str(payload.get("tag") or ""), broker_order_id=str(payload.get("order_id") or ""))
    return _pushed_order_for(orders, named)


def _named_by(payload: dict[str, Any], *, broker: str, tag_field: str, id_field: str) -> _Named:
    """The order a Dhan or Fyers push names; `_NotAnOrder` when it names none (no usable order id)."""
    broker_order_id, wire_tag = payload.get(id_field), payload.get(tag_field)
    if isinstance(broker_order_id, bool) or not isinstance(broker_order_id, str | int) or broker_order_id == "":
        raise _NotAnOrder(f"{id_field} is missing or not an order id")
    if wire_tag is not None and not isinstance(wire_tag, str):
        raise _NotAnOrder(f"{tag_field} is not text")
    return _Named(tag=pushed_order_tag(broker=broker, wire_tag=wire_tag), broker_order_id=str(broker_order_id))


# How each broker's order socket names the order in what it pushes (Dhan: the alert's `Data`; Fyers: the SDK's
# renamed `orders` object, its `orderTag` being "1:<tag>").
SOCKET_FIELDS: dict[str, tuple[str, str]] = {
    Broker.DHAN: ("CorrelationId", "OrderNo"),
    Broker.FYERS: ("orderTag", "id"),
}


def _kite_update(payload: dict[str, Any]) -> BrokerOrder:
    try:
        return kite_order_parse(payload)
    except (KeyError, ValueError, TypeError, AttributeError, InvalidOperation) as error:
        raise _NotAKiteOrder(f"Missing or malformed field: {error}") from None


def _refresh_key(order_id: str) -> str:
    return f"orders:push-refresh:{order_id}"


def _kite_apply(order: Order, update: BrokerOrder) -> PostbackResult:
    """`update` was parsed only to refuse what is not a Kite order; the order is re-read from the broker."""
    order_refresh_request(order_id=order.pk)
    return "applied"


def order_refresh_request(*, order_id: str) -> None:
    """Queue one read of the order from the broker, unless one is queued and not yet started (it will see
    whatever this push announced)."""
    if not cache.add(_refresh_key(order_id), "queued", timeout=settings.ORDER_PUSH_REFRESH_COALESCE_SECONDS):
        return

    def enqueue() -> None:
        try:
            task_send(name="orders.tasks.refresh_pushed_order", args=(order_id,))
        except Exception:  # the broker must get its fast answer; reconciliation reads the book anyway
            cache.delete(_refresh_key(order_id))
            logger.exception("the broker read announced by a push for %s could not be queued", order_id)

    transaction.on_commit(enqueue)


def order_refresh_pushed(*, order_id: str) -> Order:
    """The queued read: pushes from now on queue another, so none is lost to this one being under way."""
    cache.delete(_refresh_key(order_id))
    return order_refresh_from_broker(order_id=order_id)


def kite_checksum(*, order_id: str, order_timestamp: str, api_secret: str) -> str:
    return hashlib.sha256(f"{order_id}{order_timestamp}{api_secret}".encode()).hexdigest()


def kite_postback_apply(*, payload: dict[str, Any]) -> PostbackResult:
    """Take one Kite postback as a signal. Unknown orders are ignored (Kite also posts orders placed outside
    AlgoTerm); a checksum that the order's account's API secret does not produce is 400 and changes nothing; a
    valid one makes us read the order from Kite's books (its body's fields are never used)."""
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
    """Take one order update from the Kite ticker opened with `account_id`'s access token as a signal: only that
    account's orders can match, and a match is read from Kite's books. Unknown orders and malformed updates are
    ignored and logged rather than raised: the caller is a market-data feed."""
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


def broker_socket_update_apply(*, account_id: str, broker: str, data: dict[str, Any]) -> PostbackResult:
    """Take one order update pushed on `account_id`'s order socket (Dhan's, Fyers'; Kite's ticker goes through
    `kite_socket_update_apply`) as a signal: only that account's orders can match, and a match is read from the
    broker's books. Unknown orders and malformed updates are ignored and logged rather than raised: the caller is a
    stream that must keep listening."""
    if broker == Broker.ZERODHA:
        return kite_socket_update_apply(account_id=account_id, data=data)
    if broker not in SOCKET_FIELDS or not isinstance(data, dict):
        logger.info("%s order update for %s is not an order object; ignored", broker, account_id)
        return "ignored"
    tag_field, id_field = SOCKET_FIELDS[broker]
    try:
        named = _named_by(data, broker=broker, tag_field=tag_field, id_field=id_field)
    except _NotAnOrder as error:
        logger.info("%s order update for %s names no order (%s); ignored", broker, account_id, error)
        return "ignored"
    order = _pushed_order_for(Order.objects.filter(account_id=account_id, account__broker=broker), named)
    if order is None:
        logger.info("%s order update (%s) matches no order of %s; ignored", broker, named.broker_order_id, account_id)
        return "ignored"
    order_refresh_request(order_id=order.pk)
    return "applied"


def dhan_postback_apply(*, payload: dict[str, Any]) -> PostbackResult:
    """Take one Dhan postback as a signal. Dhan signs nothing, so the body can only ever make us read an order from
    Dhan's books: its account is found by `dhanClientId` (live Dhan accounts of that client id) and its order among
    theirs, by `correlationId` (our tag) else `orderId`. A body that names no order is 400; an order we do not know
    is ignored (Dhan posts every order of the client, placed anywhere)."""
    client_id = payload.get("dhanClientId")
    if not isinstance(client_id, str | int) or isinstance(client_id, bool) or str(client_id) == "":
        raise ValidationFailed("The postback is not a Dhan order.", errors={"dhanClientId": ["Missing."]})
    try:
        named = _named_by(payload, broker=Broker.DHAN, tag_field="correlationId", id_field="orderId")
    except _NotAnOrder as error:
        raise ValidationFailed("The postback is not a Dhan order.", errors={"payload": [str(error)]}) from None
    orders = Order.objects.filter(
        account__broker=Broker.DHAN, account__client_id=str(client_id), account__deleted_at__isnull=True
    )
    order = _pushed_order_for(orders, named)
    if order is None:
        logger.info("Dhan postback for an order we do not know (%s) ignored", named.broker_order_id)
        return "ignored"
    order_refresh_request(order_id=order.pk)
    return "applied"
