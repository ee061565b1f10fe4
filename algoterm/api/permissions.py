"""Role permissions. Roles are ordered: user < trader < admin."""

from rest_framework.permissions import BasePermission


class IsAdmin(BasePermission):
    message = "Only administrators can do this."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_admin)


class IsTrader(BasePermission):
    """May trade: traders and admins. A plain user can look but not place orders or run strategies."""

    message = "Your role does not allow trading."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.can_trade)
