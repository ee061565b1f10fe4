import pytest
from django_celery_beat.models import PeriodicTask

from algoterm.scheduling import periodic_tasks_sync

pytestmark = pytest.mark.django_db


def test_sync_creates_code_defined_tasks_once(settings):
    periodic_tasks_sync()
    periodic_tasks_sync()

    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert set(settings.CELERY_BEAT_SCHEDULE) <= names
    assert PeriodicTask.objects.filter(name="accounts.purge_expired_tokens").count() == 1
    task = PeriodicTask.objects.get(name="accounts.purge_expired_tokens")
    assert task.task == "accounts.tasks.purge_expired_tokens" and task.interval.every == 6 * 3600


def test_tasks_removed_from_code_are_disabled_and_changed_ones_updated(settings):
    from datetime import timedelta

    periodic_tasks_sync()
    defined = set(settings.CELERY_BEAT_SCHEDULE)
    settings.CELERY_BEAT_SCHEDULE = {
        "accounts.purge_expired_tokens": {"task": "accounts.tasks.purge_expired_tokens", "schedule": timedelta(hours=1)}
    }

    result = periodic_tasks_sync()

    assert result.disabled == sorted(defined - {"accounts.purge_expired_tokens"})
    assert not PeriodicTask.objects.get(name="accounts.purge_old_notifications").enabled
    assert PeriodicTask.objects.get(name="accounts.purge_expired_tokens").interval.every == 3600


def test_purge_tasks_remove_only_what_is_expired(trader):
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts import services, tasks
    from accounts.models import Notification

    RefreshToken.for_user(trader)
    OutstandingToken.objects.create(user=trader, jti="old", token="x", expires_at=timezone.now() - timedelta(days=1))
    old_read = services.notification_create(user=trader, kind="t", title="old")
    Notification.objects.filter(pk=old_read.pk).update(
        created_at=timezone.now() - timedelta(days=400), read_at=timezone.now()
    )
    old_unread = services.notification_create(user=trader, kind="t", title="old unread")
    Notification.objects.filter(pk=old_unread.pk).update(created_at=timezone.now() - timedelta(days=400))

    assert tasks.purge_expired_tokens() == 1
    assert tasks.purge_old_notifications() == 1
    assert OutstandingToken.objects.filter(user=trader).count() == 1
    assert Notification.objects.filter(pk=old_unread.pk).exists()
