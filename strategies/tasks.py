"""Strategy tasks: each parses its arguments and calls one service; all are safe to run twice."""

from datetime import datetime

from celery import shared_task
from django.conf import settings

from strategies import services


@shared_task(name="strategies.tasks.dispatch_fires")
def dispatch_fires() -> int:
    """Beat, every minute: claim the fires due this minute (and any missed) and fan them out in chunks."""
    return services.fires_dispatch().fires


@shared_task(name="strategies.tasks.fire_chunk")
def fire_chunk(minute: str, strategy_ids: list[str]) -> int:
    """A chunk of strategies whose claimed fires are due at `minute`; each acts once however often it arrives."""
    return services.fires_execute(minute=datetime.fromisoformat(minute), strategy_ids=list(strategy_ids))


@shared_task(name="strategies.tasks.recover_fires")
def recover_fires() -> int:
    """Beat: send again the fires claimed and not finished (a lost message, a worker killed mid-burst)."""
    return services.fires_recover()


@shared_task(name="strategies.tasks.evaluate_rules")
def evaluate_rules() -> int:
    return services.rules_evaluate()


@shared_task(
    name="strategies.tasks.backtest_run",
    soft_time_limit=settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS,
    time_limit=settings.BACKTEST_HARD_TIME_LIMIT_SECONDS,
)
def backtest_run(backtest_id: str) -> None:
    services.backtest_execute_stored(backtest_id=backtest_id)


@shared_task(name="strategies.tasks.expire_backtests")
def expire_backtests() -> int:
    """Beat: backtests no worker will finish are failed, freeing their users' backtest slots."""
    return services.backtests_expire()
