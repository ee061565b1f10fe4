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
