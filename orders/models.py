"""Orders and their state machine, order events, trades (fills), positions, and idempotency records."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from algoterm.ids import PublicIdField, to_compact
from brokers.protocol import OrderType, Product, Side, Validity


class OrderStatus(models.TextChoices):
    PENDING = "PENDING"  # saved, not yet handed to the broker
    SUBMITTING = "SUBMITTING"  # the broker call is in flight
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_MODIFY = "PENDING_MODIFY"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"  # the broker's answer was lost; reconciliation settles it from the broker's order book


FINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED})
# Orders the broker may still fill: what reconciliation watches and what a square-off cancels first.
LIVE_STATUSES = frozenset(set(OrderStatus) - FINAL_STATUSES)
WORKING_STATUSES = frozenset({OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED})

_BROKER_DRIVEN = {
    OrderStatus.OPEN,
    OrderStatus.PARTIALLY_FILLED,
    OrderStatus.FILLED,
    OrderStatus.CANCELLED,
    OrderStatus.REJECTED,
    OrderStatus.EXPIRED,
}
# Every legal move; anything else is refused. The broker is the source of truth once it has the order, so any
# live state may move to what the broker reports, but a final state never changes.
TRANSITIONS: dict[str, frozenset[str]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.SUBMITTING, OrderStatus.REJECTED}),
    OrderStatus.SUBMITTING: frozenset(_BROKER_DRIVEN | {OrderStatus.UNKNOWN}),
    OrderStatus.UNKNOWN: frozenset(_BROKER_DRIVEN),
    OrderStatus.OPEN: frozenset(
        _BROKER_DRIVEN - {OrderStatus.OPEN} | {OrderStatus.PENDING_MODIFY, OrderStatus.PENDING_CANCEL}
    ),
    OrderStatus.PARTIALLY_FILLED: frozenset(
        _BROKER_DRIVEN - {OrderStatus.OPEN} | {OrderStatus.PENDING_MODIFY, OrderStatus.PENDING_CANCEL}
    ),
    OrderStatus.PENDING_MODIFY: frozenset(_BROKER_DRIVEN | {OrderStatus.PENDING_CANCEL}),
    OrderStatus.PENDING_CANCEL: frozenset(_BROKER_DRIVEN),
    OrderStatus.FILLED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.EXPIRED: frozenset(),
}


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS[current]


class OrderSource(models.TextChoices):
    """Who caused an order or one of its transitions."""

    API = "api"
    BROKER = "broker"
    RECONCILE = "reconcile"
    RMS = "rms"
    STRATEGY = "strategy"
    SYSTEM = "system"  # target and stop-loss exits, OCO cancels, trailing


class LegRole(models.TextChoices):
    ENTRY = "entry"
    TARGET = "target"
    STOP_LOSS = "stop_loss"
    SQUARE_OFF = "square_off"


class Order(models.Model):
    id = PublicIdField(prefix="ord")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders")
    account = models.ForeignKey("brokers.BrokerAccount", on_delete=models.PROTECT, related_name="orders")
    symbol = models.CharField(max_length=64)
    side = models.CharField(max_length=4, choices=[(v, v) for v in Side])
    quantity = models.PositiveIntegerField()
    filled_quantity = models.PositiveIntegerField(default=0)
    average_price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    order_type = models.CharField(max_length=6, choices=[(v, v) for v in OrderType])
    product = models.CharField(max_length=4, choices=[(v, v) for v in Product])
    price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    trigger_price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    validity = models.CharField(max_length=3, choices=[(v, v) for v in Validity], default=Validity.DAY)
    status = models.CharField(max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING)
    status_message = models.CharField(max_length=300, blank=True)
    broker_order_id = models.CharField(max_length=64, blank=True, db_index=True)
    tag = models.CharField(max_length=40, blank=True, help_text="the client's own label")
    source = models.CharField(max_length=10, choices=OrderSource.choices, default=OrderSource.API)
    role = models.CharField(max_length=10, choices=LegRole.choices, default=LegRole.ENTRY)
    # Exit legs (target, stop-loss) point at their entry; the two exits of one entry are each other's OCO sibling.
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="exits")
    target = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    stop_loss = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    trailing_stop = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="points the stop-loss trails the price by"
    )
    exits_placed_at = models.DateTimeField(null=True, blank=True)
    strategy_ref = models.CharField(max_length=40, blank=True, help_text="the strategy (stg_ id) that placed it")
    # The Idempotency-Key the order was placed under: a retry after a crash finds the order by it.
    idempotency_record = models.ForeignKey(
        "orders.IdempotencyRecord", on_delete=models.SET_NULL, null=True, blank=True, related_name="orders"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["account", "status"]),
            models.Index(fields=["status", "updated_at"]),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(filled_quantity__lte=models.F("quantity")), name="fill_le_qty"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.side} {self.quantity} {self.symbol} {self.status}"

    @property
    def broker_tag(self) -> str:
        """What the broker carries back on its order so we can find ours: the id's 20-character compact form."""
        return to_compact(self.id)

    @property
    def pending_quantity(self) -> int:
        return 0 if self.status in FINAL_STATUSES else self.quantity - self.filled_quantity

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def signed_quantity(self) -> int:
        return self.quantity if self.side == Side.BUY else -self.quantity


class OrderEvent(models.Model):
    """One transition of one order: the order's history, append-only."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    source = models.CharField(max_length=10, choices=OrderSource.choices)
    message = models.CharField(max_length=300, blank=True)
    filled_quantity = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.order_id}: {self.from_status or '-'} -> {self.to_status} ({self.source})"


class Trade(models.Model):
    """One fill. Fills are derived from the broker's cumulative filled quantity and average price, so the same
    update seen through a postback, a socket and a poll adds it once."""

    id = PublicIdField(prefix="trd")
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="trades")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="trades")
    account = models.ForeignKey("brokers.BrokerAccount", on_delete=models.PROTECT, related_name="trades")
    symbol = models.CharField(max_length=64)
    side = models.CharField(max_length=4, choices=[(v, v) for v in Side])
    product = models.CharField(max_length=4, choices=[(v, v) for v in Product])
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=4)
    cumulative_quantity = models.PositiveIntegerField(help_text="the order's filled quantity after this fill")
    traded_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-traded_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "cumulative_quantity"], name="one_trade_per_fill_step"),
        ]
        indexes = [models.Index(fields=["user", "-traded_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.side} {self.quantity} {self.symbol} @ {self.price}"

    @property
    def value(self) -> Decimal:
        return self.price * self.quantity


class Position(models.Model):
    """Net position per account, instrument and product, kept from our fills under a row lock."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="positions")
    account = models.ForeignKey("brokers.BrokerAccount", on_delete=models.PROTECT, related_name="positions")
    symbol = models.CharField(max_length=64)
    product = models.CharField(max_length=4, choices=[(v, v) for v in Product])
    quantity = models.IntegerField(default=0, help_text="net: positive long, negative short")
    average_price = models.DecimalField(max_digits=14, decimal_places=4, default=Decimal("0"))
    realized_pnl = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    trading_day = models.DateField(help_text="the IST trading day the day_* fields belong to")
    day_buy_quantity = models.PositiveIntegerField(default=0)
    day_sell_quantity = models.PositiveIntegerField(default=0)
    day_buy_value = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    day_sell_value = models.DecimalField(max_digits=18, decimal_places=2, default=Decimal("0"))
    day_realized_pnl = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["account_id", "symbol", "product"]
        constraints = [
            models.UniqueConstraint(fields=["account", "symbol", "product"], name="one_position_per_instrument"),
        ]
        indexes = [
            models.Index(fields=["user", "quantity"]),
            # Every tick asks who holds its symbols (tick-driven RMS): only open positions matter.
            models.Index(fields=["symbol"], condition=~models.Q(quantity=0), name="open_position_symbol"),
        ]

    def __str__(self) -> str:
        return f"{self.account_id} {self.symbol} {self.product} {self.quantity}"

    @property
    def day_quantity(self) -> int:
        return self.day_buy_quantity - self.day_sell_quantity


class IdempotencyRecord(models.Model):
    """One Idempotency-Key of one user on one route: claimed before acting, then holding the first response.

    The claimer holds a lease; a claim whose lease ran out without an answer belonged to a process that died, and
    the next request with the key takes it over and answers from the orders placed under it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=40)
    key = models.CharField(max_length=120)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    holder = models.CharField(max_length=32, blank=True, help_text="the claim's holder, renewed on each takeover")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "scope", "key"], name="one_record_per_key")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"
