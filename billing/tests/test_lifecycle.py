"""A paid subscription's whole life through the API, the real SDK and the Razorpay simulator: start, Checkout,
verify, webhooks (activated, charged, pending, halted, cancelled, completed, payment.failed), renewals and cancel
at the cycle's end; duplicates, reordering and forgeries."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.models import AuditEvent, Notification
from billing.models import Payment, Plan, Subscription, WebhookEvent
from billing.tests.conftest import deliver, deliver_all

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook_client() -> APIClient:
    return APIClient()  # Razorpay carries no JWT


def start(client, plan="monthly"):
    response = client.post("/api/subscriptions/start", {"plan": plan}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_plans_are_public_and_synced_to_razorpay_once(api_client, razorpay):
    body = api_client.get("/api/subscriptions/plans").json()
    assert [plan["code"] for plan in body["items"]] == ["trial", "monthly", "yearly"]
    monthly = next(plan for plan in body["items"] if plan["code"] == "monthly")
    assert (monthly["price_paise"], monthly["price"], monthly["live_trading"]) == (99_900, 999.0, True)
    linked = dict(Plan.objects.exclude(razorpay_plan_id="").values_list("code", "razorpay_plan_id"))
    assert set(linked) == {"monthly", "yearly"}

    from billing.services import plans_sync

    assert {result.action for result in plans_sync()} == {"kept"}
    Plan.objects.filter(code="yearly").update(razorpay_plan_id="")  # lost locally: found again at Razorpay by code
    assert {result.code: result.action for result in plans_sync()} == {"monthly": "kept", "yearly": "found"}
    assert Plan.objects.get(code="yearly").razorpay_plan_id == linked["yearly"]


def test_the_whole_lifecycle_of_a_monthly_plan(trader, trader_client, webhook_client, razorpay):
    started = start(trader_client)
    subscription_id = started["subscription"]["id"]
    razorpay_id = started["checkout"]["subscription_id"]
    assert started["subscription"]["status"] == "created"
    assert started["checkout"]["key"] == "rzp_test_key"
    assert started["checkout"]["prefill"]["email"] == trader.email
    # Asked again before paying, the same checkout comes back (no second Razorpay subscription).
    assert start(trader_client)["checkout"]["subscription_id"] == razorpay_id

    handler = razorpay.checkout(razorpay_id)  # the customer pays in Checkout
    verified = trader_client.post("/api/subscriptions/verify", handler, format="json")
    assert verified.status_code == 200, verified.json()
    assert verified.json()["status"] == "active"

    outcomes = deliver_all(webhook_client, razorpay)
    assert [outcome["outcome"] for outcome in outcomes] == ["applied", "applied", "applied"]
    subscription = Subscription.objects.get(pk=subscription_id)
    assert (subscription.status, subscription.paid_count) == ("active", 1)
    payment = Payment.objects.get(subscription=subscription)
    assert (payment.amount_paise, payment.status) == (99_900, "captured")
    me = trader_client.get("/api/users/me").json()
    assert me["subscription"]["id"] == subscription_id
    assert me["entitlements"]["plan"] == "monthly" and me["entitlements"]["basis"] == "subscription"
    assert me["entitlements"]["max_running_strategies"] == 10

    razorpay.renew(razorpay_id)
    deliver_all(webhook_client, razorpay)
    assert Subscription.objects.get(pk=subscription_id).paid_count == 2

    razorpay.fail_payment(razorpay_id)  # payment.failed, subscription.pending
    deliver_all(webhook_client, razorpay)
    subscription.refresh_from_db()
    assert subscription.status == "pending"
    assert Payment.objects.filter(subscription=subscription, status="failed").count() == 1
    assert trader_client.get("/api/users/me").json()["entitlements"]["live_trading"] is True  # kept while retrying
    razorpay.fail_payment(razorpay_id)  # retries exhausted: halted
    deliver_all(webhook_client, razorpay)
    subscription.refresh_from_db()
    assert subscription.status == "halted"
    me = trader_client.get("/api/users/me").json()
    assert me["subscription"] is None and me["entitlements"]["live_trading"] is False
    assert Notification.objects.filter(user=trader, kind="billing", title__contains="halted").exists()

    history = trader_client.get("/api/subscriptions/history").json()
    assert history["total"] == 1 and len(history["items"][0]["payments"]) == 4
    assert AuditEvent.objects.filter(action="billing.subscription_halted").exists()


def test_cancel_ends_with_the_cycle_already_paid(trader_client, webhook_client, razorpay):
    started = start(trader_client)
    razorpay_id = started["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    deliver_all(webhook_client, razorpay)

    cancelled = trader_client.post("/api/subscriptions/cancel")
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["cancel_at_cycle_end"]) == ("active", True)
    assert trader_client.post("/api/subscriptions/cancel").status_code == 409  # already ending
    assert trader_client.get("/api/users/me").json()["entitlements"]["basis"] == "subscription"

    razorpay.end_cycle(razorpay_id)
    deliver_all(webhook_client, razorpay)
    subscription = Subscription.objects.get(pk=started["subscription"]["id"])
    assert subscription.status == "cancelled" and subscription.ended_at is not None
    assert trader_client.get("/api/users/me").json()["entitlements"]["basis"] == "lapsed"


def test_a_repeated_webhook_is_processed_once(trader_client, webhook_client, razorpay):
    razorpay_id = start(trader_client)["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    webhooks = razorpay.webhooks_take()
    charged = webhooks[-1]
    for webhook in webhooks:
        deliver(webhook_client, webhook)
    again = deliver(webhook_client, charged)
    assert again.status_code == 200 and again.json()["outcome"] == "applied"  # the first outcome, answered again
    assert WebhookEvent.objects.filter(event_id=charged.event_id).count() == 1
    assert Payment.objects.count() == 1
    assert Subscription.objects.get(razorpay_subscription_id=razorpay_id).paid_count == 1


def test_out_of_order_webhooks_never_move_the_state_back(trader_client, webhook_client, razorpay):
    razorpay_id = start(trader_client)["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    first_cycle = razorpay.webhooks_take()  # authenticated, activated, charged
    razorpay.fail_payment(razorpay_id)
    razorpay.fail_payment(razorpay_id)
    failures = razorpay.webhooks_take()  # payment.failed, pending, payment.failed, halted

    # The halt arrives first; the older events after it record their payments but leave it halted.
    for webhook in reversed(first_cycle + failures):
        deliver(webhook_client, webhook)
    subscription = Subscription.objects.get(razorpay_subscription_id=razorpay_id)
    assert subscription.status == "halted"
    assert subscription.paid_count == 1
    assert (
        Payment.objects.filter(status="captured").count() == 1 and Payment.objects.filter(status="failed").count() == 2
    )
    assert WebhookEvent.objects.filter(outcome="stale").exists()


@pytest.mark.parametrize("tamper", ["body", "signature", "missing"])
def test_a_forged_or_altered_webhook_is_refused_and_changes_nothing(trader_client, webhook_client, razorpay, tamper):
    razorpay_id = start(trader_client)["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    activated = razorpay.webhooks_take()[1]
    if tamper == "body":
        response = deliver(webhook_client, activated, body=activated.body.replace(b'"active"', b'"halted"'))
    elif tamper == "signature":
        response = deliver(webhook_client, activated, signature="0" * 64)
    else:
        response = deliver(webhook_client, activated, signature="")
    assert response.status_code == 400
    assert response.json()["error_code"] == "VALIDATION_ERROR" and "signature" in response.json()["errors"]
    assert WebhookEvent.objects.count() == 0
    assert Subscription.objects.get(razorpay_subscription_id=razorpay_id).status == "created"


def test_a_wrong_checkout_signature_is_refused(trader_client, razorpay):
    razorpay_id = start(trader_client)["checkout"]["subscription_id"]
    handler = razorpay.checkout(razorpay_id)
    handler["razorpay_signature"] = "f" * 64
    response = trader_client.post("/api/subscriptions/verify", handler, format="json")
    assert response.status_code == 400 and "razorpay_signature" in response.json()["errors"]
    assert Subscription.objects.get(razorpay_subscription_id=razorpay_id).status == "created"


def test_a_completed_plan_ends_after_its_cycles(trader_client, webhook_client, razorpay):
    Plan.objects.filter(code="monthly").update(total_count=2)
    razorpay_id = start(trader_client)["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    razorpay.renew(razorpay_id)
    deliver_all(webhook_client, razorpay)
    assert Subscription.objects.get(razorpay_subscription_id=razorpay_id).status == "completed"


def test_the_trial_needs_no_payment_and_is_taken_once(trader, trader_client, razorpay):
    trial = start(trader_client, plan="trial")
    assert trial["checkout"] is None and trial["subscription"]["status"] == "active"
    assert trader_client.get("/api/users/me").json()["entitlements"]["basis"] == "trial"
    again = trader_client.post("/api/subscriptions/start", {"plan": "trial"}, format="json")
    assert again.status_code == 409 and again.json()["error_code"] == "INVALID_STATE"
    assert trader_client.post("/api/subscriptions/cancel").json()["status"] == "cancelled"
    assert trader_client.get("/api/users/me").json()["entitlements"]["basis"] == "lapsed"


def test_a_trial_past_its_end_expires(trader, trader_client, razorpay):
    from datetime import timedelta

    from django.utils import timezone

    from billing.services import trials_expire

    subscription_id = start(trader_client, plan="trial")["subscription"]["id"]
    Subscription.objects.filter(pk=subscription_id).update(current_end=timezone.now() - timedelta(minutes=1))
    assert trials_expire() == 1
    assert Subscription.objects.get(pk=subscription_id).status == "expired"
    assert trader_client.get("/api/users/me").json()["entitlements"]["live_trading"] is False
