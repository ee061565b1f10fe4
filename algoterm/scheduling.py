"""System periodic tasks are defined in code (settings.CELERY_BEAT_SCHEDULE) and synced into
django-celery-beat's tables, which are the one clock beat reads. Syncing is idempotent."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import ModelEntry

from algoterm.celery import app as celery_app

SYSTEM_MARK = "[system] defined in code; edits are overwritten on the next sync"


@dataclass(frozen=True)
class SyncResult:
    synced: list[str]
    disabled: list[str]


@transaction.atomic
def periodic_tasks_sync() -> SyncResult:
    """Create or update every code-defined periodic task; disable system tasks no longer defined in code."""
    schedule = settings.CELERY_BEAT_SCHEDULE
    for name, entry in schedule.items():
        ModelEntry.from_entry(name, app=celery_app, **entry)
        PeriodicTask.objects.filter(name=name).update(description=SYSTEM_MARK)
    stale = PeriodicTask.objects.filter(description=SYSTEM_MARK, enabled=True).exclude(name__in=list(schedule))
    disabled = sorted(stale.values_list("name", flat=True))
    stale.update(enabled=False)
    return SyncResult(synced=sorted(schedule), disabled=disabled)
