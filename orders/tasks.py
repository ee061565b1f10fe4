"""Order follow-ups: each task takes ids, loads, and calls one service; all are safe to run twice."""

from celery import shared_task
from django.conf import settings

from orders import postbacks, services


@shared_task(name="orders.tasks.reconcile_account")
def reconcile_account(account_id: str) -> dict:
    return services.orders_reconcile(account_id=account_id)


@shared_task(name="orders.tasks.reconcile_open")
def reconcile_open() -> int:
    """Beat: every account with live orders (or filled entries still owed their exits) is reconciled."""
    account_ids = services.accounts_needing_reconcile()
    for account_id in account_ids:
        reconcile_account.delay(account_id)
    return len(account_ids)


@shared_task(name="orders.tasks.refresh_pushed_order")
def refresh_pushed_order(order_id: str) -> None:
    postbacks.order_refresh_pushed(order_id=order_id)


@shared_task(name="orders.tasks.place_exits")
def place_exits(order_id: str) -> int:
    return len(services.order_exits_place(order_id=order_id))


@shared_task(name="orders.tasks.follow_up_fill")
def follow_up_fill(order_id: str) -> None:
    services.order_fill_follow_up(order_id=order_id)


@shared_task(name="orders.tasks.settle_oco")
def settle_oco(order_id: str) -> None:
    services.order_oco_settle(order_id=order_id)


@shared_task(name="orders.tasks.trail_stops")
def trail_stops() -> int:
    return services.stops_trail()


@shared_task(name="orders.tasks.purge_idempotency_keys")
def purge_idempotency_keys() -> int:
    return services.idempotency_records_purge(older_than=settings.IDEMPOTENCY_KEY_TTL)
