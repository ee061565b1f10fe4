"""Every write of the order pipeline: place, modify, cancel, apply broker updates, reconcile, exits, square-off.

Placing is deliberately not one transaction: the order is committed as SUBMITTING *before* the broker is called, so
a crash or a lost answer leaves a row that reconciliation settles from the broker's order book by our tag. Nothing
here ever sends an order to a broker twice.

Row locks, so concurrent placing, fills, exits, reconciliation and the RMS never deadlock: a transaction locks at
most one order row, then that order's position row, in that order, and nothing else of ours: `of=("self",)` on every
`select_for_update` with a join, so the joined account and user rows are never locked. Broker calls (and with them
the paper exchange's own account locks) happen outside these transactions, except reads of the broker's books.

The package is the app's service API: callers import from `orders.services`. Its modules, each importing only
from those before it: `transitions` (status moves, pushes, the shared roles), `validation`, `exposure` (what is
held and what exits cover), `idempotency`, `updates` (broker news, fills, positions), `placement`,
`modify_cancel`, `exits` (target, stop-loss, OCO, trailing), `reconcile`, `square_off`, `bulk`. A fill's
follow-up (exits, OCO) is the one call from a lower module to a higher one: `exits` connects it to `updates`.
"""

from orders.services.bulk import BulkResult, LegResult, bulk_result_from_orders, orders_place_bulk
from orders.services.exits import (
    exits_fit_position,
    order_exits_place,
    order_fill_follow_up,
    order_oco_settle,
    stops_trail,
)
from orders.services.idempotency import idempotency_records_purge, orders_placed_under
from orders.services.modify_cancel import order_cancel, order_modify
from orders.services.placement import order_place, order_submit, risk_gate
from orders.services.reconcile import (
    accounts_needing_reconcile,
    order_refresh_from_broker,
    order_settle_from_broker,
    orders_reconcile,
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
    "orders_reconcile",
    "position_apply_fill",
    "positions_square_off",
    "quantities_within_freeze",
    "risk_gate",
    "stops_trail",
]
