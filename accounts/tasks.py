"""Housekeeping tasks: parse, delegate to a service."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from accounts import services


@shared_task(name="accounts.tasks.purge_expired_tokens")
def purge_expired_tokens() -> int:
    return services.tokens_purge_expired()


@shared_task(name="accounts.tasks.purge_old_notifications")
def purge_old_notifications() -> int:
    return services.notifications_purge_old(older_than=timezone.now() - settings.NOTIFICATION_RETENTION)
