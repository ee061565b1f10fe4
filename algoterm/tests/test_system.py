"""System control: the platform kill switch on every order path (exits still go out), platform paper mode routing
real accounts to the paper broker, and the admin routes that drive them."""

# ruff: noqa: F811  (the tests take the order and strategy tests' fixtures, imported below, as arguments)

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings as django_settings

from accounts.models import AuditEvent, Notification
from accounts.tests.factories import AdminFactory
from algoterm.console import system
from algoterm.models import PlatformMode, PlatformState
from algoterm.sandbox.simulators.kite import KiteSimulator
from algoterm.testing import assert_error, assert_requires_auth, client_for
from brokers.gateway import adapter_for
from brokers.models import BrokerAccount, SimAccount, SimOrder, Venue
from brokers.tests.conftest import serving
from brokers.tests.test_api import KITE_KEY, KITE_SECRET, connect_zerodha
from orders.models import Order, OrderSource, OrderStatus, Position
from orders.tests.conftest import eager_tasks, instruments, market, paper, publish_quote  # noqa: F401
from orders.tests.factories import EQUITY
from rms import services as rms_services
from strategies import services as strategy_services
from strategies.models import Signal, SignalStatus
from strategies.tests.conftest import day, nifty  # noqa: F401
from strategies.tests.factories import straddle_body

IST = ZoneInfo("Asia/Kolkata")
SBIN = "NSE:SBIN"
STATUS, MODE, START, STOP = "/api/system/status", "/api/system/mode", "/api/system/start", "/api/system/stop"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def place(client, account, *, side="BUY", quantity=10, symbol=EQUITY, **fields):
    body = {
        "account_id": account.pk,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    return client.post("/api/orders", body, format="json")


def held(account, symbol: str = EQUITY) -> int:
    position = Position.objects.filter(account=account, symbol=symbol).first()
    return position.quantity if position is not None else 0


def stop(admin_client, reason: str = "exchange glitch") -> dict:
    response = admin_client.post(STOP, {"reason": reason}, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def actions() -> list[str]:
    return list(AuditEvent.objects.filter(kind="system").order_by("occurred_at", "id").values_list("action", flat=True))


# --- routes ------------------------------------------------------------------------------------------------------

ROUTES = [
    ("get", STATUS, None),
    ("post", MODE, {"mode": "paper"}),
    ("post", START, {}),
    ("post", STOP, {"reason": "maintenance"}),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "url", "body"), ROUTES)
def test_every_system_route_is_for_admins_only(trader_client, method, url, body):
    assert_requires_auth(method.upper(), url, body)
    call = getattr(trader_client, method)
    response = call(url, body, format="json") if body is not None else call(url)

    assert_error(response, 403, "PERMISSION_DENIED")
    state = system.platform_state()
    assert (state.mode, state.trading_halted) == (PlatformMode.LIVE, False)
    assert actions() == []


@pytest.mark.django_db
def test_status_shows_mode_kill_switch_and_components(admin_client, admin_user):
    response = admin_client.get(STATUS)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["mode"], body["trading_halted"], body["halt_reason"], body["changed_by"]) == ("live", False, "", None)
    assert (body["live_orders_at_brokers"], body["paper_routed_live_orders"]) == (0, 0)
    assert {"database", "redis", "workers", "scheduler"} <= set(body["components"])
    assert body["components"]["database"]["status"] == "up"

    stop(admin_client, "circuit breaker at NSE")
    body = admin_client.get(STATUS).json()
    assert (body["trading_halted"], body["halt_reason"], body["changed_by"]) == (
        True,
        "circuit breaker at NSE",
        admin_user.pk,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        (MODE, {"mode": "demo"}, "mode"),
        (MODE, {}, "mode"),
        (MODE, {"mode": "paper", "force": "maybe"}, "force"),
        (MODE, {"mode": "paper", "colour": "red"}, "colour"),
        (STOP, {}, "reason"),
        (STOP, {"reason": ""}, "reason"),
        (STOP, {"reason": "x" * 301}, "reason"),
        (STOP, {"reason": "x", "until": "10:00"}, "until"),
        (START, {"force": True}, "force"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(admin_client, url, body, field):
    response = admin_client.post(url, body, format="json")

    errors = assert_error(response, 400, "VALIDATION_ERROR")["errors"]
    assert field in errors, errors
    state = system.platform_state()
    assert (state.mode, state.trading_halted) == (PlatformMode.LIVE, False)
    assert actions() == []


@pytest.mark.django_db
def test_stop_and_start_are_audited_and_other_admins_told(admin_client, admin_user):
    other_admin = AdminFactory()

    body = stop(admin_client, "exchange glitch")

    assert (body["trading_halted"], body["halt_reason"], body["changed_by"]) == (True, "exchange glitch", admin_user.pk)
    event = AuditEvent.objects.get(action="system.trading_stop")
    assert (event.actor, event.details) == (admin_user, {"reason": "exchange glitch"})
    assert Notification.objects.filter(user=other_admin, kind="system.control", level="warning").count() == 1
    assert not Notification.objects.filter(user=admin_user).exists()
    # Stopping again changes nothing and records nothing.
    assert stop(admin_client, "again")["halt_reason"] == "exchange glitch"

    started = admin_client.post(START, {}, format="json")

    assert started.status_code == 200, started.json()
    assert (started.json()["trading_halted"], started.json()["halt_reason"]) == (False, "")
    assert admin_client.post(START).status_code == 200  # an empty body is fine; already running: nothing changes
    assert actions() == ["system.trading_stop", "system.trading_start"]
    assert AuditEvent.objects.get(action="system.trading_start").details == {"halted_for": "exchange glitch"}
    assert PlatformState.objects.get(pk=1).trading_halted is False


@pytest.mark.django_db
def test_the_state_is_cached_and_forgotten_at_once_on_change(admin_user, django_assert_num_queries):
    assert system.platform_state().trading_halted is False
    with django_assert_num_queries(0):
        assert system.platform_state().trading_halted is False

    system.trading_stop(actor=admin_user, reason="drill")

    assert system.platform_state().trading_halted is True  # not the copy cached a moment ago


# --- the kill switch on every order path -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_kill_switch_refuses_new_api_orders_but_exits_and_rms_square_offs_go_out(
    trader, trader_client, admin_client, admin_user, paper, market
):
    market(EQUITY, "1500")
    market(SBIN, "800")
    assert place(trader_client, paper, quantity=10).status_code == 201
    assert place(trader_client, paper, symbol=SBIN, quantity=5).status_code == 201
    stop(admin_client, "exchange glitch")
    orders, at_exchange = Order.objects.count(), SimOrder.objects.count()

    refused = assert_error(place(trader_client, paper, quantity=5), 422, "RISK_REJECTED")
    short = assert_error(place(trader_client, paper, side="SELL", quantity=15), 422, "RISK_REJECTED")  # flips: new

    assert refused["reason"] == short["reason"] == "PLATFORM_HALTED"
    assert "exchange glitch" in refused["detail"]
    assert (Order.objects.count(), SimOrder.objects.count()) == (orders, at_exchange)  # nothing saved, nothing sent
    # The trader's own exit goes out.
    exit_part = place(trader_client, paper, side="SELL", quantity=4)
    assert exit_part.status_code == 201, exit_part.json()
    assert exit_part.json()["status"] == "FILLED"
    assert held(paper) == 6
    # So does the RMS's square-off of everything.
    result = rms_services.user_square_off(actor=admin_user, user=trader)
    assert result.failed == []
    assert sorted((o.symbol, o.side, o.quantity, o.source) for o in result.placed) == [
        (EQUITY, "SELL", 6, OrderSource.RMS),
        (SBIN, "SELL", 5, OrderSource.RMS),
    ]
    assert (held(paper), held(paper, SBIN)) == (0, 0)

    assert admin_client.post(START, {}, format="json").status_code == 200
    resumed = place(trader_client, paper, quantity=5)
    assert resumed.status_code == 201, resumed.json()
    assert held(paper) == 5


@pytest.mark.django_db
def test_the_kill_switch_lets_an_rms_breach_square_off_go_out(
    trader, trader_client, admin_client, admin_user, paper, market
):
    market(EQUITY, "1500")
    assert place(trader_client, paper, quantity=10).status_code == 201
    stop(admin_client)

    assert rms_services.user_halt(actor=admin_user, user=trader) is True

    [square_off] = Order.objects.filter(source=OrderSource.RMS)
    assert (square_off.side, square_off.quantity, square_off.status) == ("SELL", 10, OrderStatus.FILLED)
    assert held(paper) == 0


@pytest.mark.django_db
def test_the_kill_switch_refuses_every_leg_of_a_bulk_order(trader_client, admin_client, paper, market):
    market(EQUITY, "1500")
    market(SBIN, "800")
    stop(admin_client)
    legs = [
        {
            "account_id": paper.pk,
            "symbol": EQUITY,
            "side": "BUY",
            "quantity": 5,
            "order_type": "MARKET",
            "product": "MIS",
        },
        {
            "account_id": paper.pk,
            "symbol": SBIN,
            "side": "SELL",
            "quantity": 5,
            "order_type": "MARKET",
            "product": "MIS",
        },
    ]

    response = trader_client.post("/api/orders/bulk", {"legs": legs}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "failed"
    assert [(leg["status"], leg["error_code"]) for leg in body["legs"]] == [("failed", "RISK_REJECTED")] * 2
    assert all("platform-wide" in leg["detail"] for leg in body["legs"])
    assert not Order.objects.exists() and not SimOrder.objects.exists()


@pytest.mark.django_db
def test_the_kill_switch_fails_a_strategy_fire_with_the_reason(trader_client, admin_client, paper, nifty, day):
    created = trader_client.post("/api/strategies", straddle_body(paper), format="json")
    assert created.status_code == 201, created.json()
    strategy_id = created.json()["id"]
    started = trader_client.post(f"/api/strategies/{strategy_id}/start", {"mode": "paper"}, format="json")
    assert started.status_code == 201, started.json()
    stop(admin_client, "exchange glitch")

    fires = strategy_services.strategy_fire(
        strategy_id=strategy_id,
        run_id=started.json()["run"]["id"],
        action="entry",
        now=datetime.combine(day, time(9, 20), tzinfo=IST),
    )

    assert [fire.status for fire in fires] == ["failed", "failed"]
    for fire in fires:
        assert "RISK_REJECTED" in fire.detail and "platform-wide" in fire.detail, fire.detail
    assert not Order.objects.filter(strategy_ref=strategy_id).exists()
    assert not SimOrder.objects.exists()


@pytest.mark.django_db
def test_the_kill_switch_rejects_a_webhook_entry_but_not_its_exit(trader_client, admin_client, paper, market):
    import json

    from rest_framework.test import APIClient

    market(EQUITY, "1500")
    body = {"name": "Signals", "kind": "webhook", "exit_time": "15:15", "accounts": [{"account_id": paper.pk}]}
    strategy = trader_client.post("/api/strategies", body, format="json").json()
    assert (
        trader_client.post(f"/api/strategies/{strategy['id']}/start", {"mode": "paper"}, format="json").status_code
        == 201
    )

    def signal(action: str, alert_id: str, quantity: int | None = 10):
        payload = {"secret": strategy["webhook_secret"], "action": action, "symbol": EQUITY, "id": alert_id}
        if quantity is not None:
            payload["quantity"] = quantity
        return APIClient().post(
            f"/api/strategies/{strategy['id']}/webhook", data=json.dumps(payload), content_type="application/json"
        )

    assert signal("BUY", "a1").status_code == 202
    stop(admin_client, "exchange glitch")

    refused = assert_error(signal("BUY", "a2"), 422, "ORDER_REJECTED")

    rejected = Signal.objects.get(pk=refused["signal_id"])
    assert (rejected.status, rejected.reason, rejected.order_ids) == (SignalStatus.REJECTED, "RISK_REJECTED", [])
    assert "platform-wide" in rejected.detail
    assert Order.objects.filter(strategy_ref=strategy["id"]).count() == 1
    assert held(paper) == 10
    # Closing the strategy's own position still goes out.
    closed = signal("SELL", "a3", quantity=None)
    assert closed.status_code == 202, closed.json()
    assert held(paper) == 0


# --- platform paper mode -----------------------------------------------------------------------------------------


@pytest.fixture
def kite(settings) -> Iterator[KiteSimulator]:
    """Zerodha's API (the Kite simulator) for the real kiteconnect SDK; no postbacks."""
    settings.RMS_FUNDS_CHECK = False  # every request that reaches Kite is then an order call
    app = KiteSimulator()
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:1"
    app.register_app(KITE_KEY, KITE_SECRET, "http://127.0.0.1:1/api/brokers/callback/zerodha")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        settings.KITE_LOGIN_URL = f"{server.url}/connect/login"
        yield app


def at_kite() -> int:
    return SimOrder.objects.filter(account__venue=Venue.KITE).count()


def set_mode(client, mode: str, **fields):
    return client.post(MODE, {"mode": mode, **fields}, format="json")


@pytest.mark.django_db(transaction=True)
def test_paper_mode_sends_a_zerodha_accounts_orders_to_the_paper_broker(
    trader, trader_client, kite, instruments, publish_quote, eager_tasks
):
    admin = AdminFactory()
    admin_client = client_for(admin)
    account = BrokerAccount.objects.get(pk=connect_zerodha(trader_client)[0]["id"])
    publish_quote(EQUITY, "1500")
    # A limit order resting at Zerodha keeps the platform from going paper: it could no longer be tracked.
    resting = place(trader_client, account, quantity=5, order_type="LIMIT", price=1400)
    assert resting.status_code == 201 and resting.json()["status"] == "OPEN", resting.json()
    assert at_kite() == 1

    refused = assert_error(set_mode(admin_client, "paper"), 409, "INVALID_STATE")

    assert refused["order_ids"] == [resting.json()["id"]] and "force" in refused["detail"]
    assert PlatformState.objects.get(pk=1).mode == PlatformMode.LIVE
    assert trader_client.delete(f"/api/orders/{resting.json()['id']}").json()["status"] == "CANCELLED"
    switched = set_mode(admin_client, "paper")
    assert switched.status_code == 200, switched.json()
    assert switched.json()["mode"] == "paper"
    served, sent = kite.requests_served, at_kite()

    bought = place(trader_client, account, quantity=10)
    limit = place(trader_client, account, quantity=5, order_type="LIMIT", price=1400)

    assert bought.status_code == 201, bought.json()
    assert bought.json()["status"] == "FILLED"
    assert limit.status_code == 201 and limit.json()["status"] == "OPEN", limit.json()
    assert (kite.requests_served, at_kite()) == (served, sent)  # Zerodha never heard of them
    filled = SimOrder.objects.get(tag=Order.objects.get(pk=bought.json()["id"]).broker_tag)
    assert (filled.account.venue, filled.account.client_id) == (Venue.PAPER, account.pk)
    exchange_account = SimAccount.objects.get(venue=Venue.PAPER, client_id=account.pk)
    assert exchange_account.opening_balance == Decimal(django_settings.PAPER_OPENING_BALANCE)
    assert held(account) == 10
    # What the account's broker reports (positions, funds: what reconciliation and the RMS read) is the paper book.
    broker = adapter_for(account)
    assert [(p.symbol, p.quantity) for p in broker.positions()] == [(EQUITY, 10)]
    assert broker.funds().opening_balance == exchange_account.opening_balance
    assert (kite.requests_served, at_kite()) == (served, sent)

    # Back to live is refused while the paper-routed limit order is open, unless forced.
    refused = assert_error(set_mode(admin_client, "live"), 409, "INVALID_STATE")
    assert refused["order_ids"] == [limit.json()["id"]]
    assert PlatformState.objects.get(pk=1).mode == PlatformMode.PAPER
    forced = set_mode(admin_client, "live", force=True)
    assert forced.status_code == 200 and forced.json()["mode"] == "live", forced.json()

    # Live again: the next order goes to Zerodha.
    assert place(trader_client, account, quantity=1).status_code == 201
    assert at_kite() == sent + 1
    changes = list(AuditEvent.objects.filter(action="system.mode_set").order_by("occurred_at"))
    assert [(e.actor_id, e.details["to"], e.details["forced"]) for e in changes] == [
        (admin.pk, "paper", False),
        (admin.pk, "live", True),
    ]
    assert changes[1].details["stranded_orders"] == [limit.json()["id"]]
