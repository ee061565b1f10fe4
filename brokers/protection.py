"""Outbound protection per broker account: order pacing and a circuit breaker, shared across processes.

Pacing waits for a free slot rather than refusing, so a burst of orders goes out as fast as the broker and SEBI
allow (9 a second by default) and never faster. With Redis, slots are a sliding log in one sorted set per account,
taken atomically by a Lua script on Redis' own clock, so every web and worker process shares one budget. The script
is registered once per process and called by its SHA (EVALSHA): taking a slot is one round trip.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict, deque
from functools import lru_cache

import redis
from django.conf import settings
from django.core.cache import cache

from algoterm.api.errors import AppError, ErrorCode
from algoterm.redis_client import redis_client
from brokers.protocol import BrokerRateLimited, BrokerUnavailable

# (orders, seconds) windows per broker, from the brokers' published limits.
BROKER_ORDER_LIMITS: dict[str, list[tuple[int, float]]] = {
    "zerodha": [(10, 1.0), (400, 60.0), (5000, 86400.0)],
    "dhan": [(10, 1.0), (250, 60.0), (1000, 3600.0), (7000, 86400.0)],
    "fyers": [(10, 1.0), (200, 60.0)],
    "paper": [(10, 1.0)],
}


def order_limits(broker: str) -> list[tuple[int, float]]:
    """The broker's windows with the per-second one capped at the SEBI pacing setting."""
    cap = settings.BROKER_MAX_ORDERS_PER_SECOND
    return [(min(count, cap) if seconds <= 1.0 else count, seconds) for count, seconds in BROKER_ORDER_LIMITS[broker]]


_RESERVE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local longest = 0
for i = 2, #ARGV, 2 do
  local window = tonumber(ARGV[i + 1])
  if window > longest then longest = window end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
local wait = 0
for i = 2, #ARGV, 2 do
  local limit = tonumber(ARGV[i])
  local window = tonumber(ARGV[i + 1])
  local count = redis.call('ZCOUNT', KEYS[1], '(' .. (now - window), '+inf')
  if count >= limit then
    local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - window), '+inf',
                              'WITHSCORES', 'LIMIT', count - limit, 1)
    local free_at = tonumber(oldest[2]) + window
    if free_at - now > wait then wait = free_at - now end
  end
end
if wait > 0 then return wait end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], longest)
return 0
"""


@lru_cache(maxsize=2)
def _reserve_script(url: str):
    # EVALSHA, and SCRIPT LOAD only when Redis answers NOSCRIPT (a restarted or flushed server).
    return redis_client(url).register_script(_RESERVE_SCRIPT)


class _LocalLog:
    """Embedded mode: the same sliding log, in this process."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def reserve(self, key: str, limits: list[tuple[int, float]]) -> float:
        now = time.monotonic()
        longest = max(seconds for _, seconds in limits)
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - longest:
                hits.popleft()
            wait = 0.0
            for count, seconds in limits:
                inside = [hit for hit in hits if hit > now - seconds]
                if len(inside) >= count:
                    wait = max(wait, inside[len(inside) - count] + seconds - now)
            if wait <= 0:
                hits.append(now)
            return wait


_local_log = _LocalLog()


def _reserve(key: str, limits: list[tuple[int, float]]) -> float:
    """Seconds to wait before a slot is free (0: the slot is taken now)."""
    if settings.EMBEDDED:
        return _local_log.reserve(key, limits)
    args: list[str | int] = [uuid.uuid4().hex]
    for count, seconds in limits:
        args += [count, int(seconds * 1000)]
    try:
        waited_ms = _reserve_script(settings.REDIS_URL)(keys=[f"{settings.REDIS_KEY_PREFIX}:pacing:{key}"], args=args)
    except redis.RedisError:
        raise AppError("Order pacing is unavailable; retry shortly.", code=ErrorCode.SERVICE_UNAVAILABLE) from None
    return int(waited_ms) / 1000


def pace_order(*, account_id: str, broker: str) -> float:
    """Block until this account may send one more order; returns how long it waited. Raises BrokerRateLimited
    when the wait would exceed BROKER_PACING_MAX_WAIT_SECONDS (e.g. the per-minute budget is spent)."""
    limits = order_limits(broker)
    deadline = time.monotonic() + settings.BROKER_PACING_MAX_WAIT_SECONDS
    started = time.monotonic()
    while True:
        wait = _reserve(account_id, limits)
        if wait <= 0:
            return time.monotonic() - started
        if time.monotonic() + wait > deadline:
            raise BrokerRateLimited(
                "Order rate limit for this broker account reached; retry shortly.", retry_after=wait
            )
        time.sleep(wait)


# --- circuit breaker -----------------------------------------------------------------------------------------------


class CircuitOpen(BrokerUnavailable):
    """Refused before any call was made: whatever it was for never reached the broker."""


class CircuitBreaker:
    """Opens after BROKER_CIRCUIT_FAILURES consecutive 'unavailable' failures; while open, calls fail fast with
    503; after BROKER_CIRCUIT_OPEN_SECONDS one trial call is let through, and its success closes the circuit."""

    def __init__(self, key: str) -> None:
        self.prefix = f"circuit:{key}"
        # Whether the last `before_call` found the circuit clean (no failures counted, not open): a success then has
        # nothing to reset, which saves a write per broker call on the healthy path.
        self._clean = False

    def before_call(self) -> None:
        state = cache.get_many([f"{self.prefix}:open_until", f"{self.prefix}:failures"])
        open_until = state.get(f"{self.prefix}:open_until")
        self._clean = not state
        if open_until is None:
            return
        remaining = open_until - time.time()
        if remaining > 0:
            raise CircuitOpen(
                "The broker is failing; calls are paused briefly.",
                extra={"retry_after": max(1, int(remaining + 0.999))},
                headers={"Retry-After": str(max(1, int(remaining + 0.999)))},
            )
        if not cache.add(f"{self.prefix}:trial", True, timeout=settings.BROKER_CIRCUIT_OPEN_SECONDS):
            raise CircuitOpen("The broker is failing; a trial call is in progress.")

    def record_success(self) -> None:
        if self._clean:
            return
        cache.delete_many([f"{self.prefix}:failures", f"{self.prefix}:open_until", f"{self.prefix}:trial"])

    def record_failure(self) -> None:
        cache.add(f"{self.prefix}:failures", 0, timeout=300)
        try:
            failures = cache.incr(f"{self.prefix}:failures")
        except ValueError:
            failures = 1
        half_open = cache.get(f"{self.prefix}:open_until") is not None
        if half_open or failures >= settings.BROKER_CIRCUIT_FAILURES:
            cache.set(f"{self.prefix}:open_until", time.time() + settings.BROKER_CIRCUIT_OPEN_SECONDS, timeout=3600)
            cache.delete(f"{self.prefix}:trial")

    @property
    def is_open(self) -> bool:
        open_until = cache.get(f"{self.prefix}:open_until")
        return open_until is not None and open_until > time.time()
