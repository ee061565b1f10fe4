from datetime import datetime

from celery import shared_task

from algoterm.console.system import holiday_lists_alert
from algoterm.health import heartbeat_record


@shared_task(name="algoterm.tasks.heartbeat", ignore_result=True, expires=30)
def heartbeat() -> None:
    heartbeat_record()


@shared_task(name="algoterm.tasks.check_holiday_lists", ignore_result=True)
def check_holiday_lists(now: str | None = None) -> list[int]:
    """Daily: admins hear once per year of a missing NSE holiday list. `now` (aware ISO 8601) replays another day."""
    return holiday_lists_alert(now=datetime.fromisoformat(now) if now else None)
