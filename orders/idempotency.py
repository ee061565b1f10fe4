"""Idempotency-Key for the money-moving routes (shared/API.md): the same key and body replays the first response;
the same key with another body is 409 IDEMPOTENCY_KEY_REUSED; concurrent requests with one key act once.

The key is claimed by inserting its row in a transaction of its own (the unique constraint decides the race), so
every other request with that key sees the claim and waits for the first one's response instead of acting.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from algoterm.api.errors import AppError, ErrorCode, IdempotencyKeyReused, ValidationFailed, envelope
from algoterm.realtime import to_wire
from algoterm.request_context import current_request_id
from orders.models import IdempotencyRecord

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 120
REPLAY_HEADER = "Idempotent-Replayed"
RETRYABLE_STATUSES = frozenset({400, 429, 503})


def _request_hash(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


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
            return IdempotencyRecord.objects.create(user=user, scope=scope, key=key, request_hash=request_hash)
    except IntegrityError:
        return None


def _await_first(*, user, scope: str, key: str, request_hash: str) -> Response | None:
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    while True:
        record = IdempotencyRecord.objects.filter(user=user, scope=scope, key=key).first()
        if record is None:  # the first request failed without an answer and let the key go: act now
            return None
        if record.request_hash != request_hash:
            raise IdempotencyKeyReused()
        if record.completed_at is not None:
            return _replay(record)
        if time.monotonic() > deadline:
            raise AppError(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                code=ErrorCode.CONFLICT,
            )
        time.sleep(0.05)


def idempotent(request: Request, *, scope: str, act: Callable[[], Response]) -> Response:
    """Run `act` once per (user, scope, Idempotency-Key); without the header it simply runs."""
    key = request.headers.get(HEADER, "").strip()
    if not key:
        return act()
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(errors={HEADER: [f"At most {MAX_KEY_LENGTH} characters."]})
    request_hash = _request_hash(request)
    while True:
        record = _claim(user=request.user, scope=scope, key=key, request_hash=request_hash)
        if record is not None:
            break
        replay = _await_first(user=request.user, scope=scope, key=key, request_hash=request_hash)
        if replay is not None:
            return replay
    try:
        response = act()
    except AppError as error:
        response = Response(
            envelope(code=error.code, detail=error.detail, errors=error.errors, extra=error.extra),
            status=error.status_code,
            headers=error.headers,
        )
    except BaseException:
        # No answer to remember (a bug or a crash): free the key so the client's retry can act.
        IdempotencyRecord.objects.filter(pk=record.pk).delete()
        raise
    if response.status_code in RETRYABLE_STATUSES:
        # Nothing was done (invalid input, throttled, broker unreachable before sending): the same key may try again.
        IdempotencyRecord.objects.filter(pk=record.pk).delete()
        return response
    record.response_status = response.status_code
    record.response_body = to_wire(response.data)
    record.completed_at = timezone.now()
    record.save(update_fields=["response_status", "response_body", "completed_at"])
    return response
