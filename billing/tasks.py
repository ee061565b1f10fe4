"""Billing tasks: each calls one service; safe to run twice."""

from celery import shared_task

from billing import services


@shared_task(name="billing.tasks.expire_trials")
def expire_trials() -> int:
    return services.trials_expire()
