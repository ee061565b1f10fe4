"""What a plan lets a user do, at every gate: broker accounts, live trading (new exposure only: exits always go out),
running strategies, WebSocket symbols; what GET /api/users/me says about it; and that a change of subscription is
seen at once, not after the entitlements cache expires."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import User
from accounts.tests.factories import AdminFactory, UserFactory
from algoterm.asgi import application
from algoterm.sandbox.simulators.kite import KiteSimulator
from algoterm.testing import assert_error, client_for
from billing.models import Plan, Subscription
from billing.selectors import entitlements_forget
from billing.tests.conftest import deliver_all
from brokers.models import BrokerAccount, SimOrder, Venue
from brokers.prices import quote_at
from brokers.tests.conftest import serving
from brokers.tests.test_api import KITE_KEY, KITE_SECRET, connect_zerodha
from marketdata.quotes import quotes_put
from orders.models import Order, OrderSource, Position
from orders.tests.factories import EQUITY, paper_account, standard_instruments
from strategies.models import Strategy, StrategyStatus

CONNECT = "/api/brokers/connect"
ME = "/api/users/me"


def plans_set(code: str, **limits) -> None:
    """An operator changes a plan's limits, and the minute that users' entitlements are cached for passes."""
    assert Plan.objects.filter(code=code).update(**limits) == 1
    for user_id in User.objects.values_list("pk", flat=True):
        entitlements_forget(user_id=user_id)


def at_kite() -> int:
    return SimOrder.objects.filter(account__venue=Venue.KITE).count()


@pytest.fixture
def plans(db) -> None:
    """The plans as the data migration makes them (a transactional test's flush removes them for the next one)."""
    for plan in importlib.import_module("billing.migrations.0002_plans").PLANS:
        Plan.objects.update_or_create(code=plan["code"], defaults=plan)


@pytest.fixture
def instruments(db) -> None:
    standard_instruments()


@pytest.fixture
def paper(trader, instruments) -> BrokerAccount:
    return paper_account(trader)


@pytest.fixture
def publish_quote(db):
    from brokers.prices import quote_publish

    def publish(symbol: str, price) -> int:
        return quote_publish(quote_at(symbol, price, depth=1000))

    return publish


@pytest.fixture
def eager_tasks() -> Iterator[None]:
    """Follow-up tasks run inline after commit, as in the order tests."""
    from algoterm.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def kite(settings) -> Iterator[KiteSimulator]:
    """Zerodha's API (the Kite simulator) for the real kiteconnect SDK; no postbacks."""
    settings.RMS_FUNDS_CHECK = False  # every request that reaches Kite is then an order
    app = KiteSimulator()
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:1"
    app.register_app(KITE_KEY, KITE_SECRET, "http://127.0.0.1:1/api/brokers/callback/zerodha")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        settings.KITE_LOGIN_URL = f"{server.url}/connect/login"
        yield app


def connect_paper(client, label="Paper"):
    return client.post(CONNECT, {"broker": "paper", "label": label}, format="json")


def lapse(client) -> None:
    """Take the trial and cancel it: the user had a plan and has none now."""
    assert client.post("/api/subscriptions/start", {"plan": "trial"}, format="json").status_code == 201
    assert client.post("/api/subscriptions/cancel").json()["status"] == "cancelled"
    assert client.get(ME).json()["entitlements"]["basis"] == "lapsed"


def subscribe(client, razorpay, plan="monthly") -> str:
    """Start a paid plan and pay in Checkout; returns Razorpay's subscription id."""
    started = client.post("/api/subscriptions/start", {"plan": plan}, format="json")
    assert started.status_code == 201, started.json()
    razorpay_id = started.json()["checkout"]["subscription_id"]
    verified = client.post("/api/subscriptions/verify", razorpay.checkout(razorpay_id), format="json")
    assert verified.json()["status"] == "active"
    return razorpay_id


# --- broker accounts ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_plan_caps_broker_accounts(trader, trader_client, kite):
    plans_set("trial", max_broker_accounts=2)
    first, second = connect_paper(trader_client, "One"), connect_paper(trader_client, "Two")
    assert first.status_code == second.status_code == 201

    refused = assert_error(connect_paper(trader_client, "Three"), 403, "PLAN_REQUIRED")
    assert "2" in refused["detail"]
    # An OAuth broker is refused before any login URL is made.
    assert_error(
        trader_client.post(
            CONNECT,
            {"broker": "zerodha", "credentials": {"api_key": KITE_KEY, "api_secret": KITE_SECRET}},
            format="json",
        ),
        403,
        "PLAN_REQUIRED",
    )
    assert BrokerAccount.objects.filter(owner=trader).count() == 2

    # Logging in again to an account the user has is not a new account.
    account_id = first.json()["account"]["id"]
    assert trader_client.post(f"/api/brokers/{account_id}/refresh", {}, format="json").status_code == 200
    # Removing one frees its place.
    assert trader_client.delete(f"/api/brokers/{account_id}").status_code == 204
    assert connect_paper(trader_client, "Three").status_code == 201
    assert_error(connect_paper(trader_client, "Four"), 403, "PLAN_REQUIRED")
    # Other users have their own count.
    assert connect_paper(client_for(UserFactory())).status_code == 201


@pytest.mark.django_db
def test_a_paid_plans_broker_accounts_apply_once_it_is_active(trader_client, razorpay):
    plans_set("trial", max_broker_accounts=1)
    plans_set("monthly", max_broker_accounts=3)
    assert connect_paper(trader_client).status_code == 201
    assert_error(connect_paper(trader_client), 403, "PLAN_REQUIRED")

    started = trader_client.post("/api/subscriptions/start", {"plan": "monthly"}, format="json").json()
    assert_error(connect_paper(trader_client), 403, "PLAN_REQUIRED")  # not paid yet: still the trial's limit
    razorpay.checkout(started["checkout"]["subscription_id"])
    deliver_all(APIClient(), razorpay)  # the webhooks make it active

    assert connect_paper(trader_client).status_code == 201
    assert connect_paper(trader_client).status_code == 201
    assert_error(connect_paper(trader_client), 403, "PLAN_REQUIRED")
    assert trader_client.get(ME).json()["entitlements"]["max_broker_accounts"] == 3


# --- live trading ---------------------------------------------------------------------------------------------------


def place(client, account_id: str, side: str, quantity: int, **fields):
    body = {
        "account_id": account_id,
        "symbol": EQUITY,
        "side": side,
        "quantity": quantity,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    return client.post("/api/orders", body, format="json")


@pytest.mark.django_db(transaction=True)
def test_a_lapsed_user_cannot_open_live_positions_but_can_always_close_them(
    plans, trader, trader_client, kite, instruments, publish_quote, eager_tasks
):
    account_id = connect_zerodha(trader_client)[0]["id"]
    publish_quote(EQUITY, "1500")
    opened = place(trader_client, account_id, "BUY", 10)  # never subscribed: the trial's rights, live included
    assert opened.status_code == 201, opened.json()
    assert Position.objects.get(account_id=account_id, symbol=EQUITY).quantity == 10
    lapse(trader_client)
    orders, sent, served = Order.objects.count(), at_kite(), kite.requests_served

    buy = assert_error(place(trader_client, account_id, "BUY", 5), 403, "PLAN_REQUIRED")
    flip = place(trader_client, account_id, "SELL", 15)  # closes 10 and opens a short of 5: new exposure
    limit_buy = place(trader_client, account_id, "BUY", 1, order_type="LIMIT", price=1400)

    assert "subscribe" in buy["detail"].lower()
    assert_error(flip, 403, "PLAN_REQUIRED")
    assert_error(limit_buy, 403, "PLAN_REQUIRED")
    assert (Order.objects.count(), at_kite(), kite.requests_served) == (orders, sent, served)

    # Reducing the live position still goes out to Zerodha.
    exit_part = place(trader_client, account_id, "SELL", 4)
    assert exit_part.status_code == 201, exit_part.json()
    assert exit_part.json()["status"] == "FILLED"
    assert at_kite() == sent + 1
    assert Position.objects.get(account_id=account_id, symbol=EQUITY).quantity == 6

    # Paper trading needs no plan.
    paper_id = connect_paper(trader_client).json()["account"]["id"]
    on_paper = place(trader_client, paper_id, "BUY", 5)
    assert on_paper.status_code == 201, on_paper.json()
    assert on_paper.json()["status"] == "FILLED"

    # The RMS squares off everything, live included.
    squared = trader_client.post("/api/rms/squareoff", {}, format="json")
    assert squared.status_code == 200, squared.json()
    assert squared.json()["failed"] == []
    placed = {order["account_id"]: order for order in squared.json()["placed"]}
    assert (placed[account_id]["side"], placed[account_id]["quantity"]) == ("SELL", 6)
    assert Order.objects.get(pk=placed[account_id]["id"]).source == OrderSource.RMS
    assert at_kite() == sent + 2
    assert Position.objects.get(account_id=account_id, symbol=EQUITY).quantity == 0


# --- running strategies ---------------------------------------------------------------------------------------------


def strategy(client, account_id: str, name: str) -> str:
    body = {"name": name, "kind": "webhook", "exit_time": "15:15", "accounts": [{"account_id": account_id}]}
    response = client.post("/api/strategies", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def start(client, strategy_id: str, mode: str = "paper"):
    return client.post(f"/api/strategies/{strategy_id}/start", {"mode": mode}, format="json")


@pytest.mark.django_db
def test_the_plan_caps_running_strategies(trader, trader_client, paper):
    plans_set("trial", max_running_strategies=2)
    first, second, third = (strategy(trader_client, paper.pk, name) for name in ("One", "Two", "Three"))
    assert start(trader_client, first).status_code == 201
    assert start(trader_client, second).status_code == 201

    refused = assert_error(start(trader_client, third), 403, "PLAN_REQUIRED")

    assert "2 running strategies" in refused["detail"]
    assert Strategy.objects.get(pk=third).status != StrategyStatus.RUNNING
    assert not Strategy.objects.get(pk=third).runs.exists()
    assert not PeriodicTask.objects.filter(name__startswith=f"strategy {third} ").exists()
    # Stopping one frees its place.
    assert trader_client.post(f"/api/strategies/{first}/stop", {}, format="json").status_code == 200
    assert start(trader_client, third).status_code == 201
    assert_error(start(trader_client, first), 403, "PLAN_REQUIRED")


@pytest.mark.django_db
def test_a_lapsed_user_cannot_start_strategies_but_can_stop_them(trader, trader_client, paper, kite):
    live_account = connect_zerodha(trader_client)[0]["id"]
    live = strategy(trader_client, live_account, "Live")
    on_paper = strategy(trader_client, paper.pk, "Paper")
    assert start(trader_client, live, "live").status_code == 201  # never subscribed: the trial allows live
    assert trader_client.post(f"/api/strategies/{live}/stop", {}, format="json").status_code == 200
    assert start(trader_client, on_paper).status_code == 201
    lapse(trader_client)

    refused = assert_error(start(trader_client, live, "live"), 403, "PLAN_REQUIRED")
    assert "live trading" in refused["detail"].lower()
    assert Strategy.objects.get(pk=live).status == StrategyStatus.STOPPED
    # No running strategies either, paper included; the one running can still be stopped.
    assert trader_client.post(f"/api/strategies/{on_paper}/stop", {}, format="json").status_code == 200
    assert_error(start(trader_client, on_paper), 403, "PLAN_REQUIRED")


@pytest.mark.django_db
def test_live_mode_needs_a_plan_with_live_trading(trader_client, paper, kite):
    plans_set("trial", live_trading=False)
    live = strategy(trader_client, connect_zerodha(trader_client)[0]["id"], "Live")

    assert_error(start(trader_client, live, "live"), 403, "PLAN_REQUIRED")
    assert start(trader_client, strategy(trader_client, paper.pk, "Paper")).status_code == 201


# --- WebSocket symbols ----------------------------------------------------------------------------------------------


SYMBOLS = ["NSE:INFY", "NSE:TCS", "NSE:SBIN", "NSE:NIFTY 50"]


@pytest.fixture
async def quoted(plans):
    def prepare():
        quotes_put([quote_at(symbol, "1000") for symbol in SYMBOLS])

    await database_sync_to_async(prepare)()
    yield
    await database_sync_to_async(connections.close_all)()


async def market_socket(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/market-data?token={AccessToken.for_user(user)}")
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=3))["t"] == "server_ready"
    return communicator


async def subscribe_symbols(communicator, symbols, mode="ltp") -> dict:
    await communicator.send_json_to(
        {"t": "subscription", "p": {"action": "subscribe", "symbols": symbols, "mode": mode}}
    )
    return await communicator.receive_json_from(timeout=3)


@pytest.mark.django_db(transaction=True)
async def test_websocket_symbols_are_capped_by_the_plan(quoted, settings):
    settings.WS_MAX_SYMBOLS = 100
    await database_sync_to_async(plans_set)("trial", websocket_symbols=2)
    user = await database_sync_to_async(UserFactory)()
    communicator = await market_socket(user)
    try:
        too_many = await subscribe_symbols(communicator, SYMBOLS[:3])
        assert too_many["t"] == "error" and too_many["p"]["code"] == "PLAN_REQUIRED"
        assert too_many["p"]["recoverable"] is True and "2" in too_many["p"]["message"]

        assert (await subscribe_symbols(communicator, SYMBOLS[:2]))["t"] == "snapshot"
        one_more = await subscribe_symbols(communicator, SYMBOLS[2:3])
        assert (one_more["t"], one_more["p"]["code"]) == ("error", "PLAN_REQUIRED")
        # The connection stays usable: a mode change is not a new symbol.
        changed = await subscribe_symbols(communicator, SYMBOLS[:1], mode="quote")
        assert changed["t"] == "snapshot" and "bid" in changed["p"]["quotes"]["NSE:INFY"]
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_websocket_symbols_beyond_a_small_plan_for_admins_and_the_servers_own_limit(quoted, settings):
    settings.WS_MAX_SYMBOLS = 3
    await database_sync_to_async(plans_set)("trial", websocket_symbols=2)
    admin = await database_sync_to_async(AdminFactory)()
    communicator = await market_socket(admin)
    try:
        assert (await subscribe_symbols(communicator, SYMBOLS[:3]))["t"] == "snapshot"  # no plan limit for admins
        over = await subscribe_symbols(communicator, SYMBOLS[3:])
        assert (over["t"], over["p"]["code"]) == ("error", "VALIDATION_ERROR")  # the server's limit, not a plan's
    finally:
        await communicator.disconnect()

    await database_sync_to_async(plans_set)("trial", websocket_symbols=50)  # above the server's limit
    communicator = await market_socket(await database_sync_to_async(UserFactory)())
    try:
        over = await subscribe_symbols(communicator, SYMBOLS)
        assert (over["t"], over["p"]["code"]) == ("error", "VALIDATION_ERROR")
    finally:
        await communicator.disconnect()


# --- GET /api/users/me ----------------------------------------------------------------------------------------------


TRIAL_LIMITS = {
    "max_broker_accounts": 3,
    "max_running_strategies": 3,
    "max_active_backtests": 2,
    "live_trading": True,
    "api_requests_per_minute": 300,
    "websocket_symbols": 100,
}


@pytest.mark.django_db
def test_me_for_a_user_who_never_subscribed(trader_client):
    me = trader_client.get(ME).json()

    assert me["subscription"] is None
    assert me["entitlements"] == {"plan": "trial", "basis": "trial", **TRIAL_LIMITS}


@pytest.mark.django_db
def test_me_on_the_trial(trader_client):
    started = trader_client.post("/api/subscriptions/start", {"plan": "trial"}, format="json").json()["subscription"]

    me = trader_client.get(ME).json()

    assert me["subscription"]["id"] == started["id"]
    assert (me["subscription"]["plan"], me["subscription"]["status"]) == ("trial", "active")
    assert me["subscription"]["current_end"] is not None
    assert me["entitlements"] == {"plan": "trial", "basis": "trial", **TRIAL_LIMITS}


@pytest.mark.django_db
def test_me_on_a_paid_plan(trader_client, razorpay):
    subscribe(trader_client, razorpay, "yearly")

    me = trader_client.get(ME).json()

    assert (me["subscription"]["plan"], me["subscription"]["status"]) == ("yearly", "active")
    assert me["subscription"]["current_end"] > me["subscription"]["current_start"]
    assert me["entitlements"] == {
        "plan": "yearly",
        "basis": "subscription",
        "max_broker_accounts": 10,
        "max_running_strategies": 25,
        "max_active_backtests": 5,
        "live_trading": True,
        "api_requests_per_minute": 1200,
        "websocket_symbols": 500,
    }


@pytest.mark.django_db
def test_me_after_the_trial_lapsed(trader, trader_client):
    lapse(trader_client)

    me = trader_client.get(ME).json()

    assert me["subscription"] is None
    assert me["entitlements"] == {
        **TRIAL_LIMITS,
        "plan": "",
        "basis": "lapsed",
        "live_trading": False,
        "max_running_strategies": 0,
    }


@pytest.mark.django_db
def test_me_when_the_trial_ran_out_before_the_expiry_job(trader, trader_client):
    from datetime import timedelta

    from django.utils import timezone

    trader_client.post("/api/subscriptions/start", {"plan": "trial"}, format="json")
    Subscription.objects.filter(user=trader).update(current_end=timezone.now() - timedelta(seconds=1))

    me = trader_client.get(ME).json()

    assert me["subscription"] is None and me["entitlements"]["basis"] == "lapsed"


@pytest.mark.django_db
def test_me_for_an_admin(admin_client):
    me = admin_client.get(ME).json()

    assert me["subscription"] is None
    assert me["entitlements"] == {
        "plan": "",
        "basis": "operator",
        "max_broker_accounts": None,
        "max_running_strategies": None,
        "max_active_backtests": None,
        "live_trading": True,
        "api_requests_per_minute": None,
        "websocket_symbols": None,
    }


# --- the entitlements cache -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_webhook_that_halts_the_subscription_changes_me_at_once(trader_client, paper, razorpay):
    razorpay_id = subscribe(trader_client, razorpay)
    deliver_all(APIClient(), razorpay)
    razorpay.fail_payment(razorpay_id)
    deliver_all(APIClient(), razorpay)
    before = trader_client.get(ME).json()  # read (and cached) while pending: the plan still applies
    assert (before["entitlements"]["basis"], before["entitlements"]["live_trading"]) == ("subscription", True)
    assert start(trader_client, strategy(trader_client, paper.pk, "Running")).status_code == 201

    razorpay.fail_payment(razorpay_id)
    assert [outcome["outcome"] for outcome in deliver_all(APIClient(), razorpay)] == ["applied", "applied"]

    after = trader_client.get(ME).json()
    assert after["subscription"] is None
    assert (after["entitlements"]["basis"], after["entitlements"]["live_trading"]) == ("lapsed", False)
    assert_error(start(trader_client, strategy(trader_client, paper.pk, "Another")), 403, "PLAN_REQUIRED")


@pytest.mark.django_db
def test_starting_and_cancelling_the_trial_changes_me_at_once(trader_client):
    assert trader_client.get(ME).json()["subscription"] is None  # cached: no subscription

    trader_client.post("/api/subscriptions/start", {"plan": "trial"}, format="json")
    assert trader_client.get(ME).json()["subscription"]["plan"] == "trial"

    trader_client.post("/api/subscriptions/cancel")
    assert trader_client.get(ME).json()["entitlements"]["basis"] == "lapsed"
