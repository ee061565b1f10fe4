"""Operators' views of users, the audit log and notifications. Actions call services."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from accounts import services
from accounts.forms import UserChangeAdminForm, UserCreationAdminForm
from accounts.models import AuditEvent, Notification, User
from algoterm.api.errors import AppError


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
    actions = ["deactivate_users", "reactivate_users"]

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
