"""How much of a position an order closes: what is held, and what the working exits already cover."""

from __future__ import annotations

from brokers.models import BrokerAccount
from brokers.protocol import Side
from orders.models import LIVE_STATUSES, Order, Position
from orders.services.transitions import EXIT_ROLES


def _reduces_position(
    *,
    account: BrokerAccount,
    symbol: str,
    product: str,
    side: str,
    quantity: int,
    exclude_order_id: str | None = None,
    held: int | None = None,
) -> bool:
    """`held`: the position's quantity when the caller has just read it."""
    if held is None:
        held = (
            Position.objects.filter(account=account, symbol=symbol, product=product)
            .values_list("quantity", flat=True)
            .first()
            or 0
        )
    signed = quantity if side == Side.BUY else -quantity
    if held == 0 or (held > 0) == (signed > 0):
        return False
    # Exits already working count against what is held: two sells of a whole long would together open a short.
    # A position's target and stop-loss legs are one exit between them (OCO), and they leave when it is closed.
    working = Order.objects.filter(
        account=account, symbol=symbol, product=product, side=side, status__in=LIVE_STATUSES
    ).exclude(role__in=EXIT_ROLES)
    if exclude_order_id is not None:
        working = working.exclude(pk=exclude_order_id)
    return abs(signed) + sum(order.pending_quantity for order in working) <= abs(held)


def _exit_cover(legs: list[Order]) -> int:
    """What one entry's exit legs still close between them: they are one exit (OCO), so the least either has left."""
    return min(leg.pending_quantity for leg in legs)


def _exit_groups(*, account_id: str, symbol: str, product: str, side: str) -> list[list[Order]]:
    """The working exit legs on one position that close it from `side`, grouped by entry, oldest entry first."""
    groups: dict[str, list[Order]] = {}
    legs = Order.objects.filter(
        account_id=account_id, symbol=symbol, product=product, side=side, role__in=EXIT_ROLES, status__in=LIVE_STATUSES
    ).order_by("created_at", "id")
    for leg in legs:
        groups.setdefault(leg.parent_id or leg.pk, []).append(leg)
    return list(groups.values())


def _exit_groups_by_side(*, account_id: str, symbol: str, product: str) -> dict[str, list[list[Order]]]:
    """`_exit_groups` of both sides in one query."""
    by_side: dict[str, dict[str, list[Order]]] = {Side.SELL: {}, Side.BUY: {}}
    legs = Order.objects.filter(
        account_id=account_id, symbol=symbol, product=product, role__in=EXIT_ROLES, status__in=LIVE_STATUSES
    ).order_by("created_at", "id")
    for leg in legs:
        by_side[leg.side].setdefault(leg.parent_id or leg.pk, []).append(leg)
    return {side: list(groups.values()) for side, groups in by_side.items()}


def _held_from(quantity: int, *, closing_side: str) -> int:
    return max(quantity, 0) if closing_side == Side.SELL else max(-quantity, 0)


def _position_quantity(*, account_id: str, symbol: str, product: str) -> int:
    return (
        Position.objects.filter(account_id=account_id, symbol=symbol, product=product)
        .values_list("quantity", flat=True)
        .first()
        or 0
    )


def _held(*, account_id: str, symbol: str, product: str, closing_side: str) -> int:
    """How much of the position an order on `closing_side` can close: the long for a sell, the short for a buy."""
    quantity = (
        Position.objects.filter(account_id=account_id, symbol=symbol, product=product)
        .values_list("quantity", flat=True)
        .first()
        or 0
    )
    return max(quantity, 0) if closing_side == Side.SELL else max(-quantity, 0)


def _exit_room(*, account_id: str, symbol: str, product: str, side: str, exclude_parent: str | None = None) -> int:
    """What new exit legs on `side` may still close without closing more than is held."""
    held = _held(account_id=account_id, symbol=symbol, product=product, closing_side=side)
    covered = sum(
        _exit_cover(group)
        for group in _exit_groups(account_id=account_id, symbol=symbol, product=product, side=side)
        if group[0].parent_id != exclude_parent
    )
    return max(held - covered, 0)
