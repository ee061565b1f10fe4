"""Requests per minute by the user's plan, counted in Redis (the cache) so every web process shares the count.

The budget is about fairness, not safety: while Redis is down the throttle lets requests through (logged once per
outage) rather than refusing them all."""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from algoterm.api.errors import RateLimited
from algoterm.outages import REDIS_ERRORS, OutageNotice
from billing.selectors import entitlements_for

_outage = OutageNotice("Redis for the per-plan request throttle (failing open)")


class PlanRateThrottle(BaseThrottle):
    """A fixed one-minute window per user: the plan's `api_requests_per_minute`, then 429 RATE_LIMITED with
    Retry-After until the next minute. Unauthenticated calls (login, webhooks, plans) are not counted here."""

    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request, view) -> bool:
        user = getattr(request, "user", None)
        if not settings.BILLING_PLAN_THROTTLE or user is None or not user.is_authenticated:
            return True
        limit = entitlements_for(user=user).api_requests_per_minute
        if limit is None:
            return True
        now = time.time()
        window = int(now // 60)
        try:
            count = _count(f"throttle:plan:{user.pk}:{window}")
        except REDIS_ERRORS as error:
            _outage.failed(error)
            return True
        _outage.succeeded()
        if count <= limit:
            return True
        self._wait = (window + 1) * 60 - now
        # Raised here rather than left to DRF's Throttled, so the body carries `retry_after` as the contract says.
        raise RateLimited(
            f"Your plan allows {limit} requests a minute; retry after the minute ends.",
            retry_after=math.ceil(self._wait),
        )

    def wait(self) -> float:
        return self._wait


def _count(key: str) -> int:
    cache.add(key, 0, timeout=90)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr: this request starts the window
        cache.set(key, 1, timeout=90)
        return 1
