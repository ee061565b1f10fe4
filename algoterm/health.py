"""Health of the parts the platform needs: database, Redis, Celery workers. Each check is timed. Beside them, checks
that never make health fail but tell operators something needs doing: beat's heartbeat, the market calendar's
holiday lists."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import redis
from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from brokers.streams.supervisor import order_stream_states
from marketdata import calendar as market_calendar
from marketdata.sources import market_data_source_state

WORKER_PING_TIMEOUT = 1.0
HEARTBEAT_CACHE_KEY = "system:heartbeat"
HEARTBEAT_STALE_AFTER_SECONDS = 60

# Embedded mode: whether the in-process worker runs. The composition root registers the probe when it starts the
# worker; with none registered, no in-process worker was started, so workers are down.
_in_process_worker_probe: Callable[[], bool] | None = None


def in_process_worker_probe_register(probe: Callable[[], bool]) -> None:
    global _in_process_worker_probe
    _in_process_worker_probe = probe


def _in_process_worker_alive() -> bool:
    probe = _in_process_worker_probe
    return probe is not None and probe()


@dataclass
class ComponentHealth:
    status: str  # "up" or "down"
    latency_ms: float | None = None
    required: bool = True
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_up(self) -> bool:
        return self.status == "up"


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def check_database() -> ComponentHealth:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:
        return ComponentHealth("down", _elapsed_ms(started), detail=type(error).__name__)
    return ComponentHealth("up", _elapsed_ms(started), info={"vendor": connection.vendor})


def check_redis() -> ComponentHealth:
    if settings.EMBEDDED:
        return ComponentHealth("up", 0.0, info={"mode": "in-process"})
    started = time.perf_counter()
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as error:
        return ComponentHealth("down", _elapsed_ms(started), detail=type(error).__name__)
    return ComponentHealth("up", _elapsed_ms(started))


def check_workers(*, broker_up: bool) -> ComponentHealth:
    if settings.EMBEDDED:
        alive = _in_process_worker_alive()
        return ComponentHealth(
            "up" if alive else "down",
            0.0,
            detail="" if alive else "in-process worker is not running",
            info={"mode": "in-process", "count": 1 if alive else 0},
        )
    if not broker_up:
        return ComponentHealth("down", None, detail="broker unreachable")
    started = time.perf_counter()
    try:
        # limit=1: answer as soon as one worker replies, so health stays fast for load balancers.
        replies = current_app.control.ping(timeout=WORKER_PING_TIMEOUT, limit=1)
    except Exception as error:
        return ComponentHealth("down", _elapsed_ms(started), detail=type(error).__name__)
    latency = _elapsed_ms(started)
    if not replies:
        return ComponentHealth("down", latency, detail="no worker answered", info={"count": 0})
    return ComponentHealth("up", latency, info={"count": len(replies), "counted": "first to answer"})


def heartbeat_record() -> None:
    """Run by beat through a worker every few seconds: its age proves the whole scheduling path works."""
    cache.set(HEARTBEAT_CACHE_KEY, timezone.now().timestamp(), timeout=24 * 3600)


def check_scheduler() -> ComponentHealth:
    """Not required for serving requests, so it never makes health 503; it tells operators beat is ticking."""
    try:
        last = cache.get(HEARTBEAT_CACHE_KEY)
    except Exception as error:
        return ComponentHealth("down", None, required=False, detail=type(error).__name__)
    if last is None:
        return ComponentHealth("down", None, required=False, detail="no heartbeat yet")
    age = round(timezone.now().timestamp() - last, 1)
    status = "up" if age <= HEARTBEAT_STALE_AFTER_SECONDS else "down"
    return ComponentHealth(status, None, required=False, info={"last_heartbeat_age_s": age})


def check_holidays(*, today: date | None = None) -> ComponentHealth:
    """A warning, never a failure: down (not required) when a year that should have an NSE holiday list has none,
    built in or configured: the current year always, next year from 1 December (NSE publishes it mid-December).
    Without a list the calendar takes every weekday for a trading day, so strategies and sweeps would run on
    exchange holidays."""
    today = today or timezone.localdate(timezone=market_calendar.IST)
    known = market_calendar.holiday_years()
    info = {
        "years": sorted(known),
        "provisional": sorted(market_calendar.PROVISIONAL_HOLIDAY_YEARS & known),
    }
    missing = market_calendar.holiday_years_missing(today=today)
    if not missing:
        return ComponentHealth("up", None, required=False, info=info)
    years = ", ".join(str(year) for year in missing)
    return ComponentHealth(
        "down",
        None,
        required=False,
        detail=f"No NSE trading holiday list for {years}: every weekday would count as a trading day. Add NSE's "
        "list to the holidays configuration section (PUT /api/config/holidays).",
        info={**info, "missing": missing},
    )


def check_market_data() -> ComponentHealth:
    """Which designated market-data account feeds (never required: the platform serves without live ticks, on the
    last prices). Up with no designated account (nothing to feed from); down when accounts are designated and none
    feeds."""
    try:
        state = market_data_source_state()
    except Exception as error:
        return ComponentHealth("down", None, required=False, detail=type(error).__name__)
    if state is None:
        return ComponentHealth("up", None, required=False, detail="no market-data account designated")
    info = {key: state.get(key) for key in ("account_id", "broker", "since", "symbols", "last_tick_at", "failovers")}
    info["designated"] = state.get("designated")
    if state.get("live"):
        return ComponentHealth("up", None, required=False, info=info)
    return ComponentHealth("down", None, required=False, detail=state.get("detail") or "not feeding", info=info)


def check_order_streams() -> ComponentHealth:
    """The Dhan and Fyers order-update sockets (never required: reconciliation settles orders without them). Down
    while one of them is retrying; a refused token (`expired`) is the account owner's to fix, not the platform's."""
    try:
        states = order_stream_states()
    except Exception as error:
        return ComponentHealth("down", None, required=False, detail=type(error).__name__)
    by_state: dict[str, int] = {}
    for state in states.values():
        by_state[state.get("state", "unknown")] = by_state.get(state.get("state", "unknown"), 0) + 1
    info = {"streams": len(states), "by_state": by_state}
    retrying = sorted(account for account, state in states.items() if state.get("state") == "retrying")
    if retrying:
        return ComponentHealth(
            "down", None, required=False, detail=f"reconnecting: {', '.join(retrying[:10])}", info=info
        )
    return ComponentHealth("up", None, required=False, info=info)


def platform_health() -> dict[str, ComponentHealth]:
    database = check_database()
    redis_health = check_redis()
    return {
        "database": database,
        "redis": redis_health,
        "workers": check_workers(broker_up=redis_health.is_up),
        "scheduler": check_scheduler() if redis_health.is_up else ComponentHealth("down", None, required=False),
        "holidays": check_holidays(),
        "market_data": check_market_data(),
        "order_streams": check_order_streams(),
    }
