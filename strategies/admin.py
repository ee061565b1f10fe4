"""Operators' views of strategies: definitions with their legs and accounts, runs with their fires, signals, and
backtests with their equity charts. All read-only: users define strategies through the API; the one operator
action, stopping a strategy (optionally exiting its positions), calls the service."""

from __future__ import annotations

import base64

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from accounts.services import audit_record
from algoterm.admin_mixins import ReadOnlyMixin
from algoterm.api.errors import AppError

from . import services
from .models import (
    LEG_FIELDS,
    Backtest,
    FireMinute,
    Leg,
    Signal,
    Strategy,
    StrategyAccount,
    StrategyFire,
    StrategyRun,
    StrategyStatus,
    WebhookRejectionCount,
)


class LegInline(ReadOnlyMixin, admin.TabularInline):
    model = Leg
    extra = 0
    fields = LEG_FIELDS


class StrategyAccountInline(ReadOnlyMixin, admin.TabularInline):
    model = StrategyAccount
    extra = 0
    fields = ["account", "multiplier"]


def _stop(modeladmin, request, queryset, *, exit_positions: bool) -> None:
    stopped = 0
    for strategy in queryset.filter(status=StrategyStatus.RUNNING).select_related("user"):
        try:
            services.strategy_stop(user=strategy.user, strategy_id=strategy.pk, exit_positions=exit_positions)
        except AppError as error:
            modeladmin.message_user(request, f"{strategy.name}: {error.detail}", messages.ERROR)
            continue
        audit_record(
            action="admin.strategy_stop",
            actor=request.user,
            target=strategy,
            details={"exit_positions": exit_positions},
        )
        stopped += 1
    modeladmin.message_user(request, f"Stopped {stopped} strategy(ies).", messages.SUCCESS)


@admin.action(description="Stop the selected strategies (positions stay open)")
def stop_strategies(modeladmin, request, queryset) -> None:
    _stop(modeladmin, request, queryset, exit_positions=False)


@admin.action(description="Stop the selected strategies and square off their own positions")
def stop_and_exit_strategies(modeladmin, request, queryset) -> None:
    _stop(modeladmin, request, queryset, exit_positions=True)


@admin.register(Strategy)
class StrategyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["name", "user", "kind", "status", "entry_time", "exit_time", "mtm_stop_loss", "updated_at"]
    list_filter = ["status", "kind", "product"]
    search_fields = ["id", "name", "user__email"]
    list_select_related = ["user"]
    exclude = ["webhook_secret"]
    inlines = [StrategyAccountInline, LegInline]
    actions = [stop_strategies, stop_and_exit_strategies]


class StrategyFireInline(ReadOnlyMixin, admin.TabularInline):
    model = StrategyFire
    extra = 0
    fields = ["trading_day", "leg", "action", "attempt", "status", "detail", "order_ids", "scheduled_for", "created_at"]
    ordering = ["-created_at"]


@admin.register(StrategyRun)
class StrategyRunAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "strategy", "mode", "status", "started_at", "ended_at", "final_pnl"]
    list_filter = ["mode", "status"]
    search_fields = ["id", "strategy__name", "strategy__user__email"]
    list_select_related = ["strategy"]
    inlines = [StrategyFireInline]


@admin.register(Signal)
class SignalAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "strategy", "source", "action", "symbol", "quantity", "status", "reason", "received_at"]
    list_filter = ["status", "source", "action", "reason"]
    search_fields = ["id", "strategy__name", "user__email", "symbol"]
    list_select_related = ["strategy"]
    date_hierarchy = "received_at"


@admin.register(WebhookRejectionCount)
class WebhookRejectionCountAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["strategy", "day", "count", "last_reason", "last_at"]
    list_filter = ["day", "last_reason"]
    search_fields = ["strategy__id", "strategy__name", "strategy__user__email"]
    list_select_related = ["strategy"]
    date_hierarchy = "day"


@admin.register(Backtest)
class BacktestAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "strategy", "status", "progress", "start_date", "end_date", "total_pnl", "win_rate"]
    list_filter = ["status"]
    search_fields = ["id", "strategy__name", "user__email"]
    list_select_related = ["strategy"]
    exclude = ["chart_png", "result"]
    readonly_fields = ["chart", "metrics"]

    @admin.display(description="total PnL")
    def total_pnl(self, backtest: Backtest) -> str:
        return (backtest.result or {}).get("total_pnl", "-")

    @admin.display(description="win rate %")
    def win_rate(self, backtest: Backtest) -> str:
        return (backtest.result or {}).get("win_rate", "-")

    @admin.display(description="equity curve")
    def chart(self, backtest: Backtest) -> str:
        if not backtest.chart_png:
            return "-"
        encoded = base64.b64encode(bytes(backtest.chart_png)).decode("ascii")
        return format_html('<img src="data:image/png;base64,{}" alt="equity curve" style="max-width:900px">', encoded)

    @admin.display(description="metrics")
    def metrics(self, backtest: Backtest) -> str:
        result = backtest.result or {}
        names = ["total_pnl", "win_rate", "max_drawdown", "max_drawdown_pct", "sharpe", "days", "bars"]
        rows = format_html_join(
            "", "<tr><th>{}</th><td>{}</td></tr>", ((name.replace("_", " "), result.get(name, "-")) for name in names)
        )
        return format_html("<table>{}</table><p>{} trades</p>", rows, len(result.get("trades", [])))


@admin.register(Leg)
class LegAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "strategy",
        "position",
        "underlying",
        "instrument",
        "option_type",
        "side",
        "lots",
        "expiry",
        "strike",
    ]
    list_filter = ["instrument", "side", "expiry"]
    search_fields = ["strategy__name", "strategy__id", "underlying"]
    list_select_related = ["strategy"]


@admin.register(StrategyAccount)
class StrategyAccountAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["strategy", "account", "multiplier"]
    list_filter = ["account__broker"]
    search_fields = ["strategy__name", "strategy__id", "account__id", "account__label"]
    list_select_related = ["strategy", "account"]


@admin.register(StrategyFire)
class StrategyFireAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["created_at", "strategy", "trading_day", "leg", "action", "attempt", "status", "detail"]
    list_filter = ["status", "action", "trading_day"]
    search_fields = ["strategy__name", "strategy__id", "detail"]
    list_select_related = ["strategy"]
    date_hierarchy = "created_at"


@admin.register(FireMinute)
class FireMinuteAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """The minute dispatcher's ledger: which minutes were dispatched, when, and how many strategies acted."""

    list_display = ["minute", "started_at", "dispatched_at", "fires", "skipped"]
    date_hierarchy = "minute"
