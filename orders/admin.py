"""Operators' views of orders, fills and positions: read-only (every change goes through the order services), with
two actions that call those services, cancel orders and square off positions, each one audited."""

from django.contrib import admin, messages

from accounts.services import audit_record
from algoterm.admin_mixins import ReadOnlyMixin
from algoterm.api.errors import AppError
from orders import services
from orders.admin_actions import SquareOffJob, square_off_selected
from orders.models import IdempotencyRecord, Order, OrderEvent, OrderSource, OrderStatus, Position, Trade


class OrderEventInline(ReadOnlyMixin, admin.TabularInline):
    model = OrderEvent
    fields = ["created_at", "from_status", "to_status", "source", "filled_quantity", "message"]
    readonly_fields = fields
    extra = 0
    can_delete = False


class TradeInline(ReadOnlyMixin, admin.TabularInline):
    model = Trade
    fields = ["id", "traded_at", "side", "quantity", "price", "cumulative_quantity"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Order)
class OrderAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "user",
        "account",
        "symbol",
        "side",
        "quantity",
        "filled",
        "status",
        "source",
        "role",
        "created",
    ]
    list_filter = ["status", "source", "role", "product", "account__broker"]
    search_fields = ["id", "symbol", "broker_order_id", "user__email"]
    list_select_related = ["user", "account"]
    date_hierarchy = "created_at"
    readonly_fields = ["id"]
    fieldsets = [
        (None, {"fields": ["id", "user", "account", "symbol", "side", "order_type", "product", "validity"]}),
        ("Quantity and price", {"fields": ["quantity", "filled_quantity", "average_price", "price", "trigger_price"]}),
        ("State", {"fields": ["status", "status_message", "broker_order_id", "source", "role", "tag"]}),
        ("Exits", {"fields": ["parent", "target", "stop_loss", "trailing_stop", "exits_placed_at", "strategy_ref"]}),
        ("Dates", {"fields": ["created_at", "submitted_at", "updated_at"]}),
    ]
    inlines = [OrderEventInline, TradeInline]
    actions = ["cancel_orders"]

    @admin.display(description="filled", ordering="filled_quantity")
    def filled(self, order: Order) -> int:
        return order.filled_quantity

    @admin.display(description="created", ordering="created_at")
    def created(self, order: Order):
        return order.created_at

    @admin.action(description="Cancel selected orders (at the broker)")
    def cancel_orders(self, request, queryset):
        cancelled, requested = 0, 0
        for order in queryset.select_related("account"):
            try:
                result = services.order_cancel(user=request.user, order=order, source=OrderSource.SYSTEM)
            except AppError as error:
                audit_record(
                    action="admin.order_cancel",
                    actor=request.user,
                    target=order,
                    details={"outcome": "failed", "detail": str(error.detail)},
                )
                self.message_user(request, f"{order.pk}: {error.detail}", level=messages.WARNING)
                continue
            audit_record(
                action="admin.order_cancel",
                actor=request.user,
                target=order,
                details={"outcome": "done", "status": result.status},
            )
            if result.status == OrderStatus.CANCELLED:
                cancelled += 1
            else:
                requested += 1
        if cancelled:
            self.message_user(request, f"{cancelled} order(s) cancelled.", level=messages.SUCCESS)
        if requested:
            self.message_user(
                request, f"{requested} cancel request(s) sent; the broker has not confirmed yet.", level=messages.INFO
            )


@admin.register(Trade)
class TradeAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "traded_at", "user", "account", "order", "symbol", "side", "product", "quantity", "price"]
    list_filter = ["side", "product", "account__broker"]
    search_fields = ["id", "symbol", "order__id", "order__broker_order_id", "user__email"]
    list_select_related = ["user", "account", "order"]
    date_hierarchy = "traded_at"
    readonly_fields = ["id"]


@admin.register(Position)
class PositionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "account",
        "user",
        "symbol",
        "product",
        "quantity",
        "average_price",
        "realized_pnl",
        "trading_day",
        "day_buy_quantity",
        "day_sell_quantity",
        "day_buy_value",
        "day_sell_value",
        "day_realized_pnl",
        "updated_at",
    ]
    list_filter = ["product", "account__broker", "trading_day"]
    search_fields = ["symbol", "account__id", "user__email"]
    list_select_related = ["user", "account"]
    actions = ["square_off_positions"]

    @admin.action(description="Square off selected positions (cancel pending orders, close at market)")
    def square_off_positions(self, request, queryset):
        # One square-off per account and symbol: it closes every product of the symbol in that account.
        scopes: dict[tuple[str, str], Position] = {}
        for position in queryset.select_related("user", "account"):
            scopes.setdefault((position.account_id, position.symbol), position)
        jobs = [
            SquareOffJob(
                target=position,
                label="",
                details={"symbol": position.symbol},
                run=lambda position=position: services.positions_square_off(
                    user=position.user,
                    account_id=position.account_id,
                    symbol=position.symbol,
                    source=OrderSource.SYSTEM,
                ),
            )
            for position in scopes.values()
        ]
        square_off_selected(self, request, jobs, audit_action="admin.position_square_off", noun="position")


@admin.register(OrderEvent)
class OrderEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["created_at", "order", "from_status", "to_status", "source", "filled_quantity", "message"]
    list_filter = ["to_status", "source"]
    search_fields = ["order__id", "order__broker_order_id", "order__user__email", "message"]
    list_select_related = ["order"]
    date_hierarchy = "created_at"


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["created_at", "user", "scope", "key", "response_status", "completed_at"]
    list_filter = ["scope", "response_status"]
    search_fields = ["key", "user__email"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    exclude = ["response_body"]
