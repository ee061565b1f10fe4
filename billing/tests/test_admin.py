"""The operators' billing pages: plans, subscriptions, payments and webhook events; revenue by plan and IST month
with its chart; and `manage.py billing_sync_plans`, which creates the paid plans at Razorpay once."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory
from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.razorpay import RazorpaySimulator
from algoterm.testing import client_for
from billing.models import Payment, Plan, Subscription, WebhookEvent
from billing.tests.conftest import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, deliver_all

pytestmark = pytest.mark.django_db

IST = ZoneInfo("Asia/Kolkata")
REVENUE = "/admin/billing/payment/revenue/"


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def pay(razorpay, plan: str, *, renewals: int = 0, failures: int = 0) -> Subscription:
    """A new user subscribes to `plan` and pays in Checkout; then renewals and failed charges; webhooks arrive."""
    client = client_for(UserFactory())
    started = client.post("/api/subscriptions/start", {"plan": plan}, format="json").json()
    razorpay_id = started["checkout"]["subscription_id"]
    razorpay.checkout(razorpay_id)
    for _ in range(renewals):
        razorpay.renew(razorpay_id)
    for _ in range(failures):
        razorpay.fail_payment(razorpay_id)
    deliver_all(APIClient(), razorpay)
    return Subscription.objects.get(pk=started["subscription"]["id"])


def revenue_rows(html: str) -> dict[str, list[str]]:
    """{month: [rupees per plan..., total]} as the page shows them."""
    rows = re.findall(r"<tr><td>(\d{4}-\d{2})</td>(.*?)</tr>", html, re.S)
    return {month: re.findall(r"₹([\d,]+\.\d\d)", cells) for month, cells in rows}


def test_every_billing_page_renders_for_an_admin(console, razorpay):
    subscription = pay(razorpay, "monthly", failures=1)
    payment = subscription.payments.first()
    event = WebhookEvent.objects.first()
    plan = Plan.objects.get(code="monthly")
    pages = [
        "/admin/billing/",
        "/admin/billing/plan/",
        "/admin/billing/plan/?is_trial__exact=1",
        f"/admin/billing/plan/{plan.pk}/change/",
        "/admin/billing/plan/add/",
        "/admin/billing/subscription/",
        f"/admin/billing/subscription/?q={subscription.user.email}",
        f"/admin/billing/subscription/?status__exact=pending&plan__id__exact={plan.pk}",
        f"/admin/billing/subscription/{subscription.pk}/change/",
        "/admin/billing/payment/",
        "/admin/billing/payment/?status__exact=failed",
        f"/admin/billing/payment/?q={payment.razorpay_payment_id}",
        f"/admin/billing/payment/{payment.pk}/change/",
        "/admin/billing/webhookevent/",
        "/admin/billing/webhookevent/?outcome__exact=applied",
        f"/admin/billing/webhookevent/{event.pk}/change/",
    ]
    for url in pages:
        response = console.get(url)
        assert response.status_code == 200, url

    listed = console.get("/admin/billing/subscription/").content.decode()
    assert subscription.pk in listed and subscription.user.email in listed
    detail = console.get(f"/admin/billing/subscription/{subscription.pk}/change/").content.decode()
    assert all(payment.razorpay_payment_id in detail for payment in subscription.payments.all())
    payments = console.get("/admin/billing/payment/").content.decode()
    assert "999.00" in payments and REVENUE in payments  # the revenue page is linked from the payments
    assert plan.razorpay_plan_id in console.get("/admin/billing/plan/").content.decode()


def test_the_records_razorpay_owns_cannot_be_edited_in_the_admin(console, razorpay):
    subscription = pay(razorpay, "monthly")
    payment = subscription.payments.get()

    for url in ("/admin/billing/subscription/add/", "/admin/billing/payment/add/", "/admin/billing/webhookevent/add/"):
        assert console.get(url).status_code == 403, url
    assert console.post(f"/admin/billing/payment/{payment.pk}/change/", {"amount_paise": 1}).status_code == 403
    assert console.post(f"/admin/billing/subscription/{subscription.pk}/delete/", {"post": "yes"}).status_code == 403
    plan = Plan.objects.get(code="trial")
    assert console.post(f"/admin/billing/plan/{plan.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Payment.objects.get(pk=payment.pk).amount_paise == 99_900
    assert Subscription.objects.filter(pk=subscription.pk).exists() and Plan.objects.filter(pk=plan.pk).exists()


def test_revenue_by_plan_and_ist_month_with_a_chart(console, razorpay):
    monthly = pay(razorpay, "monthly", renewals=1, failures=1)  # two captured, one failed (not revenue)
    pay(razorpay, "yearly")
    # One monthly payment was made at 01:30 IST on 1 February 2025 (still 31 January in UTC).
    early = monthly.payments.filter(status="captured").order_by("paid_at").first()
    Payment.objects.filter(pk=early.pk).update(paid_at=datetime(2025, 1, 31, 20, 0, tzinfo=UTC))
    this_month = Payment.objects.exclude(pk=early.pk).first().paid_at.astimezone(IST).strftime("%Y-%m")

    response = console.get(REVENUE)

    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r"<th>Monthly</th><th>Yearly</th>", html)
    assert revenue_rows(html) == {
        "2025-02": ["999.00", "0.00", "999.00"],
        this_month: ["999.00", "9,990.00", "10,989.00"],
    }
    footer = re.search(r"<tfoot>(.*?)</tfoot>", html, re.S).group(1)
    assert re.findall(r"₹([\d,]+\.\d\d)", footer) == ["1,998.00", "9,990.00", "11,988.00"]
    chart = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert chart is not None
    assert base64.b64decode(chart.group(1)).startswith(b"\x89PNG\r\n\x1a\n")


def test_revenue_with_no_payments_yet(console):
    html = console.get(REVENUE).content.decode()

    assert "No captured payments yet." in html
    assert "data:image/png" not in html


def test_a_trader_cannot_open_the_revenue_page(trader, razorpay):
    pay(razorpay, "yearly")
    anonymous, as_trader = Client(), Client()
    as_trader.force_login(trader)

    for client in (anonymous, as_trader):
        response = client.get(REVENUE)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
        assert "9,990.00" not in response.content.decode()
    assert as_trader.get("/admin/billing/payment/").status_code == 302


# --- manage.py billing_sync_plans -----------------------------------------------------------------------------------


@pytest.fixture
def bare_razorpay(settings) -> Iterator[RazorpaySimulator]:
    """A Razorpay account with no plans yet, the app pointed at it."""
    app = RazorpaySimulator(key_id=KEY_ID, key_secret=KEY_SECRET, webhook_secret=WEBHOOK_SECRET)
    server = SimulatorServer(app).start()
    settings.RAZORPAY_BASE_URL = server.url
    settings.RAZORPAY_KEY_ID = KEY_ID
    settings.RAZORPAY_KEY_SECRET = KEY_SECRET
    try:
        yield app
    finally:
        server.stop()


def sync() -> str:
    out = StringIO()
    call_command("billing_sync_plans", stdout=out)
    return out.getvalue()


def razorpay_plans() -> list[dict]:
    from billing.services import razorpay_client

    return razorpay_client().plan.all({"count": 100})["items"]


def test_billing_sync_plans_creates_the_paid_plans_once(bare_razorpay):
    first = sync()

    assert "[1/2] monthly" in first and "[2/2] yearly" in first
    assert "2 plan(s) in sync with Razorpay; 2 created." in first
    linked = dict(Plan.objects.values_list("code", "razorpay_plan_id"))
    assert linked["trial"] == "" and linked["monthly"] and linked["yearly"]
    remote = {plan["id"]: plan for plan in razorpay_plans()}
    assert set(remote) == {linked["monthly"], linked["yearly"]}
    assert (remote[linked["monthly"]]["item"]["amount"], remote[linked["monthly"]]["period"]) == (99_900, "monthly")
    assert (remote[linked["yearly"]]["item"]["amount"], remote[linked["yearly"]]["period"]) == (999_000, "yearly")

    second = sync()

    assert "2 plan(s) in sync with Razorpay; 0 created." in second
    assert re.search(rf"monthly\s+{linked['monthly']}\s+kept", second)
    assert dict(Plan.objects.values_list("code", "razorpay_plan_id")) == linked
    assert len(razorpay_plans()) == 2


def test_billing_sync_plans_makes_a_new_razorpay_plan_when_the_price_changes(bare_razorpay):
    sync()
    old = Plan.objects.get(code="monthly").razorpay_plan_id
    Plan.objects.filter(code="monthly").update(price_paise=149_900)  # the operator's new price, in the admin

    output = sync()

    plan = Plan.objects.get(code="monthly")
    assert "1 created" in output and plan.razorpay_plan_id != old
    remote = {item["id"]: item for item in razorpay_plans()}
    assert remote[plan.razorpay_plan_id]["item"]["amount"] == 149_900
    assert "0 created" in sync()
