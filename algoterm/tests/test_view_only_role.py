"""The view-only role (users who may look but not trade) on every write route of the API.

A view-only user may change their own profile and password, log in and out, read and mark notifications, and manage
their subscription; everything that trades or sets up trading (broker accounts, orders, positions, strategies and
their webhooks and backtests, risk limits) is 403 PERMISSION_DENIED. The routes are walked from the URL
configuration, so a new write route without its permission fails here."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm.testing import assert_error, client_for
from brokers.models import BrokerAccount

pytestmark = pytest.mark.django_db

WRITE_METHODS = ("post", "put", "patch", "delete")

# Writes a view-only user may make (or that do not act as a logged-in user at all).
OPEN_TO_VIEW_ONLY = {
    "auth-register",
    "auth-login",
    "auth-refresh",
    "auth-logout",
    "users-detail",  # their own name, phone and password; role and status are an admin's
    "notifications-read",
    "notifications-read-all",
    "subscription-start",  # billing is the person's, not trading
    "subscription-verify",
    "subscription-cancel",
    "billing-webhook",  # the payment provider, signed
    "broker-postback",  # the broker, signed
    "strategy-webhook",  # a signal source, signed with the strategy's secret
}


def _write_routes() -> list[tuple[str, str, str]]:
    """(route name, method, path with placeholder ids) for every write the API routes."""
    found: list[tuple[str, str, str]] = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
                continue
            assert isinstance(pattern, URLPattern)
            view_class = getattr(pattern.callback, "view_class", None)
            if view_class is None or not route.startswith("api/") or not pattern.name:
                continue
            path = "/" + re.sub(r"<(?:\w+:)?\w+>", "x0placeholder", route).lstrip("^").rstrip("$")
            for method in WRITE_METHODS:
                if hasattr(view_class, method):
                    found.append((pattern.name, method, path))

    walk(get_resolver().url_patterns, "")
    return sorted(set(found))


TRADING_WRITES = [route for route in _write_routes() if route[0] not in OPEN_TO_VIEW_ONLY]


def test_the_walk_finds_the_trading_writes():
    names = {name for name, _, _ in TRADING_WRITES}
    assert {"orders", "order-detail", "orders-bulk", "brokers-connect", "brokers-detail", "strategies"} <= names
    assert {"rms-config", "positions-squareoff", "strategy-start", "strategy-webhook-rotate"} <= names


@pytest.mark.parametrize(("name", "method", "path"), TRADING_WRITES, ids=[f"{m} {n}" for n, m, _ in TRADING_WRITES])
def test_a_view_only_user_cannot_make_a_trading_write(name, method, path):
    viewer = client_for(UserFactory(role=Role.USER))

    response = getattr(viewer, method)(path, {}, format="json")

    assert_error(response, 403, "PERMISSION_DENIED")


def test_a_view_only_user_cannot_disconnect_their_broker_account():
    viewer = UserFactory(role=Role.USER)
    account = BrokerAccount.objects.create(owner=viewer, broker="paper", label="Practice", status="connected")

    assert_error(client_for(viewer).delete(f"/api/brokers/{account.pk}"), 403, "PERMISSION_DENIED")

    account.refresh_from_db()
    assert account.deleted_at is None and account.status == "connected"


def test_a_view_only_user_may_still_look_after_their_own_profile():
    viewer = UserFactory(role=Role.USER)
    client = client_for(viewer)

    response = client.patch(f"/api/users/{viewer.pk}", {"name": "Still Here"}, format="json")

    assert response.status_code == 200, response.json()
    assert client.post("/api/notifications/read-all", {}, format="json").status_code == 200
