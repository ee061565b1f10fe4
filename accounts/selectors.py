"""Reads of the accounts app, always scoped to the user who asks."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Q, QuerySet

from accounts.models import AuditEvent, Notification, Role, User
from algoterm import realtime
from algoterm.api.errors import NotFound
from algoterm.locking import row_locked


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


def user_row_lock(*, user: User) -> None:
    """Lock the user's row until the transaction ends: the lock a user's concurrent actions queue on where only one
    may pass at a time (say, two starts that must not both get the plan's last slot)."""
    row_locked(User.objects.only("pk"), pk=user.pk)


# --- platform-wide, for the operator console (every user) ------------------------------------------------------------


def user_platform_figures(*, seen_since: datetime) -> dict:
    """Every user counted: `total`, `active` (not deactivated), `seen` (active and logged in since `seen_since`),
    and `active_by_role`, by role."""
    counts = User.objects.aggregate(
        total=Count("pk"),
        active=Count("pk", filter=Q(is_active=True)),
        seen=Count("pk", filter=Q(is_active=True, last_login__gte=seen_since)),
    )
    by_role = dict(
        User.objects.filter(is_active=True).order_by().values_list("role").annotate(count=Count("pk")).order_by("role")
    )
    return {**counts, "active_by_role": by_role}


def user_platform_list(
    *, role: str | None = None, is_active: bool | None = None, search: str | None = None
) -> QuerySet[User]:
    """Every user, newest first; `search`: part of the email or the name."""
    users = User.objects.all()
    if role:
        users = users.filter(role=role)
    if is_active is not None:
        users = users.filter(is_active=is_active)
    if search:
        users = users.filter(Q(email__icontains=search) | Q(name__icontains=search))
    return users.order_by("-date_joined", "-id")


def user_platform_admins(*, exclude: User | None = None) -> QuerySet[User]:
    """The active admins (the operators), but `exclude`."""
    admins = User.objects.filter(role=Role.ADMIN, is_active=True)
    return admins.exclude(pk=exclude.pk) if exclude is not None else admins


def audit_event_platform_list(
    *,
    kinds: list[str] | None = None,
    action_prefix: str | None = None,
    actor_id: str | None = None,
    target_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """The audit log, newest first, with the actors; `start`/`end` are inclusive."""
    events = AuditEvent.objects.select_related("actor")
    if kinds:
        events = events.filter(kind__in=kinds)
    if action_prefix:
        events = events.filter(action__startswith=action_prefix)
    if actor_id:
        events = events.filter(actor_id=actor_id)
    if target_id:
        events = events.filter(target_id=target_id)
    if start:
        events = events.filter(occurred_at__gte=start)
    if end:
        events = events.filter(occurred_at__lte=end)
    return events.order_by("-occurred_at", "-id")


def audit_event_exists(*, action: str, target_id: str) -> bool:
    return AuditEvent.objects.filter(action=action, target_id=target_id).exists()


# --- by id, for the system's own work (the risk engine acting for a user; never for a user's request) -------------


def user_by_id(*, user_id: str) -> User | None:
    """The user as stored now (not as a caller loaded them: deactivated or demoted a moment ago), or None."""
    return User.objects.filter(pk=user_id).first()


def user_list_by_ids(*, user_ids: list[str]) -> list[User]:
    """The users with these ids, by email."""
    return list(User.objects.filter(pk__in=user_ids).order_by("email"))


def user_by_email(*, email: str) -> User | None:
    """Operators' tooling: the user with this email, or None."""
    return User.objects.filter(email=email).first()
