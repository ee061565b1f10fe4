"""A running strategy's beat entries: its entry and exit times as Celery beat crontab tasks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import time

from django_celery_beat.models import CrontabSchedule, PeriodicTask

from ..definitions import Kind
from ..models import FireAction, Strategy, StrategyRun
from .clock import IST

FIRE_TASK = "strategies.tasks.fire"
SCHEDULE_DESCRIPTION = "[strategy] created by start, removed by stop"


def _schedule_name(strategy: Strategy, action: str) -> str:
    return f"strategy {strategy.pk} {action}"


def _crontab_for(*, at: time, weekdays: Iterable[int]) -> CrontabSchedule:
    # cron counts Sunday as 0; ours is Python's Monday = 0.
    days = ",".join(str((day + 1) % 7) for day in sorted(set(weekdays)))
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=str(at.minute),
        hour=str(at.hour),
        day_of_week=days,
        day_of_month="*",
        month_of_year="*",
        timezone=IST,
    )
    return schedule


def _schedules_create(*, strategy: Strategy, run: StrategyRun) -> list[PeriodicTask]:
    """Entry (time-based only) and exit entries on the strategy's weekdays in IST; holidays are skipped when the
    task runs, by the market calendar, since cron cannot know them."""
    times = [(FireAction.EXIT, strategy.exit_time)]
    if strategy.kind == Kind.TIME_BASED:
        times.insert(0, (FireAction.ENTRY, strategy.entry_time))
    created = []
    for action, at in times:
        task, _ = PeriodicTask.objects.update_or_create(
            name=_schedule_name(strategy, action),
            defaults={
                "task": FIRE_TASK,
                "crontab": _crontab_for(at=at, weekdays=strategy.weekdays),
                "interval": None,
                "kwargs": json.dumps({"strategy_id": strategy.pk, "run_id": run.pk, "action": action}),
                "enabled": True,
                "description": SCHEDULE_DESCRIPTION,
            },
        )
        created.append(task)
    return created


def _schedules_remove(*, strategy: Strategy) -> int:
    deleted, _ = PeriodicTask.objects.filter(name__startswith=f"strategy {strategy.pk} ").delete()
    return deleted
