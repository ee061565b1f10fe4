"""The Razorpay simulator through the real `razorpay` SDK, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import razorpay
from razorpay.errors import BadRequestError, ServerError, SignatureVerificationError

from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.razorpay import IST, RazorpaySimulator, RazorpaySimulatorError, SimWebhook, advance

KEY_ID, KEY_SECRET, WEBHOOK_SECRET = "rzp_test_simulator", "simulator-key-secret", "simulator-webhook-secret"
JAN_15 = int(datetime(2026, 1, 15, 10, 0, tzinfo=IST).timestamp())
FEB_15 = int(datetime(2026, 2, 15, 10, 0, tzinfo=IST).timestamp())
MAR_15 = int(datetime(2026, 3, 15, 10, 0, tzinfo=IST).timestamp())
PLAN_REQUEST = {
    "period": "monthly",
    "interval": 1,
    "item": {"name": "Pro monthly", "amount": 99_900, "currency": "INR", "description": "AlgoTerm Pro"},
    "notes": {"code": "pro"},
}
# No proxy, even if the environment names one: the simulator is on 127.0.0.1.
local_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def start_simulator(clock: FakeClock, webhook_url: str = "") -> tuple[RazorpaySimulator, SimulatorServer]:
    simulator = RazorpaySimulator(
        key_id=KEY_ID, key_secret=KEY_SECRET, webhook_secret=WEBHOOK_SECRET, webhook_url=webhook_url, clock=clock
    )
    return simulator, SimulatorServer(simulator).start()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(JAN_15 + 0.25)


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[RazorpaySimulator]:
    simulator, server = start_simulator(clock)
    try:
        yield simulator
    finally:
        server.stop()


@pytest.fixture
def client(sim: RazorpaySimulator) -> razorpay.Client:
    return razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=sim.base_url)


def create_subscription(client: razorpay.Client, total_count: int = 12, **extra: Any) -> dict[str, Any]:
    plan = client.plan.create(PLAN_REQUEST)
    return client.subscription.create({"plan_id": plan["id"], "total_count": total_count, **extra})


def events(webhooks: list[SimWebhook]) -> list[str]:
    return [webhook.event for webhook in webhooks]


def payload(webhook: SimWebhook) -> dict[str, Any]:
    return json.loads(webhook.body)["payload"]


def post_control(sim: RazorpaySimulator, action: str, data: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{sim.base_url}/__sim__/razorpay/{action}",
        data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with local_opener.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --- plans -----------------------------------------------------------------------------------------------------------


def test_plans_are_created_listed_newest_first_and_fetched(client: razorpay.Client, clock: FakeClock) -> None:
    monthly = client.plan.create(PLAN_REQUEST)
    clock.now += 1
    yearly = client.plan.create({**PLAN_REQUEST, "period": "yearly", "item": {"name": "Pro yearly", "amount": 999_900}})

    assert monthly["id"].startswith("plan_") and len(monthly["id"]) == len("plan_") + 14
    assert monthly["id"][5:].isalnum()
    assert monthly["entity"] == "plan"
    assert (monthly["period"], monthly["interval"], monthly["notes"]) == ("monthly", 1, {"code": "pro"})
    assert monthly["created_at"] == JAN_15
    item = monthly["item"]
    assert item["id"].startswith("item_") and item["active"] is True
    assert (item["name"], item["description"], item["amount"], item["unit_amount"], item["currency"]) == (
        "Pro monthly",
        "AlgoTerm Pro",
        99_900,
        99_900,
        "INR",
    )
    assert yearly["item"]["currency"] == "INR" and yearly["item"]["description"] is None

    listed = client.plan.all()
    assert listed["entity"] == "collection" and listed["count"] == 2
    assert [plan["id"] for plan in listed["items"]] == [yearly["id"], monthly["id"]]
    second_page = client.plan.all({"count": 1, "skip": 1})
    assert second_page["count"] == 1 and second_page["items"][0]["id"] == monthly["id"]
    assert client.plan.fetch(monthly["id"]) == monthly
    with pytest.raises(BadRequestError, match="does not exist"):
        client.plan.fetch("plan_00000000000000")


def test_a_base_url_ending_in_v1_is_refused_with_a_hint(sim: RazorpaySimulator) -> None:
    client_with_v1 = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=sim.base_url + "/v1")
    with pytest.raises(BadRequestError, match="server root"):
        client_with_v1.plan.all()


@pytest.mark.parametrize("auth", [("rzp_test_other", KEY_SECRET), (KEY_ID, "wrong-secret"), (KEY_ID, "")])
def test_wrong_credentials_raise_bad_request_error(sim: RazorpaySimulator, auth: tuple[str, str]) -> None:
    with pytest.raises(BadRequestError, match="Authentication failed"):
        razorpay.Client(auth=auth, base_url=sim.base_url).plan.all()


def test_a_request_without_credentials_gets_401_in_razorpay_envelope(sim: RazorpaySimulator) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        local_opener.open(f"{sim.base_url}/v1/plans", timeout=5)
    assert refused.value.code == 401
    error = json.loads(refused.value.read())["error"]
    assert (error["code"], error["description"]) == ("BAD_REQUEST_ERROR", "Authentication failed")


@pytest.mark.parametrize(
    ("plan_request", "description"),
    [
        ({**PLAN_REQUEST, "period": "hourly"}, "period field is required"),
        ({**PLAN_REQUEST, "interval": 0}, "interval field is required"),
        ({**PLAN_REQUEST, "period": "daily", "interval": 1}, "at least 7 for daily plans"),
        ({**PLAN_REQUEST, "item": {"name": "Pro", "amount": "99900"}}, "item.amount field must be a positive integer"),
        ({**PLAN_REQUEST, "item": {"name": "Pro", "amount": 999.5}}, "item.amount field must be a positive integer"),
        ({**PLAN_REQUEST, "item": {"name": "Pro", "amount": -100}}, "item.amount field must be a positive integer"),
        ({**PLAN_REQUEST, "item": {"name": "Pro", "amount": 50}}, "at least INR 1.00"),
        ({**PLAN_REQUEST, "item": {"name": "Pro", "amount": 9900, "currency": "USD"}}, "must be INR"),
        ({**PLAN_REQUEST, "item": {"amount": 9900}}, "item.name field is required"),
        ({"period": "monthly", "interval": 1}, "item field is required"),
        ({**PLAN_REQUEST, "notes": ["not", "an", "object"]}, "notes field must be an object"),
    ],
)
def test_invalid_plans_raise_bad_request_error(
    client: razorpay.Client, plan_request: dict[str, Any], description: str
) -> None:
    with pytest.raises(BadRequestError, match=description):
        client.plan.create(plan_request)
    assert client.plan.all()["count"] == 0


# --- subscriptions ---------------------------------------------------------------------------------------------------


def test_subscription_is_created_fetched_and_listed(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    created = create_subscription(client, total_count=6, notes={"user": "42"}, customer_notify=0)

    assert created["id"].startswith("sub_") and len(created["id"]) == len("sub_") + 14
    assert created["entity"] == "subscription"
    assert created["status"] == "created"
    assert created["current_start"] is None and created["current_end"] is None and created["ended_at"] is None
    assert (created["quantity"], created["total_count"], created["paid_count"], created["remaining_count"]) == (
        1,
        6,
        0,
        6,
    )
    assert created["auth_attempts"] == 0
    assert created["customer_notify"] is False
    assert created["notes"] == {"user": "42"}
    assert created["created_at"] == JAN_15 and created["charge_at"] == JAN_15
    assert created["start_at"] is None and created["expire_by"] is None
    assert created["end_at"] == int(datetime(2026, 7, 15, 10, 0, tzinfo=IST).timestamp())
    assert created["short_url"] == f"{sim.base_url}/checkout/{created['id']}"
    assert created["has_scheduled_changes"] is False and created["cancel_at_cycle_end"] is False
    assert sim.webhooks_take() == []  # Razorpay sends nothing until the customer acts

    assert client.subscription.fetch(created["id"]) == created
    listed = client.subscription.all()
    assert listed["entity"] == "collection" and [sub["id"] for sub in listed["items"]] == [created["id"]]
    assert client.subscription.all({"plan_id": "plan_00000000000000"})["count"] == 0
    with pytest.raises(BadRequestError, match="does not exist"):
        client.subscription.fetch("sub_00000000000000")


@pytest.mark.parametrize(
    ("subscription_request", "description"),
    [
        ({"plan_id": "plan_00000000000000", "total_count": 12}, "plan_id plan_00000000000000 does not exist"),
        ({"total_count": 12}, "plan_id field is required"),
        ({"plan_id": "<plan>"}, "total_count field is required"),
        ({"plan_id": "<plan>", "total_count": 0}, "total_count field is required and must be a positive integer"),
        ({"plan_id": "<plan>", "total_count": 12, "quantity": True}, "quantity field must be a positive integer"),
        ({"plan_id": "<plan>", "total_count": 12, "start_at": JAN_15 - 60}, "start_at field must be a future"),
        ({"plan_id": "<plan>", "total_count": 12, "customer_notify": "yes"}, "customer_notify field must be a boolean"),
    ],
)
def test_invalid_subscriptions_raise_bad_request_error(
    client: razorpay.Client, subscription_request: dict[str, Any], description: str
) -> None:
    plan = client.plan.create(PLAN_REQUEST)
    if subscription_request.get("plan_id") == "<plan>":
        subscription_request = {**subscription_request, "plan_id": plan["id"]}
    with pytest.raises(BadRequestError, match=description):
        client.subscription.create(subscription_request)
    assert client.subscription.all()["count"] == 0


def test_injected_fault_raises_server_error(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    sim.inject_fault("error", status=500)
    with pytest.raises(ServerError, match="Simulated broker failure"):
        client.plan.all()
    assert client.plan.all()["count"] == 0


# --- checkout and its signatures -------------------------------------------------------------------------------------


def test_checkout_activates_and_its_signature_verifies(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client, total_count=12, quantity=2)

    result = sim.checkout(subscription["id"])

    assert set(result) == {"razorpay_payment_id", "razorpay_subscription_id", "razorpay_signature"}
    assert result["razorpay_subscription_id"] == subscription["id"]
    assert result["razorpay_payment_id"].startswith("pay_") and len(result["razorpay_payment_id"]) == 18
    assert client.utility.verify_subscription_payment_signature(dict(result)) is True
    tampered = {**result, "razorpay_signature": result["razorpay_signature"][:-1] + "0"}
    if tampered["razorpay_signature"] == result["razorpay_signature"]:
        tampered["razorpay_signature"] = result["razorpay_signature"][:-1] + "1"
    with pytest.raises(SignatureVerificationError):
        client.utility.verify_subscription_payment_signature(tampered)
    with pytest.raises(SignatureVerificationError):
        client.utility.verify_subscription_payment_signature({**result, "razorpay_subscription_id": "sub_other"})

    active = client.subscription.fetch(subscription["id"])
    assert active["status"] == "active"
    assert (active["current_start"], active["current_end"], active["charge_at"]) == (JAN_15, FEB_15, FEB_15)
    assert (active["paid_count"], active["remaining_count"]) == (1, 11)
    assert active["start_at"] == JAN_15 and active["customer_id"].startswith("cust_")
    assert active["payment_method"] == "card"

    charged = sim.webhooks_take()
    assert events(charged) == ["subscription.authenticated", "subscription.activated", "subscription.charged"]
    payment = payload(charged[-1])["payment"]["entity"]
    assert payment["id"] == result["razorpay_payment_id"]
    assert (payment["amount"], payment["currency"], payment["status"], payment["method"]) == (
        199_800,
        "INR",
        "captured",
        "card",
    )
    assert payment["captured"] is True and payment["error_description"] is None
    assert payment["invoice_id"].startswith("inv_") and payment["order_id"].startswith("order_")
    assert payment["email"] == "customer@example.com" and payment["created_at"] == JAN_15

    with pytest.raises(RazorpaySimulatorError, match="cannot be checked out in active status"):
        sim.checkout(subscription["id"])
    with pytest.raises(RazorpaySimulatorError, match="does not exist"):
        sim.checkout("sub_00000000000000")


def test_every_webhook_verifies_and_has_razorpays_shape(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client)
    sim.checkout(subscription["id"])
    webhooks = sim.webhooks_take()

    assert len({webhook.event_id for webhook in webhooks}) == 3
    for webhook in webhooks:
        signature = webhook.headers["X-Razorpay-Signature"]
        assert webhook.headers["Content-Type"] == "application/json"
        assert webhook.headers["X-Razorpay-Event-Id"] == webhook.event_id and webhook.event_id.startswith("evt_")
        assert client.utility.verify_webhook_signature(webhook.body.decode(), signature, WEBHOOK_SECRET) is True
        with pytest.raises(SignatureVerificationError):
            client.utility.verify_webhook_signature(webhook.body.decode() + " ", signature, WEBHOOK_SECRET)
        with pytest.raises(SignatureVerificationError):
            client.utility.verify_webhook_signature(webhook.body.decode(), signature, "another-secret")
        body = json.loads(webhook.body)
        assert body["entity"] == "event" and body["event"] == webhook.event
        assert body["account_id"].startswith("acc_") and body["created_at"] == JAN_15
        assert body["contains"] == list(body["payload"])
        assert body["payload"]["subscription"]["entity"]["id"] == subscription["id"]

    authenticated, activated, charged = (json.loads(webhook.body) for webhook in webhooks)
    assert authenticated["contains"] == ["subscription"]
    assert authenticated["payload"]["subscription"]["entity"]["status"] == "authenticated"
    assert authenticated["payload"]["subscription"]["entity"]["paid_count"] == 0
    assert activated["payload"]["subscription"]["entity"]["status"] == "active"
    assert charged["contains"] == ["subscription", "payment"]
    assert charged["payload"]["subscription"]["entity"]["paid_count"] == 1
    assert sim.webhooks_take() == []


# --- the billing lifecycle -------------------------------------------------------------------------------------------


def test_renewal_then_two_failures_halt_the_subscription(
    client: razorpay.Client, sim: RazorpaySimulator, clock: FakeClock
) -> None:
    subscription = create_subscription(client)
    sim.checkout(subscription["id"])
    sim.webhooks_take()

    clock.now = FEB_15
    renewal = sim.renew(subscription["id"])
    assert renewal["status"] == "captured" and renewal["amount"] == 99_900 and renewal["created_at"] == FEB_15
    renewed = client.subscription.fetch(subscription["id"])
    assert (renewed["status"], renewed["paid_count"], renewed["remaining_count"]) == ("active", 2, 10)
    assert (renewed["current_start"], renewed["current_end"]) == (FEB_15, MAR_15)
    charged = sim.webhooks_take()
    assert events(charged) == ["subscription.charged"]
    assert payload(charged[0])["payment"]["entity"]["id"] == renewal["id"]

    clock.now = MAR_15
    first_failure = sim.fail_payment(subscription["id"])
    assert first_failure["status"] == "failed" and first_failure["captured"] is False
    assert first_failure["error_description"] and first_failure["error_code"] == "BAD_REQUEST_ERROR"
    pending = client.subscription.fetch(subscription["id"])
    assert (pending["status"], pending["paid_count"], pending["auth_attempts"]) == ("pending", 2, 1)
    failed = sim.webhooks_take()
    assert events(failed) == ["payment.failed", "subscription.pending"]
    assert json.loads(failed[0].body)["contains"] == ["payment"]
    assert payload(failed[0])["payment"]["entity"]["id"] == first_failure["id"]

    second_failure = sim.fail_payment(subscription["id"])
    assert second_failure["id"] != first_failure["id"]
    halted = client.subscription.fetch(subscription["id"])
    assert (halted["status"], halted["auth_attempts"], halted["charge_at"]) == ("halted", 2, None)
    assert events(sim.webhooks_take()) == ["payment.failed", "subscription.halted"]

    with pytest.raises(RazorpaySimulatorError, match="cannot be charged in halted status"):
        sim.renew(subscription["id"])
    with pytest.raises(RazorpaySimulatorError, match="cannot be charged in halted status"):
        sim.fail_payment(subscription["id"])


def test_a_successful_retry_brings_a_pending_subscription_back(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client)
    sim.checkout(subscription["id"])
    sim.fail_payment(subscription["id"])
    sim.webhooks_take()

    sim.renew(subscription["id"])

    recovered = client.subscription.fetch(subscription["id"])
    assert (recovered["status"], recovered["paid_count"], recovered["auth_attempts"]) == ("active", 2, 0)
    assert events(sim.webhooks_take()) == ["subscription.charged"]
    sim.fail_payment(subscription["id"])
    assert client.subscription.fetch(subscription["id"])["status"] == "pending"  # the failure count started over


def test_cancel_at_cycle_end_waits_for_the_cycle_to_end(
    client: razorpay.Client, sim: RazorpaySimulator, clock: FakeClock
) -> None:
    subscription = create_subscription(client)
    sim.checkout(subscription["id"])
    sim.webhooks_take()

    scheduled = client.subscription.cancel(subscription["id"], {"cancel_at_cycle_end": 1})

    assert scheduled["status"] == "active" and scheduled["ended_at"] is None
    assert scheduled["has_scheduled_changes"] is True and scheduled["cancel_at_cycle_end"] is True
    assert scheduled["change_scheduled_at"] == FEB_15
    assert sim.webhooks_take() == []
    with pytest.raises(RazorpaySimulatorError, match="cancelled at the end of this cycle"):
        sim.renew(subscription["id"])

    clock.now = FEB_15
    assert sim.end_cycle(subscription["id"]) is None

    cancelled = client.subscription.fetch(subscription["id"])
    assert (cancelled["status"], cancelled["ended_at"], cancelled["paid_count"]) == ("cancelled", FEB_15, 1)
    webhooks = sim.webhooks_take()
    assert events(webhooks) == ["subscription.cancelled"]
    assert payload(webhooks[0])["subscription"]["entity"]["status"] == "cancelled"
    with pytest.raises(BadRequestError, match="not cancellable in cancelled status"):
        client.subscription.cancel(subscription["id"], {"cancel_at_cycle_end": 0})


def test_end_cycle_without_a_scheduled_cancellation_renews(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client)
    sim.checkout(subscription["id"])
    sim.webhooks_take()

    sim.end_cycle(subscription["id"])

    assert client.subscription.fetch(subscription["id"])["paid_count"] == 2
    assert events(sim.webhooks_take()) == ["subscription.charged"]


def test_cancel_immediately(client: razorpay.Client, sim: RazorpaySimulator, clock: FakeClock) -> None:
    subscription = create_subscription(client)
    sim.checkout(subscription["id"])
    sim.webhooks_take()
    clock.now = JAN_15 + 3600

    cancelled = client.subscription.cancel(subscription["id"], {"cancel_at_cycle_end": False})

    assert (cancelled["status"], cancelled["ended_at"], cancelled["charge_at"]) == ("cancelled", JAN_15 + 3600, None)
    assert events(sim.webhooks_take()) == ["subscription.cancelled"]
    with pytest.raises(RazorpaySimulatorError, match="cannot be charged in cancelled status"):
        sim.end_cycle(subscription["id"])


def test_a_subscription_never_paid_is_cancelled_at_once_even_at_cycle_end(client: razorpay.Client) -> None:
    subscription = create_subscription(client)

    cancelled = client.subscription.cancel(subscription["id"], {"cancel_at_cycle_end": True})

    assert cancelled["status"] == "cancelled"


def test_the_last_paid_cycle_completes_the_subscription(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client, total_count=2)
    sim.checkout(subscription["id"])
    sim.webhooks_take()

    sim.end_cycle(subscription["id"])

    completed = client.subscription.fetch(subscription["id"])
    assert (completed["status"], completed["paid_count"], completed["remaining_count"]) == ("completed", 2, 0)
    assert completed["ended_at"] == JAN_15 and completed["charge_at"] is None
    webhooks = sim.webhooks_take()
    assert events(webhooks) == ["subscription.charged", "subscription.completed"]
    assert payload(webhooks[1])["subscription"]["entity"]["status"] == "completed"
    with pytest.raises(BadRequestError, match="not cancellable in completed status"):
        client.subscription.cancel(subscription["id"])
    with pytest.raises(RazorpaySimulatorError):
        sim.renew(subscription["id"])


def test_a_single_cycle_subscription_completes_at_checkout(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client, total_count=1)

    sim.checkout(subscription["id"])

    assert client.subscription.fetch(subscription["id"])["status"] == "completed"
    assert events(sim.webhooks_take())[-2:] == ["subscription.charged", "subscription.completed"]


def test_pause_and_resume(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client)
    with pytest.raises(BadRequestError, match="cannot be paused in created status"):
        client.subscription.pause(subscription["id"], {"pause_at": "now"})
    sim.checkout(subscription["id"])
    sim.webhooks_take()

    paused = client.subscription.pause(subscription["id"], {"pause_at": "now"})
    assert (paused["status"], paused["charge_at"]) == ("paused", None)
    with pytest.raises(RazorpaySimulatorError, match="cannot be charged in paused status"):
        sim.renew(subscription["id"])
    resumed = client.subscription.resume(subscription["id"], {"resume_at": "now"})
    assert (resumed["status"], resumed["charge_at"]) == ("active", FEB_15)
    assert events(sim.webhooks_take()) == ["subscription.paused", "subscription.resumed"]


def test_month_arithmetic_keeps_the_day_where_the_month_allows() -> None:
    jan_31 = int(datetime(2026, 1, 31, 10, 0, tzinfo=IST).timestamp())
    assert advance(jan_31, "monthly", 1) == int(datetime(2026, 2, 28, 10, 0, tzinfo=IST).timestamp())
    assert advance(jan_31, "monthly", 3) == int(datetime(2026, 4, 30, 10, 0, tzinfo=IST).timestamp())
    assert advance(jan_31, "yearly", 1) == int(datetime(2027, 1, 31, 10, 0, tzinfo=IST).timestamp())
    assert advance(jan_31, "weekly", 2) == jan_31 + 14 * 86_400


# --- control routes and the checkout page ----------------------------------------------------------------------------


def test_control_routes_drive_the_same_actions(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client, total_count=3)

    status, checkout = post_control(sim, "checkout", {"subscription_id": subscription["id"]})
    assert status == 200 and client.utility.verify_subscription_payment_signature(checkout) is True
    status, renewal = post_control(sim, "renew", {"subscription_id": subscription["id"]})
    assert status == 200 and renewal["entity"] == "payment" and renewal["status"] == "captured"
    status, failure = post_control(sim, "fail_payment", {"subscription_id": subscription["id"]})
    assert status == 200 and failure["status"] == "failed"
    status, ended = post_control(sim, "end_cycle", {"subscription_id": subscription["id"]})
    assert (status, ended) == (200, {"ok": True})
    assert client.subscription.fetch(subscription["id"])["status"] == "completed"

    status, taken = post_control(sim, "webhooks", {})
    assert status == 200
    assert [webhook["event"] for webhook in taken] == [
        "subscription.authenticated",
        "subscription.activated",
        "subscription.charged",
        "subscription.charged",
        "payment.failed",
        "subscription.pending",
        "subscription.charged",
        "subscription.completed",
    ]
    first = taken[0]
    assert client.utility.verify_webhook_signature(
        first["body"], first["headers"]["X-Razorpay-Signature"], WEBHOOK_SECRET
    )
    assert sim.webhooks_take() == []

    status, refused = post_control(sim, "renew", {"subscription_id": subscription["id"]})
    assert status == 400 and "cannot be charged in completed status" in refused["error"]["description"]
    status, missing = post_control(sim, "checkout", {})
    assert status == 400 and missing["error"]["description"] == "The subscription_id field is required."
    status, unknown = post_control(sim, "refund", {"subscription_id": subscription["id"]})
    assert status == 404 and "Unknown simulator action" in unknown["error"]["description"]


def test_the_short_url_is_a_working_checkout_page(client: razorpay.Client, sim: RazorpaySimulator) -> None:
    subscription = create_subscription(client)

    with local_opener.open(subscription["short_url"], timeout=5) as page:
        text = page.read().decode()
    assert "Razorpay Checkout" in text and "Pro monthly" in text and "999.00" in text
    with local_opener.open(urllib.request.Request(subscription["short_url"], data=b"", method="POST")) as paid:
        assert "Payment successful" in paid.read().decode()

    assert client.subscription.fetch(subscription["id"])["status"] == "active"


# --- delivery to a webhook URL ---------------------------------------------------------------------------------------


class WebhookReceiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]]
    arrived: threading.Condition

    def do_POST(self) -> None:  # noqa: N802  (stdlib name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.arrived:
            self.received.append((self.path, dict(self.headers.items()), body))
            self.arrived.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib signature)
        return


def test_webhooks_are_posted_in_order_to_the_webhook_url(clock: FakeClock) -> None:
    received: list[tuple[str, dict[str, str], bytes]] = []
    arrived = threading.Condition()
    handler = type("Receiver", (WebhookReceiver,), {"received": received, "arrived": arrived})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    sim, server = start_simulator(clock, webhook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hooks/razorpay")
    try:
        client = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=sim.base_url)
        subscription = create_subscription(client)
        sim.checkout(subscription["id"])
        sim.fail_payment(subscription["id"])
        deadline = time.monotonic() + 10
        with arrived:
            while len(received) < 5 and time.monotonic() < deadline:
                arrived.wait(timeout=0.1)
        outbox = sim.webhooks_take()
    finally:
        server.stop()
        receiver.shutdown()
        receiver.server_close()

    assert [webhook.event for webhook in outbox] == [
        "subscription.authenticated",
        "subscription.activated",
        "subscription.charged",
        "payment.failed",
        "subscription.pending",
    ]
    assert len(received) == 5
    for (path, headers, body), queued in zip(received, outbox, strict=True):
        assert path == "/hooks/razorpay"
        assert body == queued.body
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Razorpay-Event-Id"] == queued.event_id
        assert headers["X-Razorpay-Signature"] == queued.headers["X-Razorpay-Signature"]
        assert client.utility.verify_webhook_signature(body.decode(), headers["X-Razorpay-Signature"], WEBHOOK_SECRET)
        assert json.loads(body)["event"] == queued.event


def test_an_unreachable_webhook_url_loses_events_but_keeps_the_outbox(clock: FakeClock) -> None:
    unused = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    closed_port = unused.server_address[1]
    unused.server_close()
    sim, server = start_simulator(clock, webhook_url=f"http://127.0.0.1:{closed_port}/hooks")
    try:
        client = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=sim.base_url)
        subscription = create_subscription(client)
        sim.checkout(subscription["id"])
        assert client.subscription.fetch(subscription["id"])["status"] == "active"
    finally:
        server.stop()
    assert events(sim.webhooks_take()) == [
        "subscription.authenticated",
        "subscription.activated",
        "subscription.charged",
    ]


def test_concurrent_checkouts_keep_every_subscription_consistent(
    client: razorpay.Client, sim: RazorpaySimulator
) -> None:
    subscriptions = [create_subscription(client) for _ in range(8)]
    threads = [threading.Thread(target=sim.checkout, args=(sub["id"],)) for sub in subscriptions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    webhooks = sim.webhooks_take()
    assert len(webhooks) == 24
    for sub in subscriptions:
        mine = [webhook.event for webhook in webhooks if payload(webhook)["subscription"]["entity"]["id"] == sub["id"]]
        assert mine == ["subscription.authenticated", "subscription.activated", "subscription.charged"]
        assert client.subscription.fetch(sub["id"])["paid_count"] == 1
