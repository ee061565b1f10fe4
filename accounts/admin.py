"""Operators' views of the audit log, notifications and revoked access tokens. The users' own admin, with its
operator actions across apps (square off, halt, resume), is registered by the operator console."""

from django.contrib import admin

from accounts.models import AuditEvent, Notification, RevokedAccessToken
from algoterm.admin_mixins import ReadOnlyMixin


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
