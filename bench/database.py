"""The benchmarks' own PostgreSQL database and Redis keys: created for a run and dropped after it, never dev data."""

from __future__ import annotations

import os
from urllib.parse import urlparse, urlunparse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _maintenance_url(variable: str) -> tuple[str, str]:
    parts = urlparse(os.environ[variable])
    name = parts.path.lstrip("/")
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(f"{variable} must be a PostgreSQL URL.")
    if parts.hostname not in LOCAL_HOSTS:
        raise SystemExit("The benchmarks only talk to a PostgreSQL on 127.0.0.1.")
    if "conn_max_age" in parts.query:
        # Under ASGI each request runs in its own context, so persistent connections pile up until PostgreSQL
        # refuses new clients (max_connections), which would also break anything else using the server.
        raise SystemExit(f"Leave conn_max_age out of {variable}: it leaks a connection per request under ASGI.")
    if "bench" not in name:
        raise SystemExit(f"Refusing to drop and recreate {name!r}: a bench database's name must contain 'bench'.")
    return urlunparse(parts._replace(path="/postgres", scheme="postgresql", query="")), name


def database_recreate(variable: str, *, drop_only: bool = False) -> None:
    """Drop (and unless `drop_only`, create empty) the database named by the URL in environment `variable`."""
    import psycopg

    url, name = _maintenance_url(variable)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            connection.execute(f'CREATE DATABASE "{name}"')


def clean_redis() -> None:
    """Delete this run's keys (under REDIS_KEY_PREFIX)."""
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=f"{os.environ['REDIS_KEY_PREFIX']}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
