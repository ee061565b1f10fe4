"""Reads of the brokers app, scoped to the user who asks."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from algoterm.api.errors import NotFound
from brokers.adapters.base import Funds
from brokers.gateway import adapter_for
from brokers.models import BrokerAccount


def broker_account_list(*, user: User, broker: str | None = None, status: str | None = None) -> QuerySet[BrokerAccount]:
    accounts = BrokerAccount.objects.filter(owner=user, deleted_at__isnull=True)
    if broker:
        accounts = accounts.filter(broker=broker)
    if status:
        accounts = accounts.filter(status=status)
    return accounts.order_by("created_at", "id")


def broker_account_get(*, user: User, account_id: str) -> BrokerAccount:
    account = BrokerAccount.objects.filter(owner=user, pk=account_id, deleted_at__isnull=True).first()
    if account is None:
        raise NotFound()
    return account


def broker_account_funds(*, user: User, account_id: str) -> Funds:
    """Live from the broker: 409 BROKER_SESSION_EXPIRED when a login is needed, 503 when the broker is down."""
    return adapter_for(broker_account_get(user=user, account_id=account_id)).funds()
