"""Order rejection and error rates per broker, minute by minute, for the operators' `orders` topic on /ws/ops.

Beat runs `algoterm.tasks.publish_order_rates` at the start of every minute; it publishes the minute that just
ended. A snapshot shows the minute in progress (so far) and the last completed one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from algoterm.realtime import ops_publish
from brokers.models import Broker
from orders.selectors import order_platform_counts_between

MINUTE = timedelta(minutes=1)


def minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _rate(count: int, placed: int) -> float:
    return round(count / placed, 4) if placed else 0.0


def order_rates(*, start: datetime) -> dict[str, Any]:
    """The minute from `start`: per broker (every broker, zeros included), orders placed, rejected and errored
    (see `order_platform_counts_between`), and rejected and errored as fractions of placed."""
    end = start + MINUTE
    counts = order_platform_counts_between(start=start, end=end)
    brokers = {}
    for broker in sorted({*Broker.values, *counts}):
        found = counts.get(broker, {"placed": 0, "rejected": 0, "errored": 0})
        brokers[broker] = {
            **found,
            "rejection_rate": _rate(found["rejected"], found["placed"]),
            "error_rate": _rate(found["errored"], found["placed"]),
        }
    return {"minute": start, "until": end, "brokers": brokers}


def order_rates_now(*, now: datetime) -> dict[str, Any]:
    """The snapshot: the minute in progress at `now` (counted so far) and the one before it."""
    current = minute_start(now)
    return {"current": order_rates(start=current), "previous": order_rates(start=current - MINUTE)}


def order_rates_publish(*, now: datetime) -> dict[str, Any]:
    """Publish the last minute completed at `now` on the `orders` topic as `order_rates`; answers what it sent."""
    rates = order_rates(start=minute_start(now) - MINUTE)
    ops_publish(topic="orders", message_type="order_rates", payload=rates)
    return rates
