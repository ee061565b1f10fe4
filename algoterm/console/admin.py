"""Operators' views of the platform's own rows, read-only (the system and configuration services own their writes),
the operators' dashboard page, which hangs off the platform state's admin URLs and is linked from the index, and the
users' admin: its actions call services, deactivate and reactivate (accounts), and square off, halt and resume
trading (rms), each audited as `admin.<verb>`."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.urls import path
from django.utils.html import format_html

from accounts import services
from accounts.models import User
from algoterm.admin_mixins import ReadOnlyMixin
from algoterm.api.errors import AppError
from algoterm.console.dashboard import dashboard_view, duration_text
from algoterm.console.forms import UserChangeAdminForm, UserCreationAdminForm
from algoterm.models import Alert, ConfigSection, PlatformState
from orders.admin_actions import SquareOffJob, square_off_selected
from rms import services as rms_services
from rms.admin_actions import halt_selected, resume_selected


@admin.register(PlatformState)
class PlatformStateAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["__str__", "mode", "trading_halted", "halt_reason", "changed_by", "changed_at"]
    list_select_related = ["changed_by"]
    fields = ["mode", "trading_halted", "halt_reason", "changed_by", "changed_at"]

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard), name="algoterm_dashboard"),
            *super().get_urls(),
        ]

    def dashboard(self, request):
        return dashboard_view(request, admin_site=self.admin_site)


@admin.register(ConfigSection)
class ConfigSectionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["name", "version", "updated_by", "updated_at"]
    list_select_related = ["updated_by"]
    search_fields = ["name"]
    fields = ["name", "version", "settings", "updated_by", "updated_at"]
    readonly_fields = ["settings"]

    @admin.display(description="data")
    def settings(self, section: ConfigSection) -> str:
        return format_html("<pre>{}</pre>", json.dumps(section.data, indent=2, sort_keys=True, default=str))


@admin.register(Alert)
class AlertAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """The platform's alerts, raised and cleared by the evaluator (algoterm.console.alerts) alone."""

    list_display = ["condition", "severity", "title", "started_at", "ended_at", "lasted", "cleared_reason"]
    list_filter = ["severity", ("ended_at", admin.EmptyFieldListFilter), "started_at", "condition"]
    search_fields = ["condition", "title", "detail", "id"]
    date_hierarchy = "started_at"
    fields = [
        "id",
        "condition",
        "severity",
        "title",
        "detail",
        "seen",
        "started_at",
        "ended_at",
        "cleared_by",
        "cleared_reason",
    ]
    readonly_fields = ["seen"]
    list_select_related = ["cleared_by"]

    @admin.display(description="duration")
    def lasted(self, alert: Alert) -> str:
        return "open" if alert.ended_at is None else duration_text(alert.duration_seconds or 0.0)

    @admin.display(description="readings")
    def seen(self, alert: Alert) -> str:
        return format_html("<pre>{}</pre>", json.dumps(alert.readings, indent=2, sort_keys=True, default=str))


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    ordering = ["-date_joined"]
    list_display = ["email", "name", "phone", "role", "is_active", "date_joined", "last_login"]
    list_filter = ["role", "is_active"]
    search_fields = ["email", "name", "phone", "id"]
    readonly_fields = ["id", "date_joined", "last_login", "deactivated_at", "is_active"]
    fieldsets = [
        (None, {"fields": ["id", "email", "password"]}),
        ("Profile", {"fields": ["name", "phone"]}),
        ("Access", {"fields": ["role", "is_active", "deactivated_at"]}),
        ("Dates", {"fields": ["date_joined", "last_login"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "name", "phone", "role", "password1", "password2"]})
    ]
    filter_horizontal: list = []
    actions = ["deactivate_users", "reactivate_users", "square_off_users", "halt_users", "resume_users"]

    @admin.action(description="Deactivate selected users (tokens stop working at once)")
    def deactivate_users(self, request, queryset):
        self._apply(
            request,
            queryset,
            lambda user: services.user_deactivate(actor=request.user, user=user, reason="admin action"),
            "deactivated",
        )

    @admin.action(description="Reactivate selected users")
    def reactivate_users(self, request, queryset):
        self._apply(
            request, queryset, lambda user: services.user_reactivate(actor=request.user, user=user), "reactivated"
        )

    @admin.action(description="Square off the selected users (cancel pending orders, close every position)")
    def square_off_users(self, request, queryset):
        jobs = [
            SquareOffJob(
                target=user,
                label=user.email,
                run=lambda user=user: rms_services.user_square_off(actor=request.user, user=user),
            )
            for user in queryset
        ]
        square_off_selected(self, request, jobs, audit_action="admin.user_square_off", noun="user")

    @admin.action(description="Halt trading for the selected users today (cancel pending orders, square off)")
    def halt_users(self, request, queryset):
        halt_selected(self, request, queryset, audit_action="admin.user_halt")

    @admin.action(description="Resume trading for the selected users (today's risk state back to NORMAL)")
    def resume_users(self, request, queryset):
        resume_selected(self, request, queryset, audit_action="admin.user_resume")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "role" in form.changed_data:
            services.role_change_settle(actor=request.user, user=obj, previous_role=form.initial["role"])

    def _apply(self, request, queryset, action, verb: str) -> None:
        done = 0
        for user in queryset:
            try:
                action(user)
                done += 1
            except AppError as error:
                self.message_user(request, f"{user.email}: {error.detail}", level=messages.WARNING)
        if done:
            self.message_user(request, f"{done} user(s) {verb}.", level=messages.SUCCESS)
