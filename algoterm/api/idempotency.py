"""Idempotency-Key for the money-moving routes (shared/API.md): the same key and body replays the first response;
the same key with another body is 409 IDEMPOTENCY_KEY_REUSED; concurrent requests with one key act once.

The key is claimed by inserting its row in a transaction of its own (the unique constraint decides the race), so
every other request with that key sees the claim and waits for the first one's response instead of acting. What is
done while the claim is held (orders placed) points at it, which gives two guarantees:

- A key is released (so a retry acts again) only when nothing reached a broker under it: an error after an order
  was sent answers with that order's real state and keeps the key.
- A claim holds a lease. When its holder dies (a killed web process) the lease runs out and the next request with
  the key takes the claim over: it settles what was done under the key from the broker and answers with its state,
  or acts when nothing was done. It never answers 409 forever.

The claims and what was done under them are kept by the app that acts (orders: its IdempotencyRecord rows and the
orders placed under them), which registers its `IdempotencyStore` from its `AppConfig.ready()`. A request that
sends a key while no store is registered is refused: acting without the guarantee could act twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request
from rest_framework.response import Response

from algoterm.api.errors import AppError, ErrorCode, IdempotencyKeyReused, ValidationFailed, envelope
from algoterm.failpoints import failpoint
from algoterm.realtime import to_wire
from algoterm.request_context import current_request_id

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 120
REPLAY_HEADER = "Idempotent-Replayed"
RETRYABLE_STATUSES = frozenset({400, 429, 503})

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    HEADER,
    str,
    location=OpenApiParameter.HEADER,
    description="Same key and body: the first response again, nothing done twice. Same key, other body: 409 "
    "IDEMPOTENCY_KEY_REUSED. Kept 48 hours.",
)

# Answers from what was already done under a key (the orders placed), for a retry whose first attempt died or failed
# after acting.
Recover = Callable[[list[Any]], Response]


class Claim(Protocol):
    """One key's claim, as the store keeps it."""

    pk: Any
    user_id: Any
    holder: str
    request_hash: str
    lease_expires_at: datetime | None
    completed_at: datetime | None
    response_status: int | None
    response_body: Any


@dataclass(frozen=True)
class IdempotencyStore:
    """Where the claims live and what was done under them; every function is keyword-only.

    claim_create(user, scope, key, request_hash, holder, lease_expires_at): the new claim, None when the key is taken.
    claim_get(user, scope, key): the key's claim, or None.
    claim_take_over(claim, holder, lease_expires_at): True when the claim was unanswered and its lease had run out,
        and it now has the new holder and lease.
    claim_complete(claim, status, body): remember the answer, if the claim is still the caller's.
    claim_release(claim): forget the claim, if it is still the caller's.
    acting_under(claim): a context in which what is done points at the claim.
    done_under(claim, stale): what was done under the claim, each settled from its broker first (`stale`: whoever
        did it is gone).
    nothing_sent_under(claim): True when nothing done under the claim can have reached a broker.
    """

    claim_create: Callable[..., Claim | None]
    claim_get: Callable[..., Claim | None]
    claim_take_over: Callable[..., bool]
    claim_complete: Callable[..., None]
    claim_release: Callable[..., None]
    acting_under: Callable[..., AbstractContextManager]
    done_under: Callable[..., list[Any]]
    nothing_sent_under: Callable[..., bool]


_stores: list[IdempotencyStore] = []


def idempotency_store_register(store: IdempotencyStore) -> None:
    """Make `store` the one the routes' `idempotent` keeps its claims in (registering again replaces it)."""
    _stores[:] = [store]


def _store() -> IdempotencyStore:
    if not _stores:
        raise ImproperlyConfigured("No idempotency store is registered; an Idempotency-Key cannot be honoured.")
    return _stores[0]


def _request_hash(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def _lease_end() -> datetime:
    return timezone.now() + timedelta(seconds=settings.IDEMPOTENCY_LEASE_SECONDS)


def _replay(claim: Claim) -> Response:
    body = claim.response_body
    if isinstance(body, dict) and "error_code" in body:
        # The first answer again, but an error envelope's request_id names this request, as X-Request-ID does.
        body = {**body, "request_id": current_request_id()}
    return Response(body, status=claim.response_status, headers={REPLAY_HEADER: "true"})


def _take_over(store: IdempotencyStore, claim: Claim) -> Claim | None:
    """The claim, now ours, when its holder's lease ran out without an answer; None when someone else has it."""
    holder = secrets.token_hex(16)
    if not store.claim_take_over(claim=claim, holder=holder, lease_expires_at=_lease_end()):
        return None
    claim.holder = holder
    logger.warning("took over idempotency key %s of %s: its holder died without an answer", claim, claim.user_id)
    return claim


def _await_first(store: IdempotencyStore, *, user, scope: str, key: str, request_hash: str) -> Response | Claim | None:
    """The first request's answer (a replay), the claim when its holder died and we took it over, or None when the
    first request let the key go (act now)."""
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    while True:
        claim = store.claim_get(user=user, scope=scope, key=key)
        if claim is None:
            return None
        if claim.request_hash != request_hash:
            raise IdempotencyKeyReused()
        if claim.completed_at is not None:
            return _replay(claim)
        if claim.lease_expires_at is None or claim.lease_expires_at < timezone.now():
            taken = _take_over(store, claim)
            if taken is not None:
                return taken
        if time.monotonic() > deadline:
            retry_after = 1
            if claim.lease_expires_at is not None:
                retry_after = max(1, int((claim.lease_expires_at - timezone.now()).total_seconds()) + 1)
            raise AppError(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                code=ErrorCode.CONFLICT,
                headers={"Retry-After": str(retry_after)},
            )
        time.sleep(0.05)


def _error_response(error: AppError) -> Response:
    return Response(
        envelope(code=error.code, detail=error.detail, errors=error.errors, extra=error.extra),
        status=error.status_code,
        headers=error.headers,
    )


def _answer_from_done(
    store: IdempotencyStore, claim: Claim, *, recover: Recover | None, act: Callable[[], Response], stale: bool
) -> Response:
    """The answer for what was already done under the key: each is settled from its broker first, so the client
    learns what the broker holds, never what a dead process last wrote."""
    settled = store.done_under(claim=claim, stale=stale)
    if not settled or recover is None:
        # Nothing was done, or the action is idempotent by itself (a square-off covers only what is uncovered).
        return act()
    return recover(settled)


def _complete(store: IdempotencyStore, claim: Claim, response: Response) -> None:
    store.claim_complete(claim=claim, status=response.status_code, body=to_wire(response.data))


def idempotent(
    request: Request, *, scope: str, act: Callable[[], Response], recover: Recover | None = None
) -> Response:
    """Run `act` once per (user, scope, Idempotency-Key); without the header it simply runs.

    `recover` answers from what was already done under the key (after a crash or an error that followed a send);
    a route without one must be safe to act again."""
    key = request.headers.get(HEADER, "").strip()
    if not key:
        return act()
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(errors={HEADER: [f"At most {MAX_KEY_LENGTH} characters."]})
    store = _store()
    request_hash = _request_hash(request)
    taken_over = False
    while True:
        claim = store.claim_create(
            user=request.user,
            scope=scope,
            key=key,
            request_hash=request_hash,
            holder=secrets.token_hex(16),
            lease_expires_at=_lease_end(),
        )
        if claim is not None:
            break
        outcome = _await_first(store, user=request.user, scope=scope, key=key, request_hash=request_hash)
        if isinstance(outcome, Response):
            return outcome
        if outcome is not None:
            claim, taken_over = outcome, True
            break
    failpoint("idempotency.claimed")
    with store.acting_under(claim=claim):
        try:
            if taken_over:
                response = _answer_from_done(store, claim, recover=recover, act=act, stale=True)
            else:
                response = act()
        except AppError as error:
            response = _error_response(error)
        except BaseException:
            if store.nothing_sent_under(claim=claim):
                # No answer to remember and nothing reached a broker: free the key so the client's retry can act.
                store.claim_release(claim=claim)
                raise
            # Orders went out before it failed (a lost database connection, a bug after the broker accepted): the
            # retry must see them, never place them again. Answer with their state; if even that fails, the claim
            # stays and its lease running out hands it to the next retry.
            logger.exception("failure after acting under idempotency key %s; answering with what was done", key)
            try:
                response = _answer_from_done(store, claim, recover=recover, act=act, stale=False)
            except AppError as error:
                response = _error_response(error)
    if response.status_code in RETRYABLE_STATUSES and store.nothing_sent_under(claim=claim):
        # Nothing was done (invalid input, throttled, broker unreachable before sending): the same key may try again.
        store.claim_release(claim=claim)
        return response
    failpoint("idempotency.before_complete")
    _complete(store, claim, response)
    return response
