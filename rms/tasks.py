"""Risk tasks: each parses its arguments and calls one service; all are safe to run twice."""

from celery import shared_task

from rms import services


@shared_task(name="rms.tasks.sweep")
def sweep() -> int:
    """Beat: every user with positions today, in one pass; then the running strategies' own MTM limits and
    re-entries, on the same clock."""
    from strategies.services import strategies_monitor

    breaches = len(services.sweep().breaches)
    strategies_monitor()
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
