"""Every billing route through the API: who may call it, what bad input gets, other users' ids, conflicts, the
payment provider being down, and webhooks that are odd but signed."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory
from algoterm.testing import assert_error, assert_requires_auth, client_for
from billing.models import Payment, Plan, Subscription, WebhookEvent
from billing.services import razorpay_client
from billing.tests.conftest import WEBHOOK_SECRET, deliver, deliver_all

pytestmark = pytest.mark.django_db

START, VERIFY, HISTORY, CANCEL = (
    "/api/subscriptions/start",
    "/api/subscriptions/verify",
    "/api/subscriptions/history",
    "/api/subscriptions/cancel",
)
PLANS, WEBHOOK = "/api/subscriptions/plans", "/api/billing/webhook"


def start(client, plan="monthly"):
    return client.post(START, {"plan": plan}, format="json")


def paid(client, razorpay, plan="monthly") -> dict:
    """Start a paid plan, pay in Checkout and let Razorpay's webhooks arrive: the subscription is active."""
    response = start(client, plan)
    assert response.status_code == 201, response.json()
    razorpay_id = response.json()["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    assert {outcome["outcome"] for outcome in deliver_all(APIClient(), razorpay)} == {"applied"}
    return response.json()["subscription"]


def signed_post(body: bytes, *, secret: str = WEBHOOK_SECRET, event_id: str = "evt_handmade0001"):
    return APIClient().generic(
        "POST",
        WEBHOOK,
        data=body,
        content_type="application/json",
        HTTP_X_RAZORPAY_SIGNATURE=hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        HTTP_X_RAZORPAY_EVENT_ID=event_id,
    )


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    """The secret Razorpay signs webhooks with (the `razorpay` fixture sets the same when a test uses it)."""
    settings.RAZORPAY_WEBHOOK_SECRET = WEBHOOK_SECRET


# --- who may call what ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("POST", START, {"plan": "monthly"}),
        (
            "POST",
            VERIFY,
            {"razorpay_payment_id": "pay_x", "razorpay_subscription_id": "sub_x", "razorpay_signature": "0"},
        ),
        ("GET", HISTORY, None),
        ("POST", CANCEL, None),
    ],
)
def test_the_subscription_routes_need_a_token(method, url, data):
    assert_requires_auth(method, url, data)
    assert not Subscription.objects.exists()


def test_plans_are_public_even_with_a_bad_token(api_client):
    Plan.objects.filter(code="yearly").update(is_active=False)  # retired: neither listed nor startable

    anonymous = api_client.get(PLANS)
    api_client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    with_junk_token = api_client.get(PLANS)

    for response in (anonymous, with_junk_token):
        assert response.status_code == 200
        assert [plan["code"] for plan in response.json()["items"]] == ["trial", "monthly"]
    trial = response.json()["items"][0]
    assert (trial["is_trial"], trial["price"], trial["trial_days"]) == (True, 0.0, 14)
    assert "razorpay_plan_id" not in trial


# --- bad input ------------------------------------------------------------------------------------------------------


def test_start_refuses_unknown_retired_missing_and_extra_input(trader_client, razorpay):
    Plan.objects.filter(code="yearly").update(is_active=False)
    served = razorpay.requests_served

    assert_error(start(trader_client, "platinum"), 404, "NOT_FOUND")
    assert_error(start(trader_client, "yearly"), 404, "NOT_FOUND")
    missing = assert_error(trader_client.post(START, {}, format="json"), 400, "VALIDATION_ERROR")
    assert set(missing["errors"]) == {"plan"}
    not_a_slug = assert_error(start(trader_client, "monthly plan!"), 400, "VALIDATION_ERROR")
    assert set(not_a_slug["errors"]) == {"plan"}
    extra = assert_error(
        trader_client.post(START, {"plan": "monthly", "coupon": "FREE"}, format="json"), 400, "VALIDATION_ERROR"
    )
    assert set(extra["errors"]) == {"coupon"}
    assert not Subscription.objects.exists()
    assert razorpay.requests_served == served  # nothing reached Razorpay


def test_verify_names_every_missing_or_unknown_field(trader_client, razorpay):
    subscription = start(trader_client).json()["subscription"]

    missing = assert_error(trader_client.post(VERIFY, {}, format="json"), 400, "VALIDATION_ERROR")
    assert set(missing["errors"]) == {"razorpay_payment_id", "razorpay_subscription_id", "razorpay_signature"}
    partial = assert_error(
        trader_client.post(VERIFY, {"razorpay_payment_id": "pay_1"}, format="json"), 400, "VALIDATION_ERROR"
    )
    assert set(partial["errors"]) == {"razorpay_subscription_id", "razorpay_signature"}
    extra = assert_error(
        trader_client.post(VERIFY, {"razorpay_payment_id": "pay_1", "amount": 1}, format="json"),
        400,
        "VALIDATION_ERROR",
    )
    assert "amount" in extra["errors"]
    assert Subscription.objects.get(pk=subscription["id"]).status == "created"


# --- other users' ids ----------------------------------------------------------------------------------------------


def test_verifying_someone_elses_subscription_is_not_found_and_changes_nothing(trader_client, razorpay):
    victim = client_for(UserFactory())
    theirs = start(victim).json()
    handler = razorpay.checkout(theirs["checkout"]["subscription_id"])  # their genuine Checkout answer

    body = assert_error(trader_client.post(VERIFY, handler, format="json"), 404, "NOT_FOUND")

    assert theirs["subscription"]["id"] not in json.dumps(body)
    subscription = Subscription.objects.get(pk=theirs["subscription"]["id"])
    assert (subscription.status, subscription.paid_count) == ("created", 0)
    assert trader_client.get("/api/users/me").json()["subscription"] is None
    # Their own verify still works afterwards.
    assert victim.post(VERIFY, handler, format="json").json()["status"] == "active"


def test_history_shows_only_your_own_subscriptions_with_their_payments(trader, trader_client, razorpay):
    other = client_for(UserFactory())
    paid(other, razorpay)
    mine = paid(trader_client, razorpay, plan="yearly")

    history = trader_client.get(HISTORY).json()

    assert (history["total"], history["page"], history["total_pages"]) == (1, 1, 1)
    [item] = history["items"]
    assert (item["id"], item["plan"], item["status"]) == (mine["id"], "yearly", "active")
    [payment] = item["payments"]
    assert (payment["amount_paise"], payment["status"], payment["subscription_id"]) == (999_000, "captured", mine["id"])
    assert {payment["subscription_id"] for payment in history["items"][0]["payments"]} == {mine["id"]}
    assert client_for(UserFactory()).get(HISTORY).json()["total"] == 0
    assert Payment.objects.count() == 2


# --- conflicts -----------------------------------------------------------------------------------------------------


def test_cancel_with_nothing_to_cancel_is_a_conflict(trader_client, razorpay):
    assert_error(trader_client.post(CANCEL), 409, "INVALID_STATE")
    start(trader_client)  # created, never paid: not a subscription that entitles anything
    assert_error(trader_client.post(CANCEL), 409, "INVALID_STATE")
    assert Subscription.objects.get().status == "created"


@pytest.mark.parametrize("second", ["monthly", "yearly"])
def test_a_second_paid_plan_while_one_is_active_is_a_conflict(trader_client, razorpay, second):
    first = paid(trader_client, razorpay)

    assert_error(start(trader_client, second), 409, "INVALID_STATE")

    assert list(Subscription.objects.values_list("id", flat=True)) == [first["id"]]


def test_a_halted_subscription_can_be_cancelled_and_then_another_plan_started(trader_client, razorpay):
    first = paid(trader_client, razorpay)
    razorpay_id = Subscription.objects.get(pk=first["id"]).razorpay_subscription_id
    razorpay.fail_payment(razorpay_id)
    razorpay.fail_payment(razorpay_id)
    deliver_all(APIClient(), razorpay)
    assert Subscription.objects.get(pk=first["id"]).status == "halted"
    assert_error(start(trader_client, "yearly"), 409, "INVALID_STATE")  # "cancel it before starting another"

    cancelled = trader_client.post(CANCEL)

    assert cancelled.status_code == 200, cancelled.json()
    assert (cancelled.json()["id"], cancelled.json()["status"]) == (first["id"], "cancelled")
    assert razorpay_client().subscription.fetch(razorpay_id)["status"] == "cancelled"  # at Razorpay too
    assert [outcome["outcome"] for outcome in deliver_all(APIClient(), razorpay)] == ["applied"]
    assert Subscription.objects.get(pk=first["id"]).status == "cancelled"
    assert start(trader_client, "yearly").status_code == 201


# --- the payment provider is down ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "garbage", "delay"])
def test_start_with_the_provider_down_is_503_and_leaves_no_subscription(trader_client, razorpay, settings, mode):
    settings.RAZORPAY_TIMEOUT_SECONDS = 0.3
    razorpay.inject_fault(mode, seconds=1.0)

    assert_error(start(trader_client), 503, "SERVICE_UNAVAILABLE")

    assert not Subscription.objects.exists()
    assert trader_client.get(HISTORY).json()["total"] == 0
    retried = start(trader_client)  # the provider is back: the retry works and makes one subscription
    assert retried.status_code == 201, retried.json()
    assert Subscription.objects.count() == 1


def test_verify_and_cancel_with_the_provider_down_are_503_and_change_nothing(trader_client, razorpay):
    started = start(trader_client).json()
    handler = razorpay.checkout(started["checkout"]["subscription_id"])

    razorpay.inject_fault("error")
    assert_error(trader_client.post(VERIFY, handler, format="json"), 503, "SERVICE_UNAVAILABLE")
    assert Subscription.objects.get(pk=started["subscription"]["id"]).status == "created"

    assert trader_client.post(VERIFY, handler, format="json").json()["status"] == "active"
    razorpay.inject_fault("error", status=502)
    assert_error(trader_client.post(CANCEL), 503, "SERVICE_UNAVAILABLE")
    subscription = Subscription.objects.get(pk=started["subscription"]["id"])
    assert (subscription.status, subscription.cancel_at_cycle_end) == ("active", False)
    assert trader_client.post(CANCEL).json()["cancel_at_cycle_end"] is True


# --- webhooks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json at all", b"[1, 2, 3]", b'"text"', b""])
def test_a_signed_webhook_that_is_not_a_json_object_is_refused_without_a_500(body):
    answer = assert_error(signed_post(body), 400, "VALIDATION_ERROR")

    # The signature is fine: the error names the body, so nobody goes hunting for a wrong webhook secret.
    assert set(answer["errors"]) == {"body"}
    assert not WebhookEvent.objects.exists()


def test_a_webhook_body_that_is_not_utf8_is_refused_without_a_500():
    assert_error(signed_post(b"\xff\xfe{}"), 400, "VALIDATION_ERROR")
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"event": "subscription.activated", "payload": "nothing"},
        {"event": "subscription.activated", "payload": {"subscription": ["sub_x"]}},
        {
            "event": "subscription.activated",
            "payload": {"subscription": {"entity": {"id": "sub_x"}}},
            "created_at": "x",
        },
        {"event": ["subscription.activated"]},
    ],
)
def test_a_signed_webhook_of_an_odd_shape_is_recorded_as_ignored_without_a_500(payload):
    response = signed_post(json.dumps(payload).encode())

    assert response.status_code == 200, response.content
    assert response.json() == {"event_id": "evt_handmade0001", "outcome": "ignored"}
    assert WebhookEvent.objects.get().outcome == "ignored"


def test_an_event_for_a_subscription_we_do_not_know_is_ignored(trader_client, razorpay):
    plan_id = Plan.objects.get(code="monthly").razorpay_plan_id
    stranger = razorpay_client().subscription.create({"plan_id": plan_id, "total_count": 3})  # made elsewhere
    razorpay.checkout(stranger["id"])

    outcomes = deliver_all(APIClient(), razorpay)

    assert [outcome["outcome"] for outcome in outcomes] == ["ignored", "ignored", "ignored"]
    events = WebhookEvent.objects.order_by("received_at", "id")
    assert [event.event for event in events] == [
        "subscription.authenticated",
        "subscription.activated",
        "subscription.charged",
    ]
    assert all(stranger["id"] in event.detail for event in events)
    assert not Payment.objects.exists() and not Subscription.objects.exists()


def test_an_event_we_do_not_act_on_is_recorded_as_ignored(trader_client, razorpay):
    subscription = paid(trader_client, razorpay)
    body = json.dumps({"event": "invoice.paid", "payload": {}, "created_at": 1}).encode()

    response = signed_post(body, event_id="evt_invoice0001")

    assert response.status_code == 200
    assert response.json() == {"event_id": "evt_invoice0001", "outcome": "ignored"}
    assert Subscription.objects.get(pk=subscription["id"]).status == "active"


def test_a_webhook_signed_with_another_secret_is_refused(razorpay):
    webhook_body = json.dumps({"event": "subscription.halted", "payload": {}}).encode()
    assert_error(signed_post(webhook_body, secret="guessed"), 400, "VALIDATION_ERROR")
    assert not WebhookEvent.objects.exists()


def test_the_webhook_takes_razorpays_exact_bytes(trader_client, razorpay):
    started = start(trader_client).json()
    razorpay.checkout(started["checkout"]["subscription_id"])
    [authenticated, *_] = razorpay.webhooks_take()
    # The same JSON re-serialized (spaces) no longer matches the signature Razorpay made over its bytes.
    respaced = json.dumps(json.loads(authenticated.body)).encode()
    assert respaced != authenticated.body

    assert_error(deliver(APIClient(), authenticated, body=respaced), 400, "VALIDATION_ERROR")
    assert deliver(APIClient(), authenticated).json()["outcome"] == "applied"
