"""Dependency outages: which exceptions mean PostgreSQL, Redis or the Celery broker is down rather than a bug, and
logging them without one line per failed call.

The API turns them into 503 SERVICE_UNAVAILABLE with Retry-After (`algoterm.api.errors.exception_handler`), the
WebSockets into close code 1013 (`algoterm.api.ws.ProtocolConsumer`). Reads whose truth is in PostgreSQL and whose
Redis copy is only a cache (entitlements) read PostgreSQL while Redis is down; the per-plan throttle fails open.
"""

from __future__ import annotations

import logging
import threading
import time

import kombu.exceptions
import redis.exceptions
from django import db

logger = logging.getLogger("algoterm.outages")

# Redis refusing, resetting or timing out a connection (LOADING after a restart is a ConnectionError too).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Django raises these when the database is unreachable, restarting or refusing connections.
DATABASE_ERRORS: tuple[type[Exception], ...] = (db.OperationalError, db.InterfaceError)
# Publishing a task when the broker (Redis) cannot be reached, after kombu's own retries.
BROKER_ERRORS: tuple[type[Exception], ...] = (kombu.exceptions.OperationalError,)
DEPENDENCY_ERRORS = REDIS_ERRORS + DATABASE_ERRORS + BROKER_ERRORS


def dependency_name(error: BaseException) -> str:
    if isinstance(error, REDIS_ERRORS):
        return "Redis"
    if isinstance(error, DATABASE_ERRORS):
        return "the database"
    return "the task broker"


class OutageNotice:
    """Logs when a dependency stops answering and when it answers again, not every failed call in between (an
    outage would otherwise log once per request). Without `succeeded()` calls, `repeat_seconds` re-logs."""

    def __init__(self, what: str, *, repeat_seconds: float | None = None) -> None:
        self.what = what
        self.repeat_seconds = repeat_seconds
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._logged_at = 0.0

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._down_since is None
            due = first or (self.repeat_seconds is not None and now - self._logged_at >= self.repeat_seconds)
            if first:
                self._down_since = now
            if due:
                self._logged_at = now
        if due:
            logger.warning("%s unavailable: %s: %s", self.what, type(error).__name__, error)

    def succeeded(self) -> None:
        if self._down_since is None:  # the common case, without taking the lock
            return
        with self._lock:
            down_since, self._down_since = self._down_since, None
        if down_since is not None:
            logger.warning("%s available again after %.0f s", self.what, time.monotonic() - down_since)


# Answering requests and sockets sees failures only, never the recovery: remind once a minute while it lasts.
_answer_notices = {name: OutageNotice(name, repeat_seconds=60) for name in ("Redis", "the database", "the task broker")}


def outage_report(error: BaseException) -> None:
    """Log a dependency error that is being answered with 503 or close 1013 (rate-limited per dependency)."""
    _answer_notices[dependency_name(error)].failed(error)
