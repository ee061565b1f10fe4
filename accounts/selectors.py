"""Reads of the accounts app, always scoped to the user who asks."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from accounts.models import Notification, User
from algoterm import realtime
from algoterm.api.errors import NotFound


def user_get(*, user: User, user_id: str) -> User:
    """Oneself, or anyone for an admin; any other id is 404 (not 403), so ids reveal nothing."""
    if user_id == user.pk:
        return user
    if user.is_admin:
        found = User.objects.filter(pk=user_id).first()
        if found is not None:
            return found
    raise NotFound()


def notification_list(*, user: User, unread: bool | None = None, kind: str | None = None) -> QuerySet[Notification]:
    notifications = Notification.objects.filter(user=user)
    if unread is True:
        notifications = notifications.filter(read_at__isnull=True)
    elif unread is False:
        notifications = notifications.filter(read_at__isnull=False)
    if kind:
        notifications = notifications.filter(kind=kind)
    return notifications.order_by("-created_at", "-id")


def notification_get(*, user: User, notification_id: str) -> Notification:
    notification = Notification.objects.filter(user=user, pk=notification_id).first()
    if notification is None:
        raise NotFound()
    return notification


def notification_unread_count(*, user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def events_snapshot(*, user: User) -> dict:
    """The state /ws/events sends on connect and on `request_snapshot`: the unread count, and what the apps above
    register (open orders and positions), so a client that reconnects replaces its state rather than replaying."""
    return {"unread_notifications": notification_unread_count(user=user), **realtime.snapshot_parts(user=user)}


def user_profile(*, user: User) -> User:
    """The caller with what the app's home screen needs (unread_notifications) annotated on."""
    return User.objects.annotate(
        unread_notifications=Count("notifications", filter=Q(notifications__read_at__isnull=True))
    ).get(pk=user.pk)
