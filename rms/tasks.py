"""Risk tasks: each parses its arguments and calls one service; all are safe to run twice."""

from celery import shared_task

from brokers.selectors import broker_account_find
from rms import services
from rms.signals import sweep_finished


@shared_task(name="rms.tasks.sweep")
def sweep() -> int:
    """Beat: every user with positions today, in one pass; then, on the same clock, what listens to
    `sweep_finished` (the running strategies' own MTM limits and re-entries)."""
    breaches = len(services.sweep().breaches)
    sweep_finished.send(sender=None)
    return breaches


@shared_task(name="rms.tasks.evaluate_symbols")
def evaluate_symbols(symbols: list[str]) -> int:
    """Tick-driven: only the users holding the symbols that just moved."""
    user_ids = services.users_holding(symbols=symbols)
    if not user_ids:
        return 0
    return len(services.sweep(user_ids=user_ids).breaches)


@shared_task(name="rms.tasks.evaluate_users")
def evaluate_users(user_ids: list[str]) -> int:
    """After a fill: the user's MTM changed without a tick."""
    return len(services.sweep(user_ids=user_ids).breaches)


@shared_task(name="rms.tasks.evaluate_pending")
def evaluate_pending() -> int:
    """After fills, coalesced: every user whose fills asked for an evaluation since the last run, in one sweep."""
    user_ids = services.evaluation_pending_take()
    if not user_ids:
        return 0
    return len(services.sweep(user_ids=user_ids).breaches)


@shared_task(name="rms.tasks.funds_snapshot_refresh")
def funds_snapshot_refresh(account_id: str) -> None:
    """After a fill: the account's funds snapshot, which the pre-trade check answers from, is read again."""
    account = broker_account_find(account_id=account_id, include_disconnected=False)
    if account is not None:
        services.funds_snapshot_refresh(account=account)
