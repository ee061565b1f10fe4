"""The order pipeline on a Zerodha account: the real kiteconnect SDK against the Kite simulator, and the simulator's
postbacks reaching this Django over real HTTP."""

import hashlib
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from algoterm.api.errors import AppError
from algoterm.sandbox.simulators.kite import KiteSimulator
from algoterm.testing import assert_error
from brokers import exchange
from brokers.models import BrokerAccount, SimOrder
from brokers.tests.conftest import serving
from brokers.tests.test_api import KITE_KEY, KITE_SECRET, connect_zerodha
from orders import postbacks as postback_services
from orders.models import Order, OrderEvent, OrderStatus, Position, Trade
from orders.services import orders_reconcile
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db(transaction=True)

POSTBACK = "/api/brokers/postback/zerodha"


def wait_until(condition: Callable[[], object], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def backend(transactional_db) -> Iterator[str]:
    """This Django served over HTTP on 127.0.0.1 (what the simulator posts to); yields its base URL."""
    from pytest_django.live_server_helper import LiveServer

    server = LiveServer("127.0.0.1:0")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def received(monkeypatch) -> list[tuple[dict, str]]:
    """Every postback the route handled, in order: (payload, "applied" | "ignored" | error code)."""
    seen: list[tuple[dict, str]] = []
    apply = postback_services.kite_postback_apply

    def recording(*, payload: dict) -> str:
        try:
            result = apply(payload=payload)
        except AppError as error:
            seen.append((dict(payload), str(error.code)))
            raise
        seen.append((dict(payload), result))
        return result

    monkeypatch.setattr(postback_services, "kite_postback_apply", recording)
    return seen


def _simulator(settings, postback_url: str) -> Iterator[KiteSimulator]:
    # Fault injection hits the simulator's next request: keep it the placement, not the pre-trade funds read.
    settings.RMS_FUNDS_CHECK = False
    app = KiteSimulator()
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:1"
    app.register_app(
        KITE_KEY, KITE_SECRET, "http://127.0.0.1:1/api/brokers/callback/zerodha", postback_url=postback_url
    )
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        settings.KITE_LOGIN_URL = f"{server.url}/connect/login"
        yield app


@pytest.fixture
def kite(settings, backend, received) -> Iterator[KiteSimulator]:
    """The Kite simulator, posting its postbacks to this Django."""
    yield from _simulator(settings, f"{backend}{POSTBACK}")


@pytest.fixture
def kite_without_postbacks(settings) -> Iterator[KiteSimulator]:
    yield from _simulator(settings, "")


@pytest.fixture
def zerodha(trader_client, instruments) -> BrokerAccount:
    account, _ = connect_zerodha(trader_client)
    return BrokerAccount.objects.get(pk=account["id"])


def place(client, account: BrokerAccount, **fields):
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    return client.post("/api/orders", body, format="json")


def at_exchange(order: Order) -> list[SimOrder]:
    return list(SimOrder.objects.filter(tag=order.broker_tag))


def post_back(payload: dict):
    return APIClient().post(POSTBACK, payload, format="json")


def signed(payload: dict, *, secret: str = KITE_SECRET, **changes) -> dict:
    forged = {**payload, **changes}
    forged["checksum"] = hashlib.sha256(f"{forged['order_id']}{forged['order_timestamp']}{secret}".encode()).hexdigest()
    return forged


# --- placing through the SDK -------------------------------------------------------------------------------------


def test_market_order_fills_at_kite_with_our_tag_and_algo_id(
    kite, zerodha, trader_client, publish_quote, received, settings, eager_tasks
):
    publish_quote(EQUITY, "1500")
    response = place(trader_client, zerodha)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "FILLED" and body["filled_quantity"] == 10 and body["broker_order_id"]
    order = Order.objects.get(pk=body["id"])
    [sim] = at_exchange(order)
    assert sim.order_id == order.broker_order_id and sim.tag == order.broker_tag
    assert sim.algo_id == settings.BROKER_DEFAULT_ALGO_ID
    wait_until(lambda: received, what="the placement's postback")
    assert received[0][0]["tag"] == order.broker_tag and received[0][0]["status"] == "COMPLETE"
    assert received[0][0]["user_id"] == "ZX9876"
    assert Trade.objects.filter(order=order).count() == 1
    assert Position.objects.get(account=zerodha, symbol=EQUITY).quantity == 10

    assert_error(trader_client.delete(f"/api/orders/{order.pk}"), 409, "INVALID_STATE")
    assert Order.objects.get(pk=order.pk).status == OrderStatus.FILLED


def test_a_resting_limit_order_is_filled_by_the_postback_and_a_replay_changes_nothing(
    kite, zerodha, trader_client, publish_quote, received, eager_tasks
):
    publish_quote(EQUITY, "1500")
    response = place(trader_client, zerodha, order_type="LIMIT", price=1490)
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "OPEN"
    order = Order.objects.get(pk=response.json()["id"])
    wait_until(lambda: received, what="the placement's postback")

    publish_quote(EQUITY, "1489")  # the exchange fills the resting order; only the postback tells us

    wait_until(lambda: len(received) == 2, what="the fill's postback")
    payload, result = received[-1]
    assert payload["status"] == "COMPLETE" and result == "applied"
    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED and order.filled_quantity == 10
    assert order.events.last().source == "broker"
    [trade] = Trade.objects.filter(order=order)
    assert trade.quantity == 10 and trade.price == order.average_price
    position = Position.objects.get(account=zerodha, symbol=EQUITY)
    assert position.quantity == 10
    events = OrderEvent.objects.filter(order=order).count()

    replay = post_back(payload)

    assert replay.status_code == 200 and replay.json() == {"status": "applied"}
    assert Trade.objects.filter(order=order).count() == 1
    assert Position.objects.get(pk=position.pk).quantity == 10
    assert OrderEvent.objects.filter(order=order).count() == events


def test_a_postback_with_a_wrong_or_missing_checksum_is_refused_and_changes_nothing(
    kite, zerodha, trader_client, publish_quote, received
):
    publish_quote(EQUITY, "1500")
    order = Order.objects.get(pk=place(trader_client, zerodha, order_type="LIMIT", price=1490).json()["id"])
    wait_until(lambda: received, what="the placement's postback")
    genuine = received[0][0]
    fill = {"status": "COMPLETE", "filled_quantity": 10, "pending_quantity": 0, "average_price": 1400.0}

    for forged in (
        signed(genuine, secret="not-the-secret", **fill),
        {**genuine, **fill, "checksum": ""},
        {key: value for key, value in {**genuine, **fill}.items() if key != "checksum"},
    ):
        body = assert_error(post_back(forged), 400, "VALIDATION_ERROR")
        assert "checksum" in body["errors"]

    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN and order.filled_quantity == 0
    assert not Trade.objects.filter(order=order).exists()
    assert not Position.objects.filter(account=zerodha).exists()


def test_a_postback_for_an_order_we_do_not_know_is_ignored(kite, zerodha, trader_client, publish_quote, received):
    publish_quote(EQUITY, "1500")
    order = Order.objects.get(pk=place(trader_client, zerodha, order_type="LIMIT", price=1490).json()["id"])
    wait_until(lambda: received, what="the placement's postback")
    stranger = signed(received[0][0], order_id="250000000999999", tag="ord0000000000000000a", status="COMPLETE")

    for payload in (stranger, {}):
        response = post_back(payload)
        assert response.status_code == 200 and response.json() == {"status": "ignored"}

    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN and not Trade.objects.exists()


def test_a_signed_postback_that_is_not_a_kite_order_is_refused(kite, zerodha, trader_client, publish_quote, received):
    publish_quote(EQUITY, "1500")
    order = Order.objects.get(pk=place(trader_client, zerodha, order_type="LIMIT", price=1490).json()["id"])
    wait_until(lambda: received, what="the placement's postback")

    body = assert_error(post_back(signed(received[0][0], transaction_type="HOLD")), 400, "VALIDATION_ERROR")
    assert "payload" in body["errors"]
    assert_error(post_back([received[0][0]]), 400, "VALIDATION_ERROR")

    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN and not Trade.objects.exists()


def test_the_simulator_hears_of_fills_only_while_it_is_served(db):
    app = KiteSimulator()
    with serving(app):
        assert app._orders_filled in exchange._order_change_listeners
    assert app._orders_filled not in exchange._order_change_listeners


def test_postbacks_are_for_zerodha_and_dhan_only(db):
    for broker in ("fyers", "paper"):
        assert_error(APIClient().post(f"/api/brokers/postback/{broker}", {}, format="json"), 404, "NOT_FOUND")


# --- modify and cancel -------------------------------------------------------------------------------------------


def test_modify_and_cancel_reach_kite(kite, zerodha, trader_client, publish_quote, received, eager_tasks):
    publish_quote(EQUITY, "1500")
    order = Order.objects.get(pk=place(trader_client, zerodha, order_type="LIMIT", price=1490).json()["id"])

    modified = trader_client.patch(f"/api/orders/{order.pk}", {"quantity": 20, "price": 1480}, format="json")

    assert modified.status_code == 200, modified.json()
    assert modified.json()["status"] == "OPEN" and modified.json()["quantity"] == 20
    assert modified.json()["price"] == 1480
    [sim] = at_exchange(order)
    assert (sim.quantity, sim.price, sim.status) == (20, 1480, "OPEN")

    cancelled = trader_client.delete(f"/api/orders/{order.pk}")

    assert cancelled.status_code == 200, cancelled.json()
    assert cancelled.json()["status"] == "CANCELLED"
    sim.refresh_from_db()
    assert sim.status == "CANCELLED"
    wait_until(lambda: len(received) >= 3, what="placement, modify and cancel postbacks")
    assert [payload["status"] for payload, _ in received] == ["OPEN", "OPEN", "CANCELLED"]
    order.refresh_from_db()
    assert (order.status, order.quantity, order.price) == (OrderStatus.CANCELLED, 20, 1480)
    assert_error(trader_client.delete(f"/api/orders/{order.pk}"), 409, "INVALID_STATE")


# --- lost answers ------------------------------------------------------------------------------------------------


def test_a_timed_out_placement_is_reconciled_from_kites_book_without_a_second_order(
    kite_without_postbacks, zerodha, trader_client, publish_quote, settings, eager_tasks
):
    settings.BROKER_TIMEOUT_SECONDS = 0.5
    publish_quote(EQUITY, "1500")
    kite_without_postbacks.inject_fault("delay", seconds=1.5)  # Kite places the order after the SDK gave up

    response = place(trader_client, zerodha)

    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "UNKNOWN" and response.json()["broker_order_id"] == ""
    order = Order.objects.get(pk=response.json()["id"])
    wait_until(lambda: at_exchange(order), what="Kite to place the delayed order")

    orders_reconcile(account_id=zerodha.pk)

    order.refresh_from_db()
    [sim] = at_exchange(order)
    assert order.status == OrderStatus.FILLED and order.broker_order_id == sim.order_id
    assert order.events.last().source == "reconcile"
    assert Trade.objects.filter(order=order).count() == 1
    settings.ORDER_RECONCILE_GRACE_SECONDS = 0
    orders_reconcile(account_id=zerodha.pk)
    assert len(at_exchange(order)) == 1 and Trade.objects.filter(order=order).count() == 1


def test_a_timed_out_placement_is_settled_by_kites_postback(
    kite, zerodha, trader_client, publish_quote, received, settings, eager_tasks
):
    settings.BROKER_TIMEOUT_SECONDS = 0.5
    publish_quote(EQUITY, "1500")
    kite.inject_fault("delay", seconds=1.5)

    response = place(trader_client, zerodha)

    assert response.json()["status"] == "UNKNOWN"
    order = Order.objects.get(pk=response.json()["id"])
    wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.FILLED, what="the postback")
    order.refresh_from_db()
    [sim] = at_exchange(order)
    assert order.broker_order_id == sim.order_id and Trade.objects.filter(order=order).count() == 1


def test_a_placement_kite_failed_is_rejected_after_the_grace_period_and_never_resent(
    kite_without_postbacks, zerodha, trader_client, publish_quote, settings, eager_tasks
):
    publish_quote(EQUITY, "1500")
    kite_without_postbacks.inject_fault("error", status=500)

    response = place(trader_client, zerodha)

    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "UNKNOWN"
    order = Order.objects.get(pk=response.json()["id"])
    orders_reconcile(account_id=zerodha.pk)  # within the grace period: Kite may still be placing it
    order.refresh_from_db()
    assert order.status == OrderStatus.UNKNOWN

    settings.ORDER_RECONCILE_GRACE_SECONDS = 0
    orders_reconcile(account_id=zerodha.pk)

    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED and "no record" in order.status_message
    assert at_exchange(order) == []
    assert not Trade.objects.filter(order=order).exists()


def test_an_order_settled_as_never_placed_follows_the_broker_when_kite_places_it_late(
    kite, zerodha, trader_client, publish_quote, received, settings, eager_tasks
):
    settings.BROKER_TIMEOUT_SECONDS = 0.5
    publish_quote(EQUITY, "1500")
    kite.inject_fault("delay", seconds=2.5)  # Kite sits on the order past our timeout and past the grace period

    response = place(trader_client, zerodha)
    order = Order.objects.get(pk=response.json()["id"])
    settings.ORDER_RECONCILE_GRACE_SECONDS = 0
    orders_reconcile(account_id=zerodha.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED and at_exchange(order) == []

    wait_until(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.FILLED, what="the late postback")
    order.refresh_from_db()
    [sim] = at_exchange(order)
    assert order.broker_order_id == sim.order_id and Trade.objects.filter(order=order).count() == 1
    assert "after all" in order.events.get(from_status=OrderStatus.REJECTED).message


def test_a_late_postback_does_not_undo_a_modification(
    kite_without_postbacks, zerodha, trader_client, publish_quote, eager_tasks
):
    publish_quote(EQUITY, "1500")
    placed = place(trader_client, zerodha, order_type="LIMIT", price=1490).json()
    order = Order.objects.get(pk=placed["id"])
    [sim] = at_exchange(order)
    stale = kite_without_postbacks._kite_order(sim, "zx9876")  # what Kite said before the modification

    modified = trader_client.patch(f"/api/orders/{order.pk}", {"price": 1480, "quantity": 20}, format="json")
    assert modified.status_code == 200, modified.json()

    assert post_back(signed(stale)).status_code == 200
    order.refresh_from_db()
    assert (order.quantity, order.price, order.status) == (20, Decimal("1480"), OrderStatus.OPEN)


# --- pushes are signals ------------------------------------------------------------------------------------------


def test_a_self_signed_postback_cannot_write_fills_kites_books_do_not_have(
    kite, zerodha, trader_client, publish_quote, received, eager_tasks
):
    publish_quote(EQUITY, "1500")
    order = Order.objects.get(pk=place(trader_client, zerodha, quantity=1).json()["id"])
    wait_until(lambda: received, what="the placement's postback")
    publish_quote(EQUITY, "1400")  # a real loss of 100 on the one share
    [sim] = at_exchange(order)
    assert (sim.quantity, sim.filled_quantity, sim.status) == (1, 1, "FILLED")
    real_mtm = trader_client.get("/api/rms/status").json()["mtm"]
    assert real_mtm < -99
    genuine = received[0][0]

    # The user knows their own API secret, and Kite's checksum covers only order_id and order_timestamp.
    forged = signed(
        genuine,
        status="COMPLETE",
        quantity=1_000_000,
        filled_quantity=1_000_000,
        pending_quantity=0,
        average_price=1.0,
        price=1.0,
    )
    answered = post_back(forged)

    assert answered.status_code == 200 and answered.json() == {"status": "applied"}
    order.refresh_from_db()
    sim.refresh_from_db()
    assert (order.quantity, order.filled_quantity, order.status) == (sim.quantity, sim.filled_quantity, "FILLED")
    assert order.average_price == sim.average_price > 1400
    assert [(trade.quantity, trade.price) for trade in Trade.objects.filter(order=order)] == [(1, sim.average_price)]
    position = Position.objects.get(account=zerodha, symbol=EQUITY)
    assert (position.quantity, position.average_price) == (1, sim.average_price)
    assert trader_client.get("/api/rms/status").json()["mtm"] == real_mtm  # the daily-loss rule sees the real loss


def test_a_burst_of_postbacks_for_one_order_is_one_read_of_kites_books(
    kite_without_postbacks, zerodha, trader_client, publish_quote
):
    from celery.signals import before_task_publish

    from orders import tasks

    publish_quote(EQUITY, "1500")
    order = Order.objects.get(pk=place(trader_client, zerodha, order_type="LIMIT", price=1490).json()["id"])
    [sim] = at_exchange(order)
    pushed = signed(kite_without_postbacks._kite_order(sim, "zx9876"))
    queued: list[str] = []

    def published(sender=None, body=None, **kwargs) -> None:
        if sender == "orders.tasks.refresh_pushed_order":
            queued.append(body[0][0])

    before_task_publish.connect(published, weak=False)
    try:
        for _ in range(5):
            assert post_back(pushed).json() == {"status": "applied"}
        assert queued == [order.pk]

        tasks.refresh_pushed_order(order.pk)  # the worker runs the queued read; pushes after it queue anew
        assert post_back(pushed).json() == {"status": "applied"}
    finally:
        before_task_publish.disconnect(published)

    assert queued == [order.pk, order.pk]
