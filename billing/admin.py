"""Operators' billing pages: plans (editable: prices and limits are data), subscriptions, payments and webhook events
(read-only: Razorpay is their source), and revenue by plan and month with a chart."""

from __future__ import annotations

import base64

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from accounts.services import audit_record
from algoterm.admin_mixins import ReadOnlyMixin

from .models import Payment, Plan, Subscription, WebhookEvent
from .reports import revenue_by_plan_and_month, revenue_chart_png
from .selectors import plans_changed


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "code",
        "name",
        "price_paise",
        "period",
        "is_trial",
        "max_broker_accounts",
        "max_running_strategies",
        "max_active_backtests",
        "live_trading",
        "api_requests_per_minute",
        "websocket_symbols",
        "razorpay_plan_id",
        "is_active",
    ]
    list_filter = ["is_active", "is_trial", "live_trading"]
    readonly_fields = ["razorpay_plan_id"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # subscriptions point at plans; retire one with is_active instead

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        audit_record(action="admin.plan_change", actor=request.user, target=obj, details={"fields": form.changed_data})
        plans_changed()  # new limits apply to every user's next request


class PaymentInline(ReadOnlyMixin, admin.TabularInline):
    model = Payment
    extra = 0
    fields = ["razorpay_payment_id", "amount_paise", "status", "method", "error_description", "paid_at"]


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "user", "plan", "status", "current_end", "paid_count", "cancel_at_cycle_end", "created_at"]
    list_filter = ["status", "plan", "cancel_at_cycle_end"]
    search_fields = ["id", "user__email", "razorpay_subscription_id"]
    list_select_related = ["user", "plan"]
    inlines = [PaymentInline]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "user", "subscription", "rupees", "status", "method", "paid_at"]
    list_filter = ["status", "subscription__plan", "method"]
    search_fields = ["id", "user__email", "razorpay_payment_id"]
    list_select_related = ["user", "subscription"]
    date_hierarchy = "paid_at"

    @admin.display(description="amount (₹)", ordering="amount_paise")
    def rupees(self, payment: Payment) -> str:
        return f"{payment.amount_paise / 100:,.2f}"

    def get_urls(self):
        return [
            path("revenue/", self.admin_site.admin_view(self.revenue_view), name="billing_payment_revenue"),
            *super().get_urls(),
        ]

    def revenue_view(self, request):
        report = revenue_by_plan_and_month()
        chart = revenue_chart_png(report)
        context = {
            **self.admin_site.each_context(request),
            "title": "Revenue by plan and month",
            "plans": report.plans,
            "rows": [
                {"month": month, "amounts": [f"{value:,.2f}" for value in amounts], "total": f"{sum(amounts):,.2f}"}
                for month, amounts in report.rows
            ],
            "totals": [f"{value:,.2f}" for value in report.totals],
            "grand_total": f"{sum(report.totals):,.2f}",
            "chart": base64.b64encode(chart).decode("ascii") if chart else "",
        }
        return TemplateResponse(request, "admin/billing/revenue.html", context)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["event_id", "event", "outcome", "detail", "event_created_at", "received_at"]
    list_filter = ["outcome", "event"]
    search_fields = ["event_id", "detail"]
