"""The process's Redis client for code that uses Redis itself, beyond the cache and the channel layer: pacing's
script, the risk engine's set of users waiting to be evaluated. One client (and connection pool) per URL and
process, shared by its threads; it times out as the cache does, so a Redis that is down fails a call in about a
second instead of hanging it."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=2)
def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=3)
