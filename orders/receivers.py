"""How the orders app hears what is announced, and what it registers with the floors below it. `OrdersConfig.ready()`
calls `receivers_connect()` once.

From below: an order update on a Zerodha account's Kite ticker or on a Dhan or Fyers account's order socket, and
paper orders a quote filled. From its own services (`orders.signals`): the changes pushed to the user's WebSocket,
rendered by `orders.presenters`. Registered below: the orders part of the /ws/events snapshot, and the store of the
API layer's Idempotency-Key claims.

Importing `orders.tasks` here also registers the app's tasks in every process, which the services' sends by task
name (`algoterm.tasking`) rely on.
"""

from __future__ import annotations

from typing import Any

from algoterm import realtime
from algoterm.api.idempotency import IdempotencyStore, idempotency_store_register
from brokers.models import Venue
from brokers.services import paper_order_changes_listen
from brokers.signals import broker_order_update_received
from marketdata.signals import kite_order_update_received
from orders import postbacks, presenters, services, tasks
from orders.models import Order, Position, Trade
from orders.signals import order_changed, position_changed, trade_recorded


def on_kite_order_update_received(sender: object, *, account_id: str, data: dict[str, Any], **kwargs: object) -> None:
    """An order update that came on a Zerodha account's Kite ticker: applied as a postback for that account."""
    postbacks.kite_socket_update_apply(account_id=account_id, data=data)


def on_broker_order_update_received(
    sender: object, *, account_id: str, broker: str, data: dict[str, Any], **kwargs: object
) -> None:
    """An order update that came on a Dhan or Fyers account's order socket: a signal to read that account's order."""
    postbacks.broker_socket_update_apply(account_id=account_id, broker=broker, data=data)


def on_paper_fills(venue: str, client_id: str, order_ids: list[str]) -> None:
    """A quote filled resting paper orders: the paper account (whose exchange client id is our account id) is
    reconciled at once, as a broker's postback would make us do."""
    if venue == Venue.PAPER:
        tasks.reconcile_account.delay(client_id)


def on_order_changed(sender: object, *, order: Order, **kwargs: object) -> None:
    realtime.push_to_user(user_id=order.user_id, message_type="order_update", payload=presenters.order_payload(order))


def on_trade_recorded(sender: object, *, trade: Trade, **kwargs: object) -> None:
    realtime.push_to_user(user_id=trade.user_id, message_type="trade", payload=presenters.trade_payload(trade))


def on_position_changed(sender: object, *, position: Position, **kwargs: object) -> None:
    realtime.push_to_user(
        user_id=position.user_id, message_type="position_update", payload=presenters.position_payload(position)
    )


IDEMPOTENCY_STORE = IdempotencyStore(
    claim_create=services.idempotency_claim_create,
    claim_get=services.idempotency_claim_get,
    claim_take_over=services.idempotency_claim_take_over,
    claim_complete=services.idempotency_claim_complete,
    claim_release=services.idempotency_claim_release,
    acting_under=services.idempotency_claim_acting,
    done_under=services.orders_settle_under_claim,
    nothing_sent_under=services.idempotency_claim_nothing_sent,
)


def receivers_connect() -> None:
    kite_order_update_received.connect(on_kite_order_update_received, dispatch_uid="orders.kite_socket_update")
    broker_order_update_received.connect(on_broker_order_update_received, dispatch_uid="orders.broker_socket_update")
    order_changed.connect(on_order_changed, dispatch_uid="orders.push_order_update")
    trade_recorded.connect(on_trade_recorded, dispatch_uid="orders.push_trade")
    position_changed.connect(on_position_changed, dispatch_uid="orders.push_position_update")
    paper_order_changes_listen(on_paper_fills)
    realtime.snapshot_part_register(presenters.events_snapshot)
    idempotency_store_register(IDEMPOTENCY_STORE)
