"""Shared pieces of the operators' console."""

from __future__ import annotations


class ReadOnlyMixin:
    """No add, change or delete in the admin: the rows are written by services alone (admin actions call them)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
