"""The Idempotency-Key claim orders are placed under, and the purge of old claims."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from datetime import timedelta

from django.utils import timezone

from orders.models import IdempotencyRecord

# The Idempotency-Key claim the current request acts under; orders placed meanwhile are recorded against it.
_idempotency_record_id: ContextVar[int | None] = ContextVar("idempotency_record_id", default=None)


@contextlib.contextmanager
def orders_placed_under(*, record_id: int):
    token = _idempotency_record_id.set(record_id)
    try:
        yield
    finally:
        _idempotency_record_id.reset(token)


def idempotency_records_purge(*, older_than: timedelta) -> int:
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted
