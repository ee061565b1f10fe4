"""The Idempotency-Key claims of the order routes: their IdempotencyRecord rows, the orders placed under a claim,
and the purge of old claims. The API layer's `idempotent` keeps its claims here (`OrdersConfig.ready()` registers
these as its store)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from orders.models import IdempotencyRecord, Order, OrderStatus

# The Idempotency-Key claim the current request acts under; orders placed meanwhile are recorded against it.
_idempotency_record_id: ContextVar[int | None] = ContextVar("idempotency_record_id", default=None)


@contextlib.contextmanager
def orders_placed_under(*, record_id: int) -> Iterator[None]:
    token = _idempotency_record_id.set(record_id)
    try:
        yield
    finally:
        _idempotency_record_id.reset(token)


def idempotency_records_purge(*, older_than: timedelta) -> int:
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted


def idempotency_claim_create(
    *, user: User, scope: str, key: str, request_hash: str, holder: str, lease_expires_at: datetime
) -> IdempotencyRecord | None:
    """The new claim when this request won the key; None when another request holds it (the unique constraint
    decides the race, in a transaction of its own so every other request sees the claim at once)."""
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                user=user,
                scope=scope,
                key=key,
                request_hash=request_hash,
                holder=holder,
                lease_expires_at=lease_expires_at,
            )
    except IntegrityError:
        return None


def idempotency_claim_get(*, user: User, scope: str, key: str) -> IdempotencyRecord | None:
    return IdempotencyRecord.objects.filter(user=user, scope=scope, key=key).first()


def idempotency_claim_take_over(*, claim: IdempotencyRecord, holder: str, lease_expires_at: datetime) -> bool:
    """Hand an unanswered claim whose lease ran out to a new holder; False when it was answered or taken meanwhile."""
    taken = IdempotencyRecord.objects.filter(
        pk=claim.pk, completed_at__isnull=True, lease_expires_at__lt=timezone.now()
    ).update(holder=holder, lease_expires_at=lease_expires_at)
    return bool(taken)


def idempotency_claim_complete(*, claim: IdempotencyRecord, status: int, body: Any) -> None:
    IdempotencyRecord.objects.filter(pk=claim.pk, holder=claim.holder).update(
        response_status=status, response_body=body, completed_at=timezone.now()
    )


def idempotency_claim_release(*, claim: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=claim.pk, holder=claim.holder).delete()


def idempotency_claim_acting(*, claim: IdempotencyRecord) -> contextlib.AbstractContextManager[None]:
    """Orders placed within point at the claim."""
    return orders_placed_under(record_id=claim.pk)


def orders_placed_under_claim(*, claim: IdempotencyRecord) -> list[Order]:
    return list(Order.objects.filter(idempotency_record=claim).order_by("created_at", "id"))


def idempotency_claim_nothing_sent(*, claim: IdempotencyRecord) -> bool:
    """True when no order placed under the claim can have reached a broker: none was made, or each was settled as
    refused before sending (circuit open, throttled, session expired)."""
    return (
        not Order.objects.filter(idempotency_record=claim)
        .exclude(status=OrderStatus.REJECTED, broker_order_id="")
        .exists()
    )
