"""Health of the parts the platform needs: database, Redis, Celery workers. Each check is timed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from algoterm import embedded
from algoterm.celery import app as celery_app

WORKER_PING_TIMEOUT = 1.0


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
        alive = embedded.worker_alive()
        return ComponentHealth(
            "up" if alive else "down", 0.0, detail="" if alive else "in-process worker is not running",
            info={"mode": "in-process", "count": 1 if alive else 0},
        )
    if not broker_up:
        return ComponentHealth("down", None, detail="broker unreachable")
    started = time.perf_counter()
    try:
        replies = celery_app.control.ping(timeout=WORKER_PING_TIMEOUT)
    except Exception as error:
        return ComponentHealth("down", _elapsed_ms(started), detail=type(error).__name__)
    latency = _elapsed_ms(started)
    if not replies:
        return ComponentHealth("down", latency, detail="no worker answered", info={"count": 0})
    return ComponentHealth("up", latency, info={"count": len(replies)})


def platform_health() -> dict[str, ComponentHealth]:
    database = check_database()
    redis_health = check_redis()
    return {"database": database, "redis": redis_health, "workers": check_workers(broker_up=redis_health.is_up)}
