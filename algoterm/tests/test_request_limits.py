"""Limits every caller meets before a view runs: 413 PAYLOAD_TOO_LARGE for a body over the route's limit, refused
before it is read (through the served ASGI application as uvicorn calls it, and through the test client), and 429
RATE_LIMITED per client IP on the routes anyone may call without a token."""

from __future__ import annotations

import asyncio
import json

import pytest
from rest_framework.test import APIClient

from algoterm.asgi import application
from algoterm.testing import assert_error

MB = 1024 * 1024
CHUNK = 64 * 1024


def http_scope(path: str, *, content_length: int | None, method: str = "POST") -> dict:
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"req-413-test")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("203.0.113.50", 50000),
        "server": ("testserver", 80),
    }


class CountingBody:
    """The client's side of the body: hands out chunks on request and counts what the server consumed."""

    def __init__(self, total: int | None = None, *, body: bytes | None = None) -> None:
        self.remaining = len(body) if body is not None else total
        self.body = body
        self.consumed = 0

    async def receive(self) -> dict:
        if self.remaining == 0:  # all sent: like a server, wait until the client disconnects (it never does here)
            await asyncio.Event().wait()
        if self.body is not None:
            chunk, self.body, self.remaining = self.body, b"", 0
            self.consumed += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": False}
        size = CHUNK if self.remaining is None else min(CHUNK, self.remaining)
        self.consumed += size
        if self.remaining is not None:
            self.remaining -= size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.remaining != 0}


async def serve(scope: dict, body: CountingBody) -> tuple[int, dict[bytes, bytes], dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await application(scope, body.receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    content = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(content)


# --- 413 before reading ----------------------------------------------------------------------------------------


async def test_a_20_mb_webhook_is_refused_without_reading_a_byte():
    body = CountingBody(20 * MB)

    status, headers, answer = await serve(http_scope("/api/strategies/stg_any/webhook", content_length=20 * MB), body)

    assert status == 413 and body.consumed == 0
    assert answer["error_code"] == "PAYLOAD_TOO_LARGE" and answer["max_bytes"] == 64 * 1024
    assert answer["request_id"] == "req-413-test" and headers[b"x-request-id"] == b"req-413-test"


async def test_a_chunked_webhook_without_a_length_is_read_only_past_the_limit():
    body = CountingBody(None)  # endless: a client streaming for ever

    status, _, answer = await serve(http_scope("/api/billing/webhook", content_length=None), body)

    assert status == 413 and answer["error_code"] == "PAYLOAD_TOO_LARGE"
    assert body.consumed <= 64 * 1024 + CHUNK


async def test_an_oversized_json_body_to_any_route_is_413_without_reading_it():
    body = CountingBody(3 * MB)

    status, _, answer = await serve(http_scope("/api/orders", content_length=3 * MB), body)

    assert status == 413 and body.consumed == 0
    assert answer["error_code"] == "PAYLOAD_TOO_LARGE" and answer["max_bytes"] == 2 * MB


@pytest.mark.django_db(transaction=True)
async def test_a_chunked_body_within_the_limit_reaches_the_view_whole():
    login = json.dumps({"email": "nobody@example.com", "password": "Not-the-password-1"}).encode()
    body = CountingBody(body=login)

    status, _, answer = await serve(http_scope("/api/auth/login", content_length=None), body)

    # Parsed (a missing body would be 400 VALIDATION_ERROR): the credentials were checked and refused.
    assert (status, answer["error_code"]) == (401, "AUTH_INVALID")


def test_an_oversized_json_body_is_413_with_the_envelope(trader_client):
    oversized = json.dumps({"symbol": "NSE:INFY", "note": "x" * (3 * MB)})

    response = trader_client.post("/api/orders", data=oversized, content_type="application/json")

    body = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert body["max_bytes"] == 2 * MB and body["request_id"] == response["X-Request-ID"]


def test_an_oversized_razorpay_webhook_is_413(db):
    response = APIClient().post(
        "/api/billing/webhook", data=b"{" + b" " * (100 * 1024) + b"}", content_type="application/json"
    )

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


# --- per-IP rates on unauthenticated routes ----------------------------------------------------------------------


@pytest.fixture
def rates(settings):
    def set_rate(scope: str, rate: str) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], scope: rate},
        }

    return set_rate


def burst(path: str, body, *, count: int, ip: str) -> list[int]:
    client = APIClient()
    return [client.post(path, body, format="json", REMOTE_ADDR=ip).status_code for _ in range(count)]


@pytest.mark.parametrize(
    ("scope", "path", "body", "status"),
    [
        ("login", "/api/auth/login", {"email": "nobody@example.com", "password": "Wrong-password-1"}, 401),
        ("register", "/api/auth/register", {"email": "not-an-email"}, 400),
        ("refresh", "/api/auth/refresh", {"refresh": "garbage.token.here"}, 401),
        ("broker_postback", "/api/brokers/postback/zerodha", {"order_id": "1"}, 200),
        ("billing_webhook", "/api/billing/webhook", {"event": "ping"}, 400),
    ],
)
def test_unauthenticated_routes_are_throttled_per_client_ip(db, rates, settings, scope, path, body, status):
    settings.LOGIN_FAILURE_LIMIT = 100  # the failed-login limit is its own rule, tested in accounts
    settings.LOGIN_FAILURE_IP_LIMIT = 100
    rates(scope, "4/minute")

    allowed = burst(path, body, count=4, ip="198.51.100.30")
    refused = APIClient().post(path, body, format="json", REMOTE_ADDR="198.51.100.30")
    other_address = APIClient().post(path, body, format="json", REMOTE_ADDR="198.51.100.31")

    assert allowed == [status] * 4
    answer = assert_error(refused, 429, "RATE_LIMITED")
    assert 1 <= int(refused["Retry-After"]) <= 60 and answer["retry_after"] == int(refused["Retry-After"])
    assert other_address.status_code == status


def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy(db, rates, settings):
    settings.NUM_PROXIES = 1
    rates("refresh", "2/minute")
    client = APIClient()

    def refresh(forwarded_for: str) -> int:
        return client.post(
            "/api/auth/refresh",
            {"refresh": "garbage.token.here"},
            format="json",
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR=forwarded_for,
        ).status_code

    first_client = [refresh("198.51.100.40") for _ in range(3)]
    second_client = refresh("198.51.100.41")

    assert first_client == [401, 401, 429]
    assert second_client == 401
