"""Billing tests talk to a local Razorpay simulator through the real SDK; webhooks the simulator queues are handed
to our webhook route byte for byte, with their signature and event id headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.razorpay import RazorpaySimulator, SimWebhook

KEY_ID, KEY_SECRET, WEBHOOK_SECRET = "rzp_test_key", "test-key-secret", "test-webhook-secret"


@pytest.fixture
def razorpay(settings, db) -> Iterator[RazorpaySimulator]:
    """A running simulator the app is pointed at, with the paid plans synced to it."""
    from billing.services import plans_sync

    app = RazorpaySimulator(key_id=KEY_ID, key_secret=KEY_SECRET, webhook_secret=WEBHOOK_SECRET)
    server = SimulatorServer(app).start()
    settings.RAZORPAY_BASE_URL = server.url
    settings.RAZORPAY_KEY_ID = KEY_ID
    settings.RAZORPAY_KEY_SECRET = KEY_SECRET
    settings.RAZORPAY_WEBHOOK_SECRET = WEBHOOK_SECRET
    plans_sync()
    try:
        yield app
    finally:
        server.stop()


def deliver(client, webhook: SimWebhook, *, body: bytes | None = None, signature: str | None = None):
    """POST one queued webhook to /api/billing/webhook as Razorpay would (optionally tampered)."""
    return client.generic(
        "POST",
        "/api/billing/webhook",
        data=webhook.body if body is None else body,
        content_type="application/json",
        HTTP_X_RAZORPAY_SIGNATURE=webhook.headers["X-Razorpay-Signature"] if signature is None else signature,
        HTTP_X_RAZORPAY_EVENT_ID=webhook.headers["X-Razorpay-Event-Id"],
    )


def deliver_all(client, app: RazorpaySimulator) -> list[dict]:
    return [deliver(client, webhook).json() for webhook in app.webhooks_take()]
