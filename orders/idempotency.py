"""Idempotency-Key for the money-moving routes (shared/API.md): the same key and body replays the first response;
the same key with another body is 409 IDEMPOTENCY_KEY_REUSED; concurrent requests with one key act once.

The key is claimed by inserting its row in a transaction of its own (the unique constraint decides the race), so
every other request with that key sees the claim and waits for the first one's response instead of acting. Orders
placed while the claim is held point at it, which gives two guarantees:

- A key is released (so a retry acts again) only when nothing reached a broker under it: an error after an order
  was sent answers with that order's real state and keeps the key.
- A claim holds a lease. When its holder dies (a killed web process) the lease runs out and the next request with
  the key takes the claim over: it settles the orders placed under the key from the broker's order book and answers
  with their state, or acts when nothing was placed. It never answers 409 forever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from algoterm.api.errors import AppError, ErrorCode, IdempotencyKeyReused, ValidationFailed, envelope
from algoterm.failpoints import failpoint
from algoterm.realtime import to_wire
from algoterm.request_context import current_request_id
from orders import services
from orders.models import IdempotencyRecord, Order, OrderStatus

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 120
REPLAY_HEADER = "Idempotent-Replayed"
RETRYABLE_STATUSES = frozenset({400, 429, 503})

# Answers from the orders placed under a key, for a retry whose first attempt died or failed after placing.
Recover = Callable[[list[Order]], Response]


def _request_hash(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def _lease_end():
    return timezone.now() + timedelta(seconds=settings.IDEMPOTENCY_LEASE_SECONDS)


def _replay(record: IdempotencyRecord) -> Response:
    body = record.response_body
    if isinstance(body, dict) and "error_code" in body:
        # The first answer again, but an error envelope's request_id names this request, as X-Request-ID does.
        body = {**body, "request_id": current_request_id()}
    return Response(body, status=record.response_status, headers={REPLAY_HEADER: "true"})


def _claim(*, user, scope: str, key: str, request_hash: str) -> IdempotencyRecord | None:
    """The new record when this request won the key; None when another request holds it."""
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                user=user,
                scope=scope,
                key=key,
                request_hash=request_hash,
                holder=secrets.token_hex(16),
                lease_expires_at=_lease_end(),
            )
    except IntegrityError:
        return None


def _take_over(record: IdempotencyRecord) -> IdempotencyRecord | None:
    """The record, now ours, when its holder's lease ran out without an answer; None when someone else has it."""
    holder = secrets.token_hex(16)
    taken = IdempotencyRecord.objects.filter(
        pk=record.pk, completed_at__isnull=True, lease_expires_at__lt=timezone.now()
    ).update(holder=holder, lease_expires_at=_lease_end())
    if not taken:
        return None
    record.holder = holder
    logger.warning("took over idempotency key %s of %s: its holder died without an answer", record, record.user_id)
    return record


def _await_first(*, user, scope: str, key: str, request_hash: str) -> Response | IdempotencyRecord | None:
    """The first request's answer (a replay), the record when its holder died and we took it over, or None when the
    first request let the key go (act now)."""
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    while True:
        record = IdempotencyRecord.objects.filter(user=user, scope=scope, key=key).first()
        if record is None:
            return None
        if record.request_hash != request_hash:
            raise IdempotencyKeyReused()
        if record.completed_at is not None:
            return _replay(record)
        if record.lease_expires_at is None or record.lease_expires_at < timezone.now():
            taken = _take_over(record)
            if taken is not None:
                return taken
        if time.monotonic() > deadline:
            retry_after = 1
            if record.lease_expires_at is not None:
                retry_after = max(1, int((record.lease_expires_at - timezone.now()).total_seconds()) + 1)
            raise AppError(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                code=ErrorCode.CONFLICT,
                headers={"Retry-After": str(retry_after)},
            )
        time.sleep(0.05)


def _orders_under(record: IdempotencyRecord) -> list[Order]:
    return list(Order.objects.filter(idempotency_record=record).order_by("created_at", "id"))


def _nothing_sent(record: IdempotencyRecord) -> bool:
    """True when no order placed under the key can have reached a broker: none was made, or each was settled as
    refused before sending (circuit open, throttled, session expired)."""
    return (
        not Order.objects.filter(idempotency_record=record)
        .exclude(status=OrderStatus.REJECTED, broker_order_id="")
        .exists()
    )


def _error_response(error: AppError) -> Response:
    return Response(
        envelope(code=error.code, detail=error.detail, errors=error.errors, extra=error.extra),
        status=error.status_code,
        headers=error.headers,
    )


def _answer_from_orders(record: IdempotencyRecord, *, recover: Recover | None, act, stale: bool) -> Response:
    """The answer for orders already placed under the key: each is settled from its broker first, so the client
    learns what the broker holds, never what a dead process last wrote."""
    settled = [services.order_settle_from_broker(order_id=order.pk, stale=stale) for order in _orders_under(record)]
    if not settled or recover is None:
        # Nothing was placed, or the action is idempotent by itself (a square-off covers only what is uncovered).
        return act()
    return recover(settled)


def _complete(record: IdempotencyRecord, response: Response) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk, holder=record.holder).update(
        response_status=response.status_code, response_body=to_wire(response.data), completed_at=timezone.now()
    )


def _release(record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk, holder=record.holder).delete()


def idempotent(
    request: Request, *, scope: str, act: Callable[[], Response], recover: Recover | None = None
) -> Response:
    """Run `act` once per (user, scope, Idempotency-Key); without the header it simply runs.

    `recover` answers from the orders already placed under the key (after a crash or an error that followed a
    send); a route without one must be safe to act again."""
    key = request.headers.get(HEADER, "").strip()
    if not key:
        return act()
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(errors={HEADER: [f"At most {MAX_KEY_LENGTH} characters."]})
    request_hash = _request_hash(request)
    taken_over = False
    while True:
        record = _claim(user=request.user, scope=scope, key=key, request_hash=request_hash)
        if record is not None:
            break
        outcome = _await_first(user=request.user, scope=scope, key=key, request_hash=request_hash)
        if isinstance(outcome, Response):
            return outcome
        if isinstance(outcome, IdempotencyRecord):
            record, taken_over = outcome, True
            break
    failpoint("idempotency.claimed")
    with services.orders_placed_under(record_id=record.pk):
        try:
            if taken_over:
                response = _answer_from_orders(record, recover=recover, act=act, stale=True)
            else:
                response = act()
        except AppError as error:
            response = _error_response(error)
        except BaseException:
            if _nothing_sent(record):
                # No answer to remember and nothing reached a broker: free the key so the client's retry can act.
                _release(record)
                raise
            # Orders went out before it failed (a lost database connection, a bug after the broker accepted): the
            # retry must see them, never place them again. Answer with their state; if even that fails, the claim
            # stays and its lease running out hands it to the next retry.
            logger.exception("failure after orders were placed under idempotency key %s; answering their state", key)
            try:
                response = _answer_from_orders(record, recover=recover, act=act, stale=False)
            except AppError as error:
                response = _error_response(error)
    if response.status_code in RETRYABLE_STATUSES and _nothing_sent(record):
        # Nothing was done (invalid input, throttled, broker unreachable before sending): the same key may try again.
        _release(record)
        return response
    failpoint("idempotency.before_complete")
    _complete(record, response)
    return response
