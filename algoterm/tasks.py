from datetime import datetime

from celery import shared_task
from django.utils import timezone

from algoterm.console.alerts import alerts_evaluate
from algoterm.console.order_rates import order_rates_publish
from algoterm.console.system import holiday_lists_alert
from algoterm.health import heartbeat_record


@shared_task(name="algoterm.tasks.heartbeat", ignore_result=True, expires=30)
def heartbeat() -> None:
    heartbeat_record()


@shared_task(name="algoterm.tasks.check_holiday_lists", ignore_result=True)
def check_holiday_lists(now: str | None = None) -> list[int]:
    """Daily: admins hear once per year of a missing NSE holiday list. `now` (aware ISO 8601) replays another day."""
    return holiday_lists_alert(now=datetime.fromisoformat(now) if now else None)


# A late run would report the wrong minute as "the last one": it expires before the next one is sent.
@shared_task(name="algoterm.tasks.publish_order_rates", ignore_result=True, expires=50)
def publish_order_rates(now: str | None = None) -> None:
    """Every minute: the last completed minute's order counts and rates per broker, on /ws/ops `orders`. `now`
    (aware ISO 8601) replays another minute."""
    order_rates_publish(now=datetime.fromisoformat(now) if now else timezone.now())


@shared_task(name="algoterm.tasks.evaluate_alerts", ignore_result=True, expires=15)
def evaluate_alerts() -> None:
    """Every ALERT_EVALUATE_SECONDS: raise the platform alerts that started, clear those that ended."""
    alerts_evaluate()
