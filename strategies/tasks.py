"""Strategy tasks: each parses its arguments and calls one service; all are safe to run twice."""

from celery import shared_task
from django.conf import settings

from strategies import services


@shared_task(name="strategies.tasks.fire")
def fire(strategy_id: str, run_id: str, action: str) -> int:
    """A strategy's beat entry: its entry or exit time has come."""
    return len(services.strategy_fire(strategy_id=strategy_id, run_id=run_id, action=action))


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
