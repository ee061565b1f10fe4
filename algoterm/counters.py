"""Platform-wide counts of events per minute, in the shared cache: what the alert evaluator and the metrics read
when no table records the event (a refused webhook call with a bad signature leaves no row). Counting is best
effort: a cache outage loses counts, never the request that made them."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.core.cache import cache
from django.utils import timezone

logger = logging.getLogger(__name__)

# The events counted (each counted in the one place every such event passes through).
STRATEGY_WEBHOOK_REFUSED = "webhooks.strategy_refused"  # strategies.services.webhooks._reject
BILLING_WEBHOOK_REFUSED = "webhooks.billing_refused"  # billing.services.webhook_receive, a body not signed by Razorpay

_TTL_SECONDS = 2 * 3600  # the longest window anything reads is well inside this


def _key(name: str, moment: datetime) -> str:
    return f"counter:{name}:{moment:%Y%m%d%H%M}"


def counter_add(*, name: str, now: datetime | None = None) -> None:
    key = _key(name, now or timezone.now())
    try:
        cache.add(key, 0, _TTL_SECONDS)
        cache.incr(key)
    except Exception:  # a count is not worth failing the call it counts
        logger.warning("counting %s failed", name, exc_info=True)


def counter_sum(*, name: str, minutes: int, now: datetime | None = None) -> int:
    """The events of the last `minutes` minutes, this one included."""
    now = now or timezone.now()
    keys = [_key(name, now - timedelta(minutes=back)) for back in range(max(1, minutes))]
    return sum(int(value) for value in cache.get_many(keys).values())
