"""Multi-leg orders: validate every leg, send buys first, roll back with all-or-none."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import User
from algoterm.api.errors import AppError, InvalidState, NotFound, ValidationFailed
from brokers.gateway import require_connected
from brokers.protocol import BrokerError, Side
from orders.models import Order, OrderSource, OrderStatus
from orders.services.modify_cancel import order_cancel
from orders.services.placement import order_place
from orders.services.validation import OrderSpec, _add, order_validate


@dataclass(frozen=True)
class LegResult:
    index: int
    order: Order | None
    error_code: str = ""
    detail: str = ""
    cancelled: bool = False
    not_sent: bool = False

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.not_sent:
            return "not_sent"
        return "failed" if self.error_code else "placed"


@dataclass(frozen=True)
class BulkResult:
    legs: list[LegResult]
    all_or_none: bool

    @property
    def status(self) -> str:
        """placed (every leg), rolled_back (all_or_none undid them all), partial (some stand), or failed."""
        statuses = {leg.status for leg in self.legs}
        if statuses == {"placed"}:
            return "placed"
        if "placed" in statuses:
            return "partial"
        return "rolled_back" if self.all_or_none else "failed"


def orders_place_bulk(*, user: User, specs: list[OrderSpec], all_or_none: bool) -> BulkResult:
    """Multi-leg: every leg is validated before any is sent; buys go first (they free margin for the hedged
    sells); with `all_or_none`, a failed leg cancels the legs already placed."""
    errors: dict[str, list[str]] = {}
    for index, spec in enumerate(specs):
        try:
            validated = order_validate(user=user, spec=spec, prefix=f"legs.{index}.")
            require_connected(validated.account)
        except ValidationFailed as error:
            errors.update(error.errors or {})
        except NotFound:
            _add(errors, f"legs.{index}.account_id", "No such broker account.")
    if errors:
        raise ValidationFailed("One or more legs are invalid; nothing was sent.", errors=errors)
    order_of_sending = sorted(range(len(specs)), key=lambda i: (specs[i].side != Side.BUY, i))
    results: dict[int, LegResult] = {}
    failed = False
    for index in order_of_sending:
        if failed and all_or_none:
            results[index] = LegResult(
                index=index, order=None, not_sent=True, detail="Not sent: an earlier leg failed."
            )
            continue
        try:
            order = order_place(user=user, spec=specs[index])
        except BrokerError as error:
            results[index] = LegResult(
                index=index,
                order=Order.objects.filter(pk=error.extra.get("order_id")).first(),
                error_code=str(error.code),
                detail=error.detail,
            )
            failed = True
            continue
        except AppError as error:  # risk, validation, state: this leg failed, the others are settled below
            results[index] = LegResult(index=index, order=None, error_code=str(error.code), detail=error.detail)
            failed = True
            continue
        if order.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED):
            failed = True
            results[index] = LegResult(
                index=index, order=order, error_code="ORDER_REJECTED", detail=order.status_message
            )
        else:
            results[index] = LegResult(index=index, order=order)
    if failed and all_or_none:
        for index, result in list(results.items()):
            if result.order is None or result.error_code:
                continue
            if result.order.is_final:
                results[index] = LegResult(
                    index=index, order=result.order, detail="Filled before another leg failed; not rolled back."
                )
                continue
            try:
                cancelled = order_cancel(user=user, order=result.order, source=OrderSource.API)
                results[index] = LegResult(
                    index=index, order=cancelled, cancelled=True, detail="Cancelled: another leg failed."
                )
            except (BrokerError, InvalidState) as error:
                results[index] = LegResult(index=index, order=result.order, detail=f"Could not cancel: {error.detail}")
    return BulkResult(legs=[results[index] for index in range(len(specs))], all_or_none=all_or_none)


def bulk_result_from_orders(*, specs: list[OrderSpec], orders: list[Order], all_or_none: bool) -> BulkResult:
    """A bulk request's outcome rebuilt from the orders it placed, for a retry whose first attempt died: each leg
    takes the first order not yet taken with its terms; a leg without one was never sent."""
    remaining = list(orders)
    legs = []
    for index, spec in enumerate(specs):
        terms = (spec.account_id, spec.symbol, spec.side, spec.quantity, spec.order_type, spec.product)
        order = next(
            (o for o in remaining if (o.account_id, o.symbol, o.side, o.quantity, o.order_type, o.product) == terms),
            None,
        )
        if order is None:
            legs.append(LegResult(index=index, order=None, not_sent=True, detail="Not sent."))
            continue
        remaining.remove(order)
        if order.status == OrderStatus.REJECTED:
            legs.append(LegResult(index=index, order=order, error_code="ORDER_REJECTED", detail=order.status_message))
        else:
            legs.append(LegResult(index=index, order=order, cancelled=order.status == OrderStatus.CANCELLED))
    return BulkResult(legs=legs, all_or_none=all_or_none)
