"""The operator console's routes: users, payments with totals, the audit log, deactivation."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts import services
from accounts.models import AuditEvent, Role
from accounts.tests.factories import DEFAULT_PASSWORD, AdminFactory, UserFactory
from algoterm.testing import assert_error, assert_requires_auth, client_for
from billing.models import Payment, Plan, Subscription
from brokers.services import broker_account_connect

pytestmark = pytest.mark.django_db

USERS, PAYMENTS, LOGS = "/api/admin/users", "/api/admin/payments", "/api/admin/logs"
PAGE_KEYS = {"items", "page", "page_size", "total", "total_pages"}


def deactivate_url(user_id: str) -> str:
    return f"/api/admin/users/{user_id}/deactivate"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def plans(db) -> dict[str, Plan]:
    """The plans as the data migration makes them."""
    for plan in importlib.import_module("billing.migrations.0002_plans").PLANS:
        Plan.objects.update_or_create(code=plan["code"], defaults=plan)
    return {plan.code: plan for plan in Plan.objects.all()}


def subscribe(user, plan: Plan, *, status: str = "active") -> Subscription:
    now = timezone.now()
    return Subscription.objects.create(
        user=user, plan=plan, status=status, current_start=now, current_end=now + timedelta(days=30)
    )


_payment_seq = iter(range(1, 10_000))


def pay(subscription: Subscription, amount_paise: int, status: str, paid_at: datetime) -> Payment:
    return Payment.objects.create(
        user=subscription.user,
        subscription=subscription,
        razorpay_payment_id=f"pay_test{next(_payment_seq):06d}",
        amount_paise=amount_paise,
        status=status,
        paid_at=paid_at,
    )


# --- access ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "route"), [("get", USERS), ("get", PAYMENTS), ("get", LOGS), ("post", "deactivate")]
)
def test_every_admin_route_is_admins_only(method, route, admin_client, trader_client, trader):
    victim = UserFactory()
    url = deactivate_url(victim.pk) if route == "deactivate" else route
    body = {"reason": "fraud check"} if method == "post" else None

    assert_requires_auth(method.upper(), url, body)
    assert_error(getattr(trader_client, method)(url, body, format="json"), 403, "PERMISSION_DENIED")
    viewer = client_for(UserFactory(role=Role.USER))
    assert_error(getattr(viewer, method)(url, body, format="json"), 403, "PERMISSION_DENIED")
    response = getattr(admin_client, method)(url, body, format="json")
    assert response.status_code == 200, response.json()

    victim.refresh_from_db()
    assert victim.is_active is (route != "deactivate")  # the refused calls changed nothing


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (f"{USERS}?role=superuser", "role"),
        (f"{USERS}?is_active=maybe", "is_active"),
        (f"{USERS}?broker=robinhood", "broker"),
        (f"{USERS}?colour=red", "colour"),
        (f"{USERS}?page_size=101", "page_size"),
        (f"{PAYMENTS}?status=paid", "status"),
        (f"{PAYMENTS}?from=yesterday", "from"),
        (f"{PAYMENTS}?to=2026-02-30", "to"),
        (f"{PAYMENTS}?from=2026-03-02&to=2026-03-01", "from"),
        (f"{PAYMENTS}?plan=platinum", "plan"),
        (f"{PAYMENTS}?page=0", "page"),
        (f"{LOGS}?kind=trades", "kind"),
        (f"{LOGS}?kind=,", "kind"),
        (f"{LOGS}?from=2026-01-01T25:00:00", "from"),
        (f"{LOGS}?kinds=auth", "kinds"),
    ],
)
def test_bad_filters_are_400_naming_the_field(admin_client, plans, url, field):
    body = assert_error(admin_client.get(url), 400, "VALIDATION_ERROR")
    assert field in body["errors"], body


# --- users ----------------------------------------------------------------------------------------------------


def test_users_list_shows_role_status_broker_accounts_and_plan(admin_client, admin_user, plans):
    subscriber = UserFactory(email="priya@example.com", name="Priya Raman")
    subscribe(subscriber, plans["monthly"])
    paper = broker_account_connect(user=subscriber, broker="paper", credentials={}, label="Practice").account
    newcomer = UserFactory(email="arjun@example.com", name="Arjun Mehta")
    gone = UserFactory(role=Role.USER)
    services.user_deactivate(actor=admin_user, user=gone, reason="test")

    body = admin_client.get(USERS, {"page_size": 10}).json()

    assert set(body) == PAGE_KEYS and body["total"] == 4 and body["total_pages"] == 1
    rows = {row["id"]: row for row in body["items"]}
    assert [row["id"] for row in body["items"]][:3] == [gone.pk, newcomer.pk, subscriber.pk]  # newest first
    row = rows[subscriber.pk]
    assert (row["email"], row["name"], row["role"], row["status"], row["is_active"]) == (
        "priya@example.com",
        "Priya Raman",
        "trader",
        "active",
        True,
    )
    assert row["broker_accounts"] == [{"id": paper.pk, "broker": "paper", "label": "Practice", "status": "connected"}]
    assert row["plan"]["code"] == "monthly" and row["plan"]["basis"] == "subscription"
    assert row["plan"]["subscription_status"] == "active" and row["plan"]["subscription_id"].startswith("sub_")
    assert rows[newcomer.pk]["plan"]["basis"] == "trial" and rows[newcomer.pk]["broker_accounts"] == []
    assert rows[admin_user.pk]["plan"]["basis"] == "operator"
    assert rows[gone.pk]["status"] == "deactivated" and rows[gone.pk]["deactivated_at"] is not None
    assert "password" not in row


def test_users_filters(admin_client, admin_user):
    with_paper = UserFactory(email="kavya@example.com", name="Kavya")
    broker_account_connect(user=with_paper, broker="paper", credentials={}, label="Paper")
    viewer = UserFactory(role=Role.USER, name="Zoya Khan", email="zk@example.com")
    deleted_paper = UserFactory()
    account = broker_account_connect(user=deleted_paper, broker="paper", credentials={}, label="Paper").account
    account.deleted_at = timezone.now()
    account.save(update_fields=["deleted_at"])
    gone = UserFactory()
    services.user_deactivate(actor=admin_user, user=gone, reason="test")

    def ids(**query) -> set[str]:
        response = admin_client.get(USERS, query)
        assert response.status_code == 200, response.json()
        return {row["id"] for row in response.json()["items"]}

    assert ids(role="user") == {viewer.pk}
    assert ids(role="admin") == {admin_user.pk}
    assert ids(is_active="false") == {gone.pk}
    assert gone.pk not in ids(is_active="true") and viewer.pk in ids(is_active="true")
    assert ids(search="KAVYA@") == {with_paper.pk}
    assert ids(search="zoya") == {viewer.pk}
    assert ids(broker="paper") == {with_paper.pk}  # a deleted account does not count
    assert ids(broker="zerodha") == set()
    assert ids(role="trader", broker="paper", search="kav") == {with_paper.pk}


def test_users_pagination(admin_client):
    for _ in range(4):
        UserFactory()

    second = admin_client.get(USERS, {"page": 2, "page_size": 2}).json()

    assert (second["page"], second["page_size"], second["total"], second["total_pages"]) == (2, 2, 5, 3)
    assert len(second["items"]) == 2


# --- payments -------------------------------------------------------------------------------------------------


@pytest.fixture
def ledger(plans):
    """Payments in March 2026: two monthly users, one yearly; captured, failed and refunded ones."""
    alice, bala = UserFactory(), UserFactory()
    monthly_a, monthly_b = subscribe(alice, plans["monthly"]), subscribe(bala, plans["monthly"])
    yearly = subscribe(bala, plans["yearly"])
    at = lambda day, hour=6: datetime(2026, 3, day, hour, 0, tzinfo=UTC)  # noqa: E731
    return {
        "users": (alice, bala),
        "payments": [
            pay(monthly_a, 49_900, "captured", at(1)),
            pay(monthly_a, 49_900, "failed", at(2)),
            pay(monthly_b, 49_950, "captured", at(3)),
            pay(yearly, 499_900, "captured", at(10)),
            pay(monthly_b, 49_900, "refunded", at(11)),
            pay(monthly_a, 49_900, "failed", at(20, 20)),  # 20 Mar 20:00 UTC is 21 Mar in India
        ],
    }


def test_payments_totals_are_the_sums_over_every_filtered_payment(admin_client, ledger):
    payments = ledger["payments"]

    body = admin_client.get(PAYMENTS, {"page_size": 2}).json()

    assert PAGE_KEYS <= set(body) and body["total"] == 6 and body["total_pages"] == 3 and len(body["items"]) == 2
    captured = [payment for payment in payments if payment.status == "captured"]
    assert body["totals"] == {
        "count": 6,
        "captured_count": 3,
        "failed_count": 2,
        "refunded_count": 1,
        "captured_amount_paise": sum(payment.amount_paise for payment in captured),
        "captured_amount": 5997.50,
    }
    newest = body["items"][0]
    assert newest["id"] == payments[-1].pk and newest["status"] == "failed"
    assert (newest["amount_paise"], newest["amount"], newest["currency"]) == (49_900, 499.0, "INR")
    assert newest["plan"] == "monthly" and newest["user_id"] == ledger["users"][0].pk
    assert newest["user_email"] == ledger["users"][0].email


def test_payments_filters(admin_client, ledger):
    alice, bala = ledger["users"]

    def listed(**query) -> dict:
        response = admin_client.get(PAYMENTS, query)
        assert response.status_code == 200, response.json()
        return response.json()

    failed = listed(status="failed")
    assert failed["total"] == 2 and {row["status"] for row in failed["items"]} == {"failed"}
    assert failed["totals"]["captured_amount_paise"] == 0 and failed["totals"]["failed_count"] == 2

    yearly = listed(plan="yearly")
    assert [row["amount_paise"] for row in yearly["items"]] == [499_900]
    assert yearly["totals"]["captured_amount"] == 4999.0

    early_march = listed(**{"from": "2026-03-01", "to": "2026-03-03"})  # whole days, inclusive
    assert early_march["total"] == 3 and early_march["totals"]["captured_amount_paise"] == 99_850

    # A date is an Indian day: the payment at 20:00 UTC on the 20th belongs to the 21st.
    assert listed(**{"from": "2026-03-21", "to": "2026-03-21"})["total"] == 1
    assert listed(**{"from": "2026-03-20", "to": "2026-03-20"})["total"] == 0
    assert listed(**{"from": "2026-03-10T06:00:00Z", "to": "2026-03-10T06:00:00Z"})["total"] == 1
    assert listed(user_id=bala.pk, status="captured")["totals"]["captured_amount_paise"] == 549_850
    assert listed(user_id=alice.pk)["total"] == 3


# --- logs -----------------------------------------------------------------------------------------------------


@pytest.fixture
def audit_trail(admin_user, trader):
    """A login, a failed login, an order, an RMS breach, a config change and an admin action, in that order."""
    anonymous = APIClient()
    assert anonymous.post("/api/auth/login", {"email": trader.email, "password": DEFAULT_PASSWORD}).status_code == 200
    anonymous.post("/api/auth/login", {"email": trader.email, "password": "Wrong-password-1"})
    services.audit_record(action="order.place", actor=trader, target_type="order", target_id="ord_x")
    services.audit_record(action="rms.breach", target_type="user", target_id=trader.pk)
    services.audit_record(action="config.update", actor=admin_user, target_type="config", target_id="market_hours")
    services.user_deactivate(actor=admin_user, user=UserFactory(), reason="chargeback")


def test_logs_are_newest_first_and_filter_by_the_issues_kind_words(admin_client, admin_user, trader, audit_trail):
    def listed(**query) -> list[dict]:
        response = admin_client.get(LOGS, {"page_size": 100, **query})
        assert response.status_code == 200, response.json()
        return response.json()["items"]

    everything = listed()
    times = [row["occurred_at"] for row in everything]
    assert times == sorted(times, reverse=True)
    assert everything[0]["action"] == "admin.user_deactivate" and everything[0]["details"]["reason"] == "chargeback"
    assert everything[0]["actor_id"] == admin_user.pk and everything[0]["actor_email"] == admin_user.email

    assert {row["action"] for row in listed(kind="orders")} == {"order.place"}
    assert {row["action"] for row in listed(kind="RMS")} == {"rms.breach"}
    assert {row["action"] for row in listed(kind="config")} == {"config.update"}
    assert {row["kind"] for row in listed(kind="auth")} == {"auth"}
    assert {row["action"] for row in listed(kind="auth")} >= {"auth.login", "auth.login_failed"}
    assert {row["kind"] for row in listed(kind="admin,orders")} == {"admin", "order"}

    assert {row["action"] for row in listed(action="auth.login_")} == {"auth.login_failed"}
    assert {row["actor_id"] for row in listed(actor_id=trader.pk)} == {trader.pk}
    assert {row["action"] for row in listed(actor_id=trader.pk)} >= {"auth.login", "order.place"}
    assert [row["action"] for row in listed(target_id="market_hours")] == ["config.update"]


def test_logs_time_window(admin_client, audit_trail):
    AuditEvent.objects.create(kind="system", action="system.old", occurred_at=datetime(2025, 1, 5, 12, tzinfo=UTC))

    old = admin_client.get(LOGS, {"from": "2025-01-05", "to": "2025-01-05"}).json()
    recent = admin_client.get(LOGS, {"from": (timezone.now() - timedelta(hours=1)).isoformat()}).json()

    assert [row["action"] for row in old["items"]] == ["system.old"]
    assert recent["total"] >= 6 and "system.old" not in {row["action"] for row in recent["items"]}


# --- deactivation ---------------------------------------------------------------------------------------------


def test_deactivation_refuses_tokens_and_logins_at_once_and_is_audited(admin_client, admin_user, trader):
    refresh = RefreshToken.for_user(trader)
    victim = client_for(trader)
    assert victim.get("/api/users/me").status_code == 200

    response = admin_client.post(deactivate_url(trader.pk), {"reason": "Chargeback on card"}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["id"], body["status"], body["is_active"]) == (trader.pk, "deactivated", False)
    assert body["deactivated_at"] is not None
    assert_error(victim.get("/api/users/me"), 403, "ACCOUNT_DEACTIVATED")
    login = APIClient().post("/api/auth/login", {"email": trader.email, "password": DEFAULT_PASSWORD})
    assert_error(login, 403, "ACCOUNT_DEACTIVATED")
    assert APIClient().post("/api/auth/refresh", {"refresh": str(refresh)}, format="json").status_code in (401, 403)
    event = AuditEvent.objects.get(action="admin.user_deactivate", target_id=trader.pk)
    assert event.actor == admin_user and event.details["reason"] == "Chargeback on card"
    assert event.details["revoked_tokens"] == 2  # the refresh token above and the one behind `victim`
    logged = admin_client.get(LOGS, {"kind": "admin", "target_id": trader.pk}).json()["items"]
    assert [row["id"] for row in logged] == [event.pk]


def test_deactivating_twice_is_409_and_audited_once(admin_client, trader):
    assert admin_client.post(deactivate_url(trader.pk), {"reason": "first"}, format="json").status_code == 200

    assert_error(admin_client.post(deactivate_url(trader.pk), {"reason": "again"}, format="json"), 409, "INVALID_STATE")
    assert AuditEvent.objects.filter(action="admin.user_deactivate", target_id=trader.pk).count() == 1


def test_an_admin_cannot_deactivate_themselves_but_can_another_admin(admin_client, admin_user):
    response = admin_client.post(deactivate_url(admin_user.pk), {"reason": "oops"}, format="json")

    assert_error(response, 403, "PERMISSION_DENIED")
    admin_user.refresh_from_db()
    assert admin_user.is_active
    other = AdminFactory()
    assert admin_client.post(deactivate_url(other.pk), {"reason": "left"}, format="json").json()["status"] == (
        "deactivated"
    )


def test_deactivating_an_unknown_user_is_404(admin_client):
    assert_error(
        admin_client.post(deactivate_url("usr_doesnotexist"), {"reason": "x"}, format="json"), 404, "NOT_FOUND"
    )


@pytest.mark.parametrize(
    ("body", "field"), [({}, "reason"), ({"reason": "  "}, "reason"), ({"reason": "x", "force": True}, "force")]
)
def test_deactivation_needs_a_reason_and_nothing_else(admin_client, trader, body, field):
    errors = assert_error(admin_client.post(deactivate_url(trader.pk), body, format="json"), 400, "VALIDATION_ERROR")

    assert field in errors["errors"]
    trader.refresh_from_db()
    assert trader.is_active
