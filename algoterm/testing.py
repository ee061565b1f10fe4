"""Helpers every app's tests use: authenticated clients and the assertions the API contract asks of each endpoint."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


def assert_error(response, status: int, error_code: str) -> dict[str, Any]:
    """The response is the error envelope with this status and code; returns the body."""
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    body = response.json()
    assert body["error_code"] == error_code, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response["X-Request-ID"]
    return body


def _call(client: APIClient, method: str, url: str, data: Any = None):
    return (
        getattr(client, method.lower())(url, data=data, format="json")
        if data is not None
        else getattr(client, method.lower())(url)
    )


def assert_other_user_gets_404(method: str, url: str, data: Any = None) -> None:
    """A freshly registered user (admin rights aside) must not learn that someone else's id exists."""
    from accounts.tests.factories import UserFactory

    stranger = UserFactory()
    assert_error(_call(client_for(stranger), method, url, data), 404, "NOT_FOUND")


def assert_requires_auth(method: str, url: str, data: Any = None) -> None:
    response = _call(APIClient(), method, url, data)
    assert_error(response, 401, "AUTH_REQUIRED")
    assert response["WWW-Authenticate"].startswith("Bearer")


@contextlib.contextmanager
def celery_worker_process(*, timeout: float = 30) -> Iterator[subprocess.Popen]:
    """A real `celery worker` process on the configured broker, answering pings before the block starts."""
    from algoterm.celery import app as celery_app

    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "algoterm",
            "worker",
            "--pool",
            "solo",
            "-l",
            "WARNING",
            "--hostname",
            f"test-{os.getpid()}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + timeout
        while not celery_app.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test Celery worker did not start")
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()


class PrivateRedis:
    """A throwaway `redis-server` on a free local port that a test may stop and restart to stage an outage: the
    shared Redis stays up for the tests running beside it. Nothing is persisted."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self, *, timeout: float = 10) -> None:
        import redis

        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        """As abruptly as a crash: connections are cut, nothing is saved."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_settings(url: str, *, prefix: str) -> dict[str, Any]:
    """The settings that point the cache, the channel layer and the broker URL at another Redis."""
    from django.conf import settings

    layer = settings.CHANNEL_LAYERS["default"]
    hosts = [{**host, "address": url} for host in layer["CONFIG"]["hosts"]]
    return {
        "REDIS_URL": url,
        "CACHES": {"default": {**settings.CACHES["default"], "LOCATION": url, "KEY_PREFIX": prefix}},
        "CHANNEL_LAYERS": {
            "default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": hosts, "prefix": f"{prefix}:asgi"}}
        },
    }
