"""Requests per minute by plan, counted in Redis: the request past the plan's limit within a minute gets 429
RATE_LIMITED with Retry-After; other users, unauthenticated routes and admins are not held back by it.

The window is the wall-clock minute, so every test that counts requests starts its burst with enough of the
minute left to finish inside it (`fresh_minute`), and checks it did."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from contextlib import contextmanager

import pytest
import redis
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory
from algoterm.testing import assert_error, client_for
from billing.models import Plan, Subscription

pytestmark = pytest.mark.django_db

ME = "/api/users/me"
LIMIT = 5
SECONDS_NEEDED = 8  # far more than a burst of a few dozen test requests takes


@pytest.fixture(autouse=True)
def _low_limits():
    """The trial's limit (everyone who never subscribed) is 5 a minute, the monthly plan's 8."""
    Plan.objects.filter(code="trial").update(api_requests_per_minute=LIMIT)
    Plan.objects.filter(code="monthly").update(api_requests_per_minute=8)


@contextmanager
def fresh_minute():
    """Run the block inside one clock minute: wait for the next one when too little of this one is left."""
    if 60 - time.time() % 60 < SECONDS_NEEDED:
        time.sleep(60 - time.time() % 60 + 0.05)
    window = int(time.time() // 60)
    yield
    assert int(time.time() // 60) == window, "the burst crossed a minute boundary; it took far too long"


def burst(client, count: int, url: str = ME) -> list[int]:
    return [client.get(url).status_code for _ in range(count)]


def test_the_request_past_the_plans_limit_is_429_with_retry_after(trader_client):
    with fresh_minute():
        statuses = burst(trader_client, LIMIT)
        refused = trader_client.get(ME)
        again = trader_client.get(ME)
        seconds_left = 60 - time.time() % 60

    assert statuses == [200] * LIMIT
    body = assert_error(refused, 429, "RATE_LIMITED")
    retry_after = int(refused["Retry-After"])
    assert 1 <= retry_after <= 60
    assert body["retry_after"] == retry_after
    assert abs(retry_after - seconds_left) <= 2  # until the next minute starts
    assert "5" in body["detail"]
    assert_error(again, 429, "RATE_LIMITED")  # still refused for the rest of the minute


def test_the_limit_is_per_user_and_shared_by_all_of_the_users_clients(trader):
    phone, laptop = client_for(trader), client_for(trader)  # two logins, one user
    other = client_for(UserFactory())
    with fresh_minute():
        mine = burst(phone, 3) + burst(laptop, 2)
        refused = laptop.get(ME)
        theirs = burst(other, LIMIT)

    assert mine == [200] * LIMIT
    assert_error(refused, 429, "RATE_LIMITED")
    assert theirs == [200] * LIMIT


def test_the_count_is_kept_in_redis_where_every_web_process_sees_it(trader, trader_client):
    with fresh_minute():
        burst(trader_client, 3)
        window = int(time.time() // 60)
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{django_settings.REDIS_KEY_PREFIX}:*throttle*{trader.pk}:{window}"))
            assert len(keys) == 1
            assert int(client.get(keys[0])) == 3
            client.incrby(keys[0], LIMIT - 3)  # as if another web process had served the rest of the minute
        finally:
            client.close()
        refused = trader_client.get(ME)

    assert_error(refused, 429, "RATE_LIMITED")


def test_a_paid_plan_has_its_own_limit(trader, trader_client):
    Subscription.objects.create(
        user=trader, plan=Plan.objects.get(code="monthly"), status="active", razorpay_subscription_id="sub_paid001"
    )
    with fresh_minute():
        statuses = burst(trader_client, 8)
        refused = trader_client.get(ME)

    assert statuses == [200] * 8
    assert_error(refused, 429, "RATE_LIMITED")
    assert trader_client.get("/api/subscriptions/plans").status_code == 200  # public routes still answer


def test_unauthenticated_routes_are_not_counted(trader_client, settings):
    settings.RAZORPAY_WEBHOOK_SECRET = "throttle-test-secret"
    body = json.dumps({"event": "invoice.paid", "payload": {}}).encode()
    signature = hmac.new(b"throttle-test-secret", body, hashlib.sha256).hexdigest()

    def webhook(event_id: str):
        return trader_client.generic(  # even sent with the user's token, the webhook is Razorpay's, not the user's
            "POST",
            "/api/billing/webhook",
            data=body,
            content_type="application/json",
            HTTP_X_RAZORPAY_SIGNATURE=signature,
            HTTP_X_RAZORPAY_EVENT_ID=event_id,
        )

    with fresh_minute():
        plans = burst(trader_client, LIMIT * 2, "/api/subscriptions/plans")
        webhooks = [webhook(f"evt_throttle{index:04d}").status_code for index in range(LIMIT * 2)]
        anonymous = burst(APIClient(), LIMIT * 2, "/api/subscriptions/plans")
        mine = burst(trader_client, LIMIT)
        refused = trader_client.get(ME)
        plans_after = trader_client.get("/api/subscriptions/plans")
        webhook_after = webhook("evt_throttle_after")

    assert plans == webhooks == anonymous == [200] * (LIMIT * 2)
    assert mine == [200] * LIMIT  # the public calls before did not use up the user's minute
    assert_error(refused, 429, "RATE_LIMITED")
    assert plans_after.status_code == 200 and webhook_after.status_code == 200


def test_the_setting_turns_plan_throttling_off(trader_client, settings):
    settings.BILLING_PLAN_THROTTLE = False
    with fresh_minute():
        statuses = burst(trader_client, LIMIT * 3)

    assert statuses == [200] * (LIMIT * 3)


def test_admins_are_not_throttled(admin_client, trader_client):
    with fresh_minute():
        statuses = burst(admin_client, LIMIT * 3)
        burst(trader_client, LIMIT)
        refused = trader_client.get(ME)

    assert statuses == [200] * (LIMIT * 3)
    assert_error(refused, 429, "RATE_LIMITED")  # the same limit holds for a trader at the same time


def test_refused_requests_do_nothing(trader_client):
    with fresh_minute():
        burst(trader_client, LIMIT)
        refused = trader_client.post("/api/subscriptions/start", {"plan": "trial"}, format="json")

    assert_error(refused, 429, "RATE_LIMITED")
    assert not Subscription.objects.exists()
