"""Operators' views of users, the audit log and notifications. Actions call services: deactivate and reactivate
(accounts), and square off, halt and resume trading (rms), each audited as `admin.<verb>`."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts import services
from accounts.forms import UserChangeAdminForm, UserCreationAdminForm
from accounts.models import AuditEvent, Notification, RevokedAccessToken, User
from algoterm.admin_mixins import ReadOnlyMixin
from algoterm.api.errors import AppError
from orders.admin_actions import SquareOffJob, square_off_selected
from rms import services as rms_services
from rms.admin_actions import halt_selected, resume_selected


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


@admin.register(RevokedAccessToken)
class RevokedAccessTokenAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Access tokens refused before their expiry (logouts); the purge task removes them once expired."""

    list_display = ["jti", "expires_at"]
    date_hierarchy = "expires_at"


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["occurred_at", "kind", "action", "actor", "target_type", "target_id", "ip"]
    list_filter = ["kind", "action"]
    search_fields = ["id", "action", "target_id", "actor__email", "request_id"]
    date_hierarchy = "occurred_at"
    list_select_related = ["actor"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "user", "kind", "level", "title", "read_at"]
    list_filter = ["level", "kind"]
    search_fields = ["id", "title", "user__email"]
    list_select_related = ["user"]
    readonly_fields = ["id", "created_at"]
    raw_id_fields = ["user"]
