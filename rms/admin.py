"""Operators' views of risk: profiles (edited through the profile service, so its validation and audit apply), the
RMS event log and each user's daily risk state (read-only), with halt and resume actions that call the services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect

from algoterm.admin_mixins import ReadOnlyMixin
from algoterm.api.errors import ValidationFailed
from rms import services
from rms.admin_actions import halt_selected, resume_selected
from rms.models import (
    MTM_RULES,
    PlatformRiskCeiling,
    RiskProfile,
    RmsEvent,
    RmsState,
    TradingState,
    UserRiskCeiling,
    default_limits,
)

# --- profiles ----------------------------------------------------------------------------------------------------


class RiskProfileForm(forms.ModelForm):
    """Refuses what `profile_update` would refuse, field by field, judging an account override together with
    what it inherits from the user's profile (as the service does)."""

    class Meta:
        model = RiskProfile
        fields = ["user", "account", *services.PROFILE_FIELDS]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in ("allowed_products", "allowed_segments"):
            if name in cleaned and cleaned[name] is None:  # an emptied box means "all", stored as []
                cleaned[name] = []
        if "user" in self.fields:  # a new profile
            user, account = cleaned.get("user"), cleaned.get("account")
        else:
            user, account = self.instance.user, self.instance.account
        if user is None or self.errors:
            return cleaned
        if account is not None and account.owner_id != user.pk:
            self.add_error("account", "This broker account belongs to another user.")
            return cleaned
        if account is not None:
            for name in MTM_RULES:
                if cleaned.get(name) is not None:
                    self.add_error(name, "MTM rules watch all the user's accounts; set this on the user's profile.")
            if self.errors:
                return cleaned
        merged = {name: cleaned.get(name) for name in services.PROFILE_FIELDS}
        if account is not None:
            base = RiskProfile.objects.filter(user=user, account__isnull=True).first()
            inherited = {name: getattr(base, name) for name in services.PROFILE_FIELDS} if base else default_limits()
            merged = {
                name: value if value not in (None, []) else inherited.get(name, value) for name, value in merged.items()
            }
        for name, problems in services.profile_validate(merged).items():
            for problem in problems:
                self.add_error(name if name in self.fields else None, problem)
        return cleaned


@admin.register(RiskProfile)
class RiskProfileAdmin(admin.ModelAdmin):
    form = RiskProfileForm
    list_display = ["user", "account", "max_daily_loss", "daily_profit_target", "kill_switch", "updated"]
    list_filter = ["kill_switch"]
    search_fields = ["user__email"]
    list_select_related = ["user", "account"]
    raw_id_fields = ["user", "account"]
    fieldsets = [
        (None, {"fields": ["user", "account", "updated_at"]}),
        (
            "Loss and profit (rupees of MTM; empty turns a rule off)",
            {
                "fields": [
                    "max_daily_loss",
                    "daily_profit_target",
                    ("profit_lock_at", "profit_lock_amount"),
                    ("trailing_profit_every", "trailing_profit_step"),
                ]
            },
        ),
        (
            "Per order and per day",
            {
                "fields": [
                    "max_lots_per_order",
                    "max_order_value",
                    "max_open_positions",
                    "max_orders_per_day",
                    "allowed_products",
                    "allowed_segments",
                ]
            },
        ),
        ("Clock (IST)", {"fields": [("trading_window_start", "trading_window_end"), "auto_square_off_time"]}),
        ("Kill switch", {"fields": ["kill_switch"]}),
        (
            "Waiting for the next trading day (the user loosened a limit after trading started)",
            {"fields": ["pending_changes", "pending_from"]},
        ),
    ]

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, profile: RiskProfile):
        return profile.updated_at

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        # Whose profile it is never changes; a new one names its user (and account, for an override).
        pending = ["pending_changes", "pending_from"]
        return ["user", "account", "updated_at", *pending] if obj is not None else ["updated_at", *pending]

    def get_changeform_initial_data(self, request) -> dict[str, Any]:
        # A new profile starts from what the service would create, so the form shows what will be saved.
        return {**default_limits(), **super().get_changeform_initial_data(request)}

    def has_delete_permission(self, request, obj=None) -> bool:
        # Emptying a limit turns it off (or, in an override, inherits it); a deleted profile would come back with
        # the defaults on the user's next order, unaudited.
        return False

    def save_model(self, request, obj: RiskProfile, form, change: bool) -> None:
        """Every edit is the service's: locked, validated again, recorded as an RMS config event and audited."""
        names = form.changed_data if change else list(services.PROFILE_FIELDS)
        data = {name: form.cleaned_data[name] for name in names if name in services.PROFILE_FIELDS}
        try:
            saved = services.profile_update(actor=request.user, user=obj.user, account=obj.account, data=data)
        except ValidationFailed as error:  # only if the profile changed between the form's check and the save
            problems = "; ".join(f"{name}: {' '.join(texts)}" for name, texts in (error.errors or {}).items())
            self.message_user(request, f"Nothing was saved. {error.detail} {problems}", level=messages.ERROR)
            request._rms_profile_refused = True
            return
        obj.pk = saved.pk
        obj.refresh_from_db()

    def log_addition(self, request, obj, message):
        if not getattr(request, "_rms_profile_refused", False):
            return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        if not getattr(request, "_rms_profile_refused", False):
            return super().log_change(request, obj, message)

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(request, "_rms_profile_refused", False):
            return HttpResponseRedirect(request.get_full_path())
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        if getattr(request, "_rms_profile_refused", False):
            return HttpResponseRedirect(request.get_full_path())
        return super().response_change(request, obj)


# --- ceilings ----------------------------------------------------------------------------------------------------


class RiskCeilingForm(forms.ModelForm):
    """Refuses what the ceiling service would refuse, field by field."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in services.LIST_FIELDS:
            if name in cleaned and cleaned[name] is None:  # an emptied box means "no bound", stored as []
                cleaned[name] = []
        if self.errors:
            return cleaned
        values = {name: cleaned.get(name) for name in services.CEILING_FIELDS}
        for name, problems in services.ceiling_validate(values).items():
            for problem in problems:
                self.add_error(name if name in self.fields else None, problem)
        return cleaned


CEILING_FIELDSETS = [
    ("Loss (rupees of MTM)", {"fields": ["max_daily_loss"]}),
    (
        "Per order and per day",
        {
            "fields": [
                "max_lots_per_order",
                "max_order_value",
                "max_open_positions",
                "max_orders_per_day",
                "allowed_products",
                "allowed_segments",
            ]
        },
    ),
    ("Clock (IST)", {"fields": [("trading_window_start", "trading_window_end"), "auto_square_off_time"]}),
    ("Kill switch (the user cannot lift it)", {"fields": ["kill_switch", "note"]}),
    (None, {"fields": ["updated_by", "updated_at"]}),
]


class RiskCeilingAdminBase(admin.ModelAdmin):
    """Ceilings bound what users set themselves: the effective limit is the tightest of the platform's ceiling,
    the user's ceiling and the user's own setting. Saved through the ceiling service (validated, audited)."""

    form = RiskCeilingForm
    fieldsets = CEILING_FIELDSETS

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        return ["updated_by", "updated_at"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # emptying a field lifts that bound, audited; a deleted row would leave no trace

    def _changed(self, form, change: bool) -> dict[str, Any]:
        names = form.changed_data if change else [*services.CEILING_FIELDS, "note"]
        return {name: form.cleaned_data[name] for name in names if name in (*services.CEILING_FIELDS, "note")}


@admin.register(PlatformRiskCeiling)
class PlatformRiskCeilingAdmin(RiskCeilingAdminBase):
    list_display = ["__str__", "max_daily_loss", "max_lots_per_order", "max_order_value", "kill_switch", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return not PlatformRiskCeiling.objects.exists()  # one row for the whole platform

    def save_model(self, request, obj: PlatformRiskCeiling, form, change: bool) -> None:
        saved = services.platform_ceiling_update(actor=request.user, data=self._changed(form, change))
        obj.pk = saved.pk
        obj.refresh_from_db()


@admin.register(UserRiskCeiling)
class UserRiskCeilingAdmin(RiskCeilingAdminBase):
    list_display = ["user", "max_daily_loss", "max_lots_per_order", "max_order_value", "kill_switch", "updated_at"]
    list_filter = ["kill_switch"]
    search_fields = ["user__email"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    fieldsets = [(None, {"fields": ["user"]}), *CEILING_FIELDSETS]

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        # Whose ceiling it is never changes.
        return (
            ["user", *super().get_readonly_fields(request, obj)]
            if obj is not None
            else super().get_readonly_fields(request, obj)
        )

    def save_model(self, request, obj: UserRiskCeiling, form, change: bool) -> None:
        saved = services.user_ceiling_update(actor=request.user, user=obj.user, data=self._changed(form, change))
        obj.pk = saved.pk
        obj.refresh_from_db()


# --- events and states -------------------------------------------------------------------------------------------


@admin.register(RmsEvent)
class RmsEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["created", "user", "kind", "reason", "mtm"]
    list_filter = ["kind", "reason"]
    search_fields = ["user__email"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    fields = ["id", "created_at", "user", "kind", "reason", "mtm", "actor", "details"]

    @admin.display(description="created", ordering="created_at")
    def created(self, event: RmsEvent):
        return event.created_at


class BreachedTodayFilter(admin.SimpleListFilter):
    title = "breached today"
    parameter_name = "breached_today"

    def lookups(self, request, model_admin):
        return [("yes", "Yes")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(trading_day=services.trading_day()).exclude(status=TradingState.NORMAL)
        return queryset


@admin.register(RmsState)
class RmsStateAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "user",
        "trading_day",
        "status",
        "reason",
        "breach_mtm",
        "breached_at",
        "locked_profit",
        "square_off_pending",
        "updated_at",
    ]
    list_filter = [BreachedTodayFilter, "status", "reason", "trading_day"]
    search_fields = ["user__email"]
    list_select_related = ["user"]
    ordering = ["-trading_day", "-updated_at"]
    actions = ["halt_users", "resume_users"]

    @staticmethod
    def _users(queryset) -> list:
        """The distinct users of the selected rows (a user may be selected on several days)."""
        users = {}
        for state in queryset.select_related("user"):
            users.setdefault(state.user_id, state.user)
        return list(users.values())

    @admin.action(description="Halt trading for the selected users (cancel pending orders, square off, today)")
    def halt_users(self, request, queryset):
        halt_selected(self, request, self._users(queryset))

    @admin.action(description="Resume trading for the selected users (today's state back to NORMAL)")
    def resume_users(self, request, queryset):
        resume_selected(self, request, self._users(queryset))
