"""Operators' views of broker accounts (secrets masked) and of the simulated exchange."""

from django.contrib import admin, messages
from django.utils.html import format_html_join

from accounts.services import audit_record
from brokers import services
from brokers.models import BrokerAccount, SimAccount, SimHolding, SimOrder, SimPosition, SimTrade
from brokers.services import masked_proxy


@admin.register(BrokerAccount)
class BrokerAccountAdmin(admin.ModelAdmin):
    list_display = [
        "label",
        "owner",
        "broker",
        "client_id",
        "status",
        "session_expires_at",
        "market_data_priority",
        "last_error_at",
    ]
    # Designating market-data sources: 1 feeds, 2 takes over when 1's session expires, and so on.
    list_editable = ["market_data_priority"]
    list_filter = ["broker", "status", ("market_data_priority", admin.EmptyFieldListFilter)]
    search_fields = ["id", "label", "client_id", "owner__email"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    exclude = ["credentials_encrypted", "session_encrypted", "proxy_url", "login_nonce"]
    readonly_fields = [
        "id",
        "credential_fields",
        "has_session",
        "proxy",
        "session_renewal_consented_at",
        "created_at",
        "connected_at",
        "deleted_at",
    ]
    actions = ["expire_sessions", "check_sessions"]

    def get_readonly_fields(self, request, obj=None):
        # The credentials and sessions belong to the owner: an account never moves to another user.
        return [*self.readonly_fields, "owner"] if obj is not None else self.readonly_fields

    def save_model(self, request, obj: BrokerAccount, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and form.changed_data:
            details = {"fields": sorted(form.changed_data)}
            if "algo_id" in form.changed_data:
                details["algo_id"] = obj.algo_id
            audit_record(action="broker.admin_change", actor=request.user, target=obj, details=details)

    @admin.display(description="credentials (values hidden)")
    def credential_fields(self, account: BrokerAccount):
        names = sorted(account.credentials)
        return format_html_join(", ", "{} = ••••••", ((name,) for name in names)) if names else "none"

    @admin.display(boolean=True, description="session stored")
    def has_session(self, account: BrokerAccount) -> bool:
        # An expired Fyers session may keep only its refresh token (for a consented renewal): that is no session.
        return bool(account.session.get("access_token"))

    @admin.display(description="proxy")
    def proxy(self, account: BrokerAccount) -> str:
        return masked_proxy(account.proxy_url) or "none"

    @admin.action(description="Expire the broker session (user must log in again)")
    def expire_sessions(self, request, queryset):
        expired = sum(
            services.broker_session_mark_expired(account=account, reason="expired by an operator", actor=request.user)
            for account in queryset
        )
        self.message_user(request, f"{expired} session(s) expired.", level=messages.SUCCESS)

    @admin.action(description="Check the session at the broker now")
    def check_sessions(self, request, queryset):
        for account in queryset:
            verdict = services.broker_session_check(account=account)
            self.message_user(request, f"{account.label}: {verdict}", level=messages.INFO)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SimAccount)
class SimAccountAdmin(ReadOnlyAdmin):
    list_display = ["venue", "client_id", "opening_balance", "cash", "created_at"]
    list_filter = ["venue"]
    search_fields = ["client_id"]


@admin.register(SimOrder)
class SimOrderAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "symbol", "side", "quantity", "filled_quantity", "order_type", "status", "tag"]
    list_filter = ["status", "order_type", "account__venue"]
    search_fields = ["symbol", "tag"]


@admin.register(SimPosition)
class SimPositionAdmin(ReadOnlyAdmin):
    list_display = ["account", "symbol", "product", "quantity", "average_price", "realized_pnl"]
    search_fields = ["symbol"]


@admin.register(SimTrade)
class SimTradeAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "order", "quantity", "price", "traded_at"]
    list_filter = ["account__venue"]
    search_fields = ["order__symbol", "order__tag"]
    list_select_related = ["account", "order"]
    date_hierarchy = "traded_at"


@admin.register(SimHolding)
class SimHoldingAdmin(ReadOnlyAdmin):
    list_display = ["account", "symbol", "quantity", "average_price"]
    list_filter = ["account__venue"]
    search_fields = ["symbol", "account__client_id"]
    list_select_related = ["account"]
