"""Every write of the order pipeline: place, modify, cancel, apply broker updates, reconcile, exits, square-off.

Placing is deliberately not one transaction: the order is committed as SUBMITTING *before* the broker is called, so
a crash or a lost answer leaves a row that reconciliation settles from the broker's order book by our tag. Nothing
here ever sends an order to a broker twice.

Row locks, so concurrent placing, fills, exits, reconciliation and the RMS never deadlock: a transaction locks at
most one order row, then that order's position row, in that order, and nothing else of ours: every lock is taken
through `orders.locks`, of the row's own table, so the joined account and user rows are never locked. Broker calls
(and with them the paper exchange's own account locks) happen outside these transactions, except reads of the
broker's books.

The package is the app's service API: callers import from `orders.services`. Its modules, each importing only
from those before it: `transitions` (status moves, the shared roles), `validation`, `exposure` (what is held and
what exits cover), `idempotency`, `updates` (broker news, fills, positions), `placement`, `modify_cancel`, `exits`
(target, stop-loss, OCO, trailing), `reconcile`, `square_off`, `bulk`. A fill's follow-up (exits, OCO) is the
one call from a lower module to a higher one: `exits` connects it to `updates`.

What the services cause outside themselves goes by name or by announcement, never by import: follow-up tasks are
queued by their registered name (`algoterm.tasking`), pushes to the user's WebSocket and the risk engine's
re-evaluation after a fill are `orders.signals` (rendered by `orders.presenters`), and the pre-trade check is the
risk engine's, registered through `orders.hooks`.
"""

from orders.services.bulk import BulkResult, LegResult, bulk_result_from_orders, orders_place_bulk
from orders.services.exits import (
    exits_fit_position,
    order_exits_place,
    order_fill_follow_up,
    order_oco_settle,
    stops_trail,
)
from orders.services.idempotency import (
    idempotency_claim_acting,
    idempotency_claim_complete,
    idempotency_claim_create,
    idempotency_claim_get,
    idempotency_claim_nothing_sent,
    idempotency_claim_release,
    idempotency_claim_take_over,
    idempotency_records_purge,
    orders_placed_under,
    orders_placed_under_claim,
)
from orders.services.modify_cancel import order_cancel, order_modify
from orders.services.placement import order_place, order_submit, risk_gate
from orders.services.reconcile import (
    accounts_needing_reconcile,
    order_refresh_from_broker,
    order_settle_from_broker,
    orders_reconcile,
    orders_settle_under_claim,
)
from orders.services.square_off import SquareOffResult, positions_square_off, quantities_within_freeze
from orders.services.updates import order_apply_update, order_refresh, position_apply_fill
from orders.services.validation import OrderSpec, ValidatedOrder, order_validate

__all__ = [
    "BulkResult",
    "LegResult",
    "OrderSpec",
    "SquareOffResult",
    "ValidatedOrder",
    "accounts_needing_reconcile",
    "bulk_result_from_orders",
    "exits_fit_position",
    "idempotency_claim_acting",
    "idempotency_claim_complete",
    "idempotency_claim_create",
    "idempotency_claim_get",
    "idempotency_claim_nothing_sent",
    "idempotency_claim_release",
    "idempotency_claim_take_over",
    "idempotency_records_purge",
    "order_apply_update",
    "order_cancel",
    "order_exits_place",
    "order_fill_follow_up",
    "order_modify",
    "order_oco_settle",
    "order_place",
    "order_refresh",
    "order_refresh_from_broker",
    "order_settle_from_broker",
    "order_submit",
    "order_validate",
    "orders_place_bulk",
    "orders_placed_under",
    "orders_placed_under_claim",
    "orders_reconcile",
    "orders_settle_under_claim",
    "position_apply_fill",
    "positions_square_off",
    "quantities_within_freeze",
    "risk_gate",
    "stops_trail",
]
