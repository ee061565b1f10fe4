"""/ws/ops, the operators' socket: a real web server (uvicorn, in a thread of the test process, on the test database)
over the channel layer (Redis when REDIS_URL is set), driven by a real WebSocket client; the changes it reports are
made through the real HTTP API of the same server where there is one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, timedelta
from decimal import Decimal

import pytest
import uvicorn
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections
from rest_framework_simplejwt.tokens import AccessToken
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm import config, realtime
from algoterm.console import ops_socket
from algoterm.realtime import OPS_TOPICS
from algoterm.tasks import publish_order_rates
from algoterm.testing import client_for
from algoterm.tests.test_serve import free_port, http
from brokers.prices import quote_at, quote_publish
from orders.models import Order, OrderStatus
from orders.tests.factories import EQUITY, paper_account, standard_instruments
from rms.models import RmsEvent
from rms.services import Reason, breach_handle
from strategies.models import Signal, SignalStatus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- the server and the client -----------------------------------------------------------------------------------


@contextlib.contextmanager
def web_server() -> Iterator[str]:
    """uvicorn serving algoterm.asgi on a free port, on a thread of its own with its own event loop; yields its base
    URL. Embedded, the in-memory channel layer lives on that loop, so the server registers it as `serve` does."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config("algoterm.asgi:application", host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        if settings.EMBEDDED:
            realtime.register_server_loop(loops[0])
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="ops-web", daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        assert thread.is_alive() and time.monotonic() - started < 20, "the web server never started"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # The server's database work runs on its loop's sync thread; that connection must go before the test
        # database can be flushed or dropped.
        asyncio.run_coroutine_threadsafe(database_sync_to_async(connections.close_all)(), loops[0]).result(10)
        # Forced: a closed socket's channel-layer receive loop would otherwise hold the shutdown for its 5 s read.
        server.should_exit = server.force_exit = True
        thread.join(timeout=10)
        if settings.EMBEDDED:
            realtime.register_server_loop(None)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[str]:
    with web_server() as address:
        yield address


def token_for(user) -> str:
    return str(AccessToken.for_user(user))


@pytest.fixture
def operator(admin_user, server) -> ClientConnection:
    """An admin's /ws/ops connection, past its server_ready."""
    with ws_connect(f"ws://{server}/ws/ops?token={token_for(admin_user)}", open_timeout=10) as socket_:
        ready = receive(socket_)
        assert ready["t"] == "server_ready" and ready["p"]["connection_id"], ready
        yield socket_


def receive(socket_: ClientConnection, timeout: float = 5) -> dict:
    return json.loads(socket_.recv(timeout=timeout))


def expect(socket_: ClientConnection, message_type: str, timeout: float = 5) -> dict:
    message = receive(socket_, timeout)
    assert message["t"] == message_type, message
    return message["p"]


def send(socket_: ClientConnection, message_type: str, payload: dict) -> None:
    socket_.send(json.dumps({"t": message_type, "p": payload}))


def subscribe(socket_: ClientConnection, *topics: str) -> dict:
    """Subscribes and answers the snapshot's topics."""
    send(socket_, "subscription", {"action": "subscribe", "topics": list(topics)})
    return expect(socket_, "snapshot")["topics"]


def nothing_arrives(socket_: ClientConnection, seconds: float = 0.5) -> bool:
    with contextlib.suppress(TimeoutError):
        socket_.recv(timeout=seconds)
        return False
    return True


def api(server: str, method: str, path: str, user, body: dict | None = None) -> dict:
    status, answer = http(method, f"http://{server}{path}", body, token=token_for(user))
    assert status < 300, (status, answer)
    return answer


# --- who may connect ---------------------------------------------------------------------------------------------


def closed_with(socket_: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        socket_.recv(timeout=5)
    return closed.value.rcvd.code


@pytest.mark.parametrize("query", ["", "?token=garbage"])
def test_without_a_valid_token_the_socket_gets_an_error_and_4401(server, query):
    with ws_connect(f"ws://{server}/ws/ops{query}", open_timeout=10) as socket_:
        error = expect(socket_, "error")
        assert error["recoverable"] is False and error["code"] in ("AUTH_REQUIRED", "AUTH_INVALID")
        assert closed_with(socket_) == 4401


@pytest.mark.parametrize("role", [Role.TRADER, Role.USER])
def test_a_non_admin_gets_permission_denied_and_4403(server, role):
    user = UserFactory(role=role)
    with ws_connect(f"ws://{server}/ws/ops?token={token_for(user)}", open_timeout=10) as socket_:
        error = expect(socket_, "error")
        assert (error["code"], error["recoverable"]) == ("PERMISSION_DENIED", False)
        assert closed_with(socket_) == 4403


def test_a_renewed_token_of_a_user_no_longer_admin_ends_the_socket(operator, admin_user):
    admin_user.role = Role.TRADER
    admin_user.save(update_fields=["role"])

    send(operator, "auth", {"token": token_for(admin_user)})

    expect(operator, "auth_renewed")  # the token itself is good ...
    assert expect(operator, "error")["code"] == "PERMISSION_DENIED"  # ... the role no longer is
    assert closed_with(operator) == 4403


def test_an_admin_demoted_through_the_api_loses_the_operators_socket_at_once(operator, admin_user, server):
    other_admin = UserFactory(role=Role.ADMIN)
    subscribe(operator, "signals")

    status, _ = http(
        "PATCH", f"http://{server}/api/users/{admin_user.pk}", {"role": "trader"}, token=token_for(other_admin)
    )

    assert status == 200
    error = expect(operator, "error")
    assert (error["code"], error["recoverable"]) == ("PERMISSION_DENIED", False)
    assert closed_with(operator) == 4403


# --- subscriptions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "subscribe", "topics": ["system", "gossip"]},
        {"action": "watch", "topics": ["system"]},
        {"action": "subscribe", "topics": []},
        {"action": "subscribe", "topics": "system"},
    ],
)
def test_a_bad_subscription_is_a_recoverable_validation_error_and_the_socket_stays(operator, payload):
    send(operator, "subscription", payload)

    error = expect(operator, "error")
    assert (error["code"], error["recoverable"]) == ("VALIDATION_ERROR", True)
    if payload["topics"] == ["system", "gossip"]:
        assert "gossip" in error["message"]
    send(operator, "request_snapshot", {})
    assert expect(operator, "snapshot") == {"topics": {}}  # nothing was subscribed
    send(operator, "ping", {})
    assert expect(operator, "pong")


def test_each_topic_answers_a_snapshot_of_its_current_state(operator, admin_user, trader):
    standard_instruments()
    account = paper_account(trader)
    config.config_put(actor=admin_user, name=config.RMS_DEFAULTS, data=config.config_get(name=config.RMS_DEFAULTS))
    breach_handle(user_id=trader.pk, reason=Reason.DAILY_LOSS_LIMIT_HIT, mtm=Decimal("-5000"))
    order = Order.objects.create(
        user=trader, account=account, symbol=EQUITY, side="BUY", quantity=1, order_type="MARKET", product="MIS"
    )
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.REJECTED)
    strategy_id, _ = _webhook_strategy(trader, account)
    signal = Signal.objects.create(strategy_id=strategy_id, user=trader, source="tradingview", status="rejected")

    system = subscribe(operator, "system")
    assert list(system) == ["system"]
    assert system["system"]["mode"] == "live" and system["system"]["trading_halted"] is False
    assert system["system"]["components"]["database"]["status"] == "up"

    configuration = subscribe(operator, "config")["config"]
    assert set(configuration) == set(config.SECTIONS)
    assert (
        configuration["rms_defaults"]["version"] == 1 and configuration["rms_defaults"]["updated_by"] == admin_user.pk
    )
    assert configuration["holidays"] == {"version": 0, "stored": False, "updated_by": None, "updated_at": None}

    health = subscribe(operator, "health")["health"]
    assert health["database"]["state"] == "up" and health["database"]["required"] is True
    assert {"redis", "workers", "scheduler", "feed", "brokers"} <= set(health)

    assert subscribe(operator, "alerts") == {"alerts": []}

    [shown] = subscribe(operator, "signals")["signals"]
    assert (shown["id"], shown["status"], shown["user_id"]) == (signal.pk, "rejected", trader.pk)

    risk = subscribe(operator, "risk")["risk"]
    assert [(event["kind"], event["user_id"]) for event in risk] == [("square_off", trader.pk), ("breach", trader.pk)]
    assert risk[1]["reason"] == "DAILY_LOSS_LIMIT_HIT" and risk[1]["mtm"] == -5000

    orders = subscribe(operator, "orders")["orders"]
    assert orders["current"]["brokers"]["paper"] == {
        "placed": 1,
        "rejected": 1,
        "errored": 0,
        "rejection_rate": 1.0,
        "error_rate": 0.0,
    }
    assert orders["previous"]["brokers"]["paper"]["placed"] == 0
    assert set(orders["current"]["brokers"]) == {"paper", "zerodha", "dhan", "fyers"}

    # request_snapshot answers every subscribed topic at once
    send(operator, "request_snapshot", {})
    assert list(expect(operator, "snapshot")["topics"]) == list(OPS_TOPICS)


def test_a_registered_part_answers_its_topic(operator, monkeypatch):
    monkeypatch.setitem(ops_socket._snapshot_parts, "alerts", lambda: [{"id": "alt_1", "state": "raised"}])

    assert subscribe(operator, "alerts") == {"alerts": [{"id": "alt_1", "state": "raised"}]}
    with pytest.raises(ValueError):
        ops_socket.ops_snapshot_register("gossip", list)


# --- live messages, one per topic ----------------------------------------------------------------------------------


def test_stopping_and_starting_trading_through_the_api_reaches_subscribed_operators(operator, server, admin_user):
    subscribe(operator, "system")

    api(server, "POST", "/api/system/stop", admin_user, {"reason": "exchange glitch"})

    stopped = expect(operator, "system_event")
    assert stopped["event"] == "trading_stopped" and stopped["reason"] == "exchange glitch"
    assert stopped["trading_halted"] is True and stopped["actor"] == admin_user.pk
    assert stopped["actor_email"] == admin_user.email and stopped["at"]

    api(server, "POST", "/api/system/start", admin_user, {})
    started = expect(operator, "system_event")
    assert (started["event"], started["trading_halted"], started["halted_for"]) == (
        "trading_started",
        False,
        "exchange glitch",
    )

    api(server, "POST", "/api/system/mode", admin_user, {"mode": "paper"})
    changed = expect(operator, "system_event")
    assert (changed["event"], changed["from"], changed["to"], changed["mode"]) == (
        "mode_changed",
        "live",
        "paper",
        "paper",
    )


def test_a_process_restart_reaches_subscribed_operators(operator):
    from algoterm.management.commands.serve import operators_alert
    from algoterm.supervisor import ChildEvent, EventKind

    subscribe(operator, "system")
    event = ChildEvent(EventKind.RESTARTING, "worker", "worker exited with code 1; restarting in 2s", 2, delay=2.0)
    # As the supervisor calls it: on its alert thread, outside any transaction.
    alerting = threading.Thread(target=operators_alert, args=(event,))
    alerting.start()
    alerting.join(timeout=10)

    restarted = expect(operator, "system_event")
    assert restarted["event"] == "process_restart" and restarted["process"] == "worker"
    assert (restarted["supervisor_event"], restarted["restarts_in_window"], restarted["restart_in_seconds"]) == (
        "restarting",
        2,
        2.0,
    )
    assert restarted["actor"] is None and restarted["message"] == event.message


def test_saving_a_section_through_the_api_reaches_operators_with_its_diff(operator, server, admin_user):
    subscribe(operator, "config")
    data = {**config.config_get(name=config.RMS_DEFAULTS), "max_orders_per_day": 250}

    api(server, "PUT", f"/api/config/{config.RMS_DEFAULTS}", admin_user, {"data": data})

    change = expect(operator, "config_change")
    assert (change["section"], change["version"], change["via"]) == ("rms_defaults", 1, "put")
    assert (change["updated_by"], change["updated_by_email"]) == (admin_user.pk, admin_user.email)
    assert change["changes"] == {
        "max_orders_per_day": {"from": settings.RMS_DEFAULT_MAX_ORDERS_PER_DAY or None, "to": 250}
    }


def test_a_secret_looking_key_is_masked_in_the_diff(operator, server, admin_user, monkeypatch):
    section = config.Section(
        "broker_keys", "Test section.", lambda: {"api_key": "old-key", "region": "in"}, lambda data: {}
    )
    monkeypatch.setitem(config.SECTIONS, "broker_keys", section)
    subscribe(operator, "config")

    api(server, "PUT", "/api/config/broker_keys", admin_user, {"data": {"api_key": "new-key", "region": "eu"}})

    change = expect(operator, "config_change")
    assert change["changes"] == {
        "api_key": {"from": "[redacted]", "to": "[redacted]"},
        "region": {"from": "in", "to": "eu"},
    }
    assert "new-key" not in json.dumps(change) and "old-key" not in json.dumps(change)


def _webhook_strategy(trader, account) -> tuple[str, str]:
    client = client_for(trader)
    body = {"name": "Signals", "kind": "webhook", "exit_time": "15:15", "accounts": [{"account_id": account.pk}]}
    created = client.post("/api/strategies", body, format="json")
    assert created.status_code == 201, created.json()
    return created.json()["id"], created.json()["webhook_secret"]


def test_webhook_signals_accepted_or_refused_reach_operators(market_open, operator, server, trader):
    standard_instruments()
    quote_publish(quote_at(EQUITY, "1500"))
    account = paper_account(trader)
    strategy_id, secret = _webhook_strategy(trader, account)
    started = client_for(trader).post(f"/api/strategies/{strategy_id}/start", {"mode": "paper"}, format="json")
    assert started.status_code == 201, started.json()
    subscribe(operator, "signals")
    body = {"secret": secret, "action": "BUY", "symbol": EQUITY, "quantity": 5, "id": "alert-1"}

    status, answer = http("POST", f"http://{server}/api/strategies/{strategy_id}/webhook", body)
    assert status == 202, answer

    accepted = expect(operator, "signal")
    assert (accepted["id"], accepted["status"], accepted["strategy_id"]) == (answer["id"], "accepted", strategy_id)
    assert (accepted["source"], accepted["action"], accepted["symbol"], accepted["quantity"]) == (
        "tradingview",
        "BUY",
        EQUITY,
        5,
    )
    assert len(accepted["order_ids"]) == 1 and accepted["user_id"] == trader.pk

    status, _ = http("POST", f"http://{server}/api/strategies/{strategy_id}/webhook", {**body, "secret": "wrong"})
    assert status == 401
    refused = expect(operator, "signal")
    assert (refused["status"], refused["reason"]) == ("rejected", "BAD_SECRET")
    assert Signal.objects.get(pk=refused["id"]).status == SignalStatus.REJECTED
    assert "secret" not in json.dumps(refused).replace("BAD_SECRET", "").replace("webhook secret", "")


def test_a_breach_and_its_square_off_reach_operators(operator, trader):
    subscribe(operator, "risk")

    assert breach_handle(user_id=trader.pk, reason=Reason.DAILY_LOSS_LIMIT_HIT, mtm=Decimal("-5000"))

    breach = expect(operator, "risk_event")
    assert (breach["kind"], breach["user_id"], breach["reason"], breach["mtm"]) == (
        "breach",
        trader.pk,
        "DAILY_LOSS_LIMIT_HIT",
        -5000,
    )
    assert breach["details"] == {"state": "HALTED"} and breach["id"].startswith("rke_")
    square_off = expect(operator, "risk_event")
    assert (square_off["kind"], square_off["reason"], square_off["details"]["failed"]) == (
        "square_off",
        "DAILY_LOSS_LIMIT_HIT",
        [],
    )
    assert RmsEvent.objects.filter(user=trader).count() == 2


def test_the_minute_task_publishes_the_last_minutes_rejections_per_broker(market_open, operator, trader):
    standard_instruments()
    account = paper_account(trader)
    quote_and_reject(trader, account)
    Order.objects.create(
        user=trader, account=account, symbol=EQUITY, side="BUY", quantity=1, order_type="MARKET", product="MIS"
    )
    subscribe(operator, "orders")
    minute = market_open.astimezone(UTC).replace(second=0, microsecond=0)  # 10:30 IST: the orders' minute

    publish_order_rates(now=(minute + timedelta(minutes=1, seconds=2)).isoformat())

    rates = expect(operator, "order_rates")
    assert (rates["minute"], rates["until"]) == ("2026-12-08T05:00:00Z", "2026-12-08T05:01:00Z")
    assert rates["brokers"]["paper"] == {
        "placed": 2,
        "rejected": 1,
        "errored": 0,
        "rejection_rate": 0.5,
        "error_rate": 0.0,
    }
    assert rates["brokers"]["zerodha"]["placed"] == 0


def quote_and_reject(trader, account) -> None:
    """A delivery sell without holdings through the real order route: the paper exchange rejects it."""
    quote_publish(quote_at(EQUITY, "1500"))
    body = {"account_id": account.pk, "symbol": EQUITY, "side": "SELL", "quantity": 1, "order_type": "MARKET"}
    response = client_for(trader).post("/api/orders", {**body, "product": "CNC"}, format="json")
    assert response.status_code == 422 and response.json()["error_code"] == "ORDER_REJECTED", response.json()


def test_unsubscribing_stops_the_topics_messages(operator, server, admin_user):
    subscribe(operator, "system", "config")
    send(operator, "subscription", {"action": "unsubscribe", "topics": ["system"]})

    api(server, "POST", "/api/system/stop", admin_user, {"reason": "drill"})
    assert nothing_arrives(operator)

    api(
        server,
        "PUT",
        f"/api/config/{config.RMS_DEFAULTS}",
        admin_user,
        {"data": config.config_get(name="rms_defaults")},
    )
    assert expect(operator, "config_change")["section"] == "rms_defaults"  # still subscribed to config


def test_an_operator_who_subscribed_to_nothing_hears_nothing(operator, server, admin_user):
    api(server, "POST", "/api/system/stop", admin_user, {"reason": "drill"})
    assert nothing_arrives(operator)
