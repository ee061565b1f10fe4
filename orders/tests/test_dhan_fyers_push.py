"""Order updates Dhan and Fyers push reach the order pipeline as signals: accounts connected through the API, orders
placed through the real `dhanhq` and `fyers-apiv3` SDKs at the broker simulators, filled on the simulated exchange,
and heard of on the order sockets (the supervisor's streams, through the SDKs' socket classes, against the
order-socket simulators) or on Dhan's postback. Nothing reconciles here, so a push is the only way our orders hear of
fills, and what the broker's books say, never the pushed body, is what gets applied."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory
from algoterm.api.errors import AppError
from algoterm.backoff import Backoff
from algoterm.sandbox.simulators.dhan import DhanSimulator
from algoterm.sandbox.simulators.dhan_order_socket import DhanOrderSocketSimulator, order_alert
from algoterm.sandbox.simulators.fyers import FyersSimulator
from algoterm.sandbox.simulators.fyers_order_socket import FyersOrderSocketSimulator, fyers_sessions
from algoterm.testing import assert_error, client_for
from brokers.models import BrokerAccount
from brokers.streams.supervisor import OrderStreamSupervisor, order_stream_state
from brokers.tests.conftest import serving
from orders import postbacks
from orders.models import Order, OrderEvent, OrderStatus, Position, Trade
from orders.tests.factories import EQUITY
from orders.tests.test_kite import at_exchange, place, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CONNECT = "/api/brokers/connect"
POSTBACK = "/api/brokers/postback/dhan"
DHAN_CLIENT, DHAN_TOKEN = "1100000101", "dhan-push-token-3c9d"
OTHER_DHAN_CLIENT, OTHER_DHAN_TOKEN = "1100000102", "dhan-push-token-7e21"
FYERS_APP, FYERS_SECRET, FYERS_USER = "XP55555-100", "fyers-push-secret", "XP00007"


# --- the brokers ---------------------------------------------------------------------------------------------------


@pytest.fixture
def dhan_rest(settings) -> Iterator[tuple[DhanSimulator, object]]:
    app = DhanSimulator()
    app.register_client(DHAN_CLIENT, DHAN_TOKEN)
    app.register_client(OTHER_DHAN_CLIENT, OTHER_DHAN_TOKEN)
    with serving(app) as server:
        settings.DHAN_BASE_URL = f"{server.url}/v2"
        yield app, server


@pytest.fixture
def dhan_socket(settings, dhan_rest) -> Iterator[DhanOrderSocketSimulator]:
    app, _ = dhan_rest
    with DhanOrderSocketSimulator(authorize=app.client_for_token) as simulator:
        settings.DHAN_ORDER_SOCKET_URL = simulator.url
        yield simulator


@pytest.fixture
def fyers_rest(settings) -> Iterator[FyersSimulator]:
    app = FyersSimulator()
    app.register_app(FYERS_APP, FYERS_SECRET)
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:1"
    with serving(app) as server:
        settings.FYERS_API_URL = f"{server.url}/api/v3"
        settings.FYERS_DATA_URL = f"{server.url}/data"
        yield app


@pytest.fixture
def fyers_socket(settings, fyers_rest) -> Iterator[FyersOrderSocketSimulator]:
    with FyersOrderSocketSimulator(authorize=fyers_sessions(fyers_rest)) as simulator:
        settings.FYERS_ORDER_SOCKET_URL = simulator.url
        yield simulator


@pytest.fixture
def streams() -> Iterator[OrderStreamSupervisor]:
    """The order streams' supervisor, looking at the accounts whenever a test calls `sync()`."""
    supervisor = OrderStreamSupervisor(
        poll_seconds=60, backoff=lambda: Backoff(initial=0.05, maximum=0.2), stream_options={"connect_timeout": 2}
    )
    yield supervisor
    supervisor.stop_all()


@pytest.fixture
def socket_updates(monkeypatch) -> list[tuple[str, str, object, str]]:
    """Every update the order sockets handed over: (account id, broker, data, "applied" | "ignored"), in order."""
    seen: list[tuple[str, str, object, str]] = []
    apply = postbacks.broker_socket_update_apply

    def recording(*, account_id: str, broker: str, data: dict) -> str:
        result = apply(account_id=account_id, broker=broker, data=data)
        seen.append((account_id, broker, data, result))
        return result

    monkeypatch.setattr(postbacks, "broker_socket_update_apply", recording)
    return seen


@pytest.fixture
def dhan_postbacks(monkeypatch) -> list[tuple[dict, str]]:
    """Every Dhan postback the route handled: (payload, "applied" | "ignored" | error code)."""
    seen: list[tuple[dict, str]] = []
    apply = postbacks.dhan_postback_apply

    def recording(*, payload: dict) -> str:
        try:
            result = apply(payload=payload)
        except AppError as error:
            seen.append((dict(payload), str(error.code)))
            raise
        seen.append((dict(payload), result))
        return result

    monkeypatch.setattr(postbacks, "dhan_postback_apply", recording)
    return seen


# --- accounts and orders, through the API ----------------------------------------------------------------------------


def connect_dhan(client, client_id: str = DHAN_CLIENT, token: str = DHAN_TOKEN) -> BrokerAccount:
    response = client.post(
        CONNECT, {"broker": "dhan", "credentials": {"client_id": client_id, "access_token": token}}, format="json"
    )
    assert response.status_code == 201, response.json()
    return BrokerAccount.objects.get(pk=response.json()["account"]["id"])


def connect_fyers(client) -> BrokerAccount:
    started = client.post(
        CONNECT, {"broker": "fyers", "credentials": {"client_id": FYERS_APP, "secret_key": FYERS_SECRET}}, format="json"
    )
    assert started.status_code == 201, started.json()
    browser = requests.Session()
    browser.trust_env = False  # loopback only
    login_url = started.json()["login_url"]
    page = browser.get(login_url, timeout=5)
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    answer = browser.post(
        urljoin(login_url, action), data={**fields, "fy_id": FYERS_USER, "pin": "1234"}, allow_redirects=False
    )
    params = {key: values[0] for key, values in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    callback = APIClient().get("/api/brokers/callback/fyers", params)
    assert callback.status_code == 200, callback.json()
    return BrokerAccount.objects.get(pk=started.json()["account"]["id"])


def resting_limit_order(client, account: BrokerAccount) -> Order:
    response = place(client, account, order_type="LIMIT", price=1490)
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "OPEN"
    return Order.objects.get(pk=response.json()["id"])


def assert_filled_from_the_books(order: Order, account: BrokerAccount) -> None:
    order.refresh_from_db()
    [sim_order] = at_exchange(order)
    assert sim_order.status == "FILLED"
    assert order.status == OrderStatus.FILLED and order.filled_quantity == 10
    assert order.average_price == sim_order.average_price and order.broker_order_id == sim_order.order_id
    assert order.events.last().source == "broker"
    [trade] = Trade.objects.filter(order=order)
    assert trade.quantity == 10 and trade.price == order.average_price
    assert Position.objects.get(account=account, symbol=EQUITY).quantity == 10


# --- the order sockets -----------------------------------------------------------------------------------------------


def test_a_fill_pushed_on_dhans_order_socket_fills_our_order(
    dhan_socket, streams, trader_client, instruments, publish_quote, socket_updates, eager_tasks
):
    account = connect_dhan(trader_client)
    publish_quote(EQUITY, "1500")
    order = resting_limit_order(trader_client, account)
    streams.sync()
    wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 1, what="the order socket's login")

    publish_quote(EQUITY, "1489")  # the exchange fills the resting order; only Dhan's socket tells us

    wait_until(lambda: socket_updates, what="the pushed alert")
    [(account_id, broker, data, result)] = socket_updates
    assert (account_id, broker, result) == (account.pk, "dhan", "applied")
    assert data["CorrelationId"] == order.broker_tag and data["Status"] == "TRADED"
    assert_filled_from_the_books(order, account)
    assert order_stream_state(account_id=account.pk)["last_message_at"]


def test_a_fill_pushed_on_fyers_order_socket_fills_our_order(
    fyers_socket, streams, trader_client, instruments, publish_quote, socket_updates, eager_tasks
):
    account = connect_fyers(trader_client)
    publish_quote(EQUITY, "1500")
    order = resting_limit_order(trader_client, account)
    streams.sync()
    wait_until(lambda: fyers_socket.subscribed(FYERS_USER) == 1, what="the order socket's subscription")

    publish_quote(EQUITY, "1489")

    wait_until(lambda: socket_updates, what="the pushed order")
    [(account_id, broker, data, result)] = socket_updates
    assert (account_id, broker, result) == (account.pk, "fyers", "applied")
    assert data["orderTag"] == f"1:{order.broker_tag}" and data["status"] == 2  # as the SDK renames Fyers' fields
    assert_filled_from_the_books(order, account)


def test_after_dhan_drops_the_socket_the_stream_reconnects_and_later_fills_still_arrive(
    dhan_socket, streams, trader_client, instruments, publish_quote, socket_updates, eager_tasks
):
    account = connect_dhan(trader_client)
    publish_quote(EQUITY, "1500")
    order = resting_limit_order(trader_client, account)
    streams.sync()
    wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 1, what="the first login")

    assert dhan_socket.drop_connections() == 1
    wait_until(lambda: dhan_socket.connections_accepted == 2 and dhan_socket.logged_in(DHAN_CLIENT) == 1)
    publish_quote(EQUITY, "1489")

    wait_until(lambda: socket_updates, what="the alert on the new connection")
    assert [result for *_, result in socket_updates] == ["applied"]
    assert_filled_from_the_books(order, account)
    assert order_stream_state(account_id=account.pk)["connections"] == 2


def test_socket_alerts_for_other_accounts_unknown_or_malformed_orders_are_ignored(
    dhan_socket, streams, trader_client, instruments, publish_quote, socket_updates, eager_tasks
):
    account = connect_dhan(trader_client)
    other_client = client_for(UserFactory())
    other_account = connect_dhan(other_client, OTHER_DHAN_CLIENT, OTHER_DHAN_TOKEN)
    publish_quote(EQUITY, "1500")
    ours, theirs = resting_limit_order(trader_client, account), resting_limit_order(other_client, other_account)
    streams.sync()
    wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 1 and dhan_socket.logged_in(OTHER_DHAN_CLIENT) == 1)
    [their_sim], [our_sim] = at_exchange(theirs), at_exchange(ours)
    their_alert = order_alert(their_sim, OTHER_DHAN_CLIENT)["Data"]
    our_alert = order_alert(our_sim, DHAN_CLIENT)["Data"]
    bad = [
        their_alert,  # another account's order, by its tag and by its order id
        {**their_alert, "CorrelationId": ""},
        {**our_alert, "OrderNo": "250000000999999", "CorrelationId": "ord0000000000000000a"},  # not an order of ours
        {**our_alert, "OrderNo": None},  # names no order
        {**our_alert, "CorrelationId": ["not", "text"]},
    ]
    for data in bad:
        dhan_socket.push_message(DHAN_CLIENT, {"Type": "order_alert", "Data": data})
    wait_until(lambda: len(socket_updates) == len(bad), what="the ignored alerts")

    assert [result for *_, result in socket_updates] == ["ignored"] * len(bad)
    assert {account_id for account_id, *_ in socket_updates} == {account.pk}
    assert dhan_socket.logged_in(DHAN_CLIENT) == 1  # the stream is still listening
    for order in (ours, theirs):
        order.refresh_from_db()
        assert order.status == OrderStatus.OPEN


# --- Dhan's postback ---------------------------------------------------------------------------------------------


def dhan_postback(sim_order, client_id: str, **changes) -> dict:
    """Dhan's postback body for `sim_order`: the order book's fields (as Dhan posts them)."""
    alert = order_alert(sim_order, client_id)["Data"]
    body = {
        "dhanClientId": client_id,
        "orderId": alert["OrderNo"],
        "correlationId": alert["CorrelationId"],
        "orderStatus": alert["Status"],
        "transactionType": "BUY",
        "exchangeSegment": "NSE_EQ",
        "productType": "INTRADAY",
        "orderType": "LIMIT",
        "validity": "DAY",
        "tradingSymbol": alert["Symbol"],
        "securityId": alert["SecurityId"],
        "quantity": alert["Quantity"],
        "price": alert["Price"],
        "triggerPrice": 0.0,
        "filledQty": alert["TradedQty"],
        "averageTradedPrice": alert["AvgTradedPrice"],
        "omsErrorCode": None,
        "omsErrorDescription": None,
    }
    return {**body, **changes}


def post_back(payload: dict):
    return APIClient().post(POSTBACK, payload, format="json")


def test_a_forged_dhan_postback_changes_nothing_but_makes_us_read_the_order(
    dhan_rest, trader_client, instruments, publish_quote, dhan_postbacks, eager_tasks
):
    app, _ = dhan_rest
    account = connect_dhan(trader_client)
    publish_quote(EQUITY, "1500")
    order = resting_limit_order(trader_client, account)
    [sim_order] = at_exchange(order)
    events = OrderEvent.objects.filter(order=order).count()
    reads = app.requests_served

    forged = dhan_postback(sim_order, DHAN_CLIENT, orderStatus="TRADED", filledQty=10, averageTradedPrice=1.0)
    response = post_back(forged)

    assert response.status_code == 200 and response.json() == {"status": "applied"}
    assert app.requests_served > reads  # the postback made us read the order from Dhan's books
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN and order.filled_quantity == 0 and order.average_price is None
    assert not Trade.objects.filter(order=order).exists()
    assert OrderEvent.objects.filter(order=order).count() == events

    publish_quote(EQUITY, "1489")  # now Dhan's books fill it; the genuine postback says so
    [sim_order] = at_exchange(order)
    genuine = post_back(dhan_postback(sim_order, DHAN_CLIENT, averageTradedPrice=1.0))  # a wrong price, still

    assert genuine.json() == {"status": "applied"}
    assert_filled_from_the_books(order, account)
    assert [result for _, result in dhan_postbacks] == ["applied", "applied"]


def test_a_dhan_postback_for_another_accounts_order_or_an_unknown_one_is_ignored(
    dhan_rest, trader_client, instruments, publish_quote, eager_tasks
):
    app, _ = dhan_rest
    connect_dhan(trader_client)
    other_account = connect_dhan(client_for(UserFactory()), OTHER_DHAN_CLIENT, OTHER_DHAN_TOKEN)
    publish_quote(EQUITY, "1500")
    theirs = resting_limit_order(client_for(other_account.owner), other_account)
    publish_quote(EQUITY, "1489")  # fills theirs at Dhan
    [their_sim] = at_exchange(theirs)
    reads = app.requests_served

    for payload in (
        dhan_postback(their_sim, DHAN_CLIENT),  # their order, posted as if it were our client's
        dhan_postback(their_sim, DHAN_CLIENT, correlationId=None),
        dhan_postback(their_sim, "1100000999"),  # a client id no account has
        dhan_postback(their_sim, OTHER_DHAN_CLIENT, orderId="250000000999999", correlationId="ord0000000000000000a"),
    ):
        response = post_back(payload)
        assert response.status_code == 200 and response.json() == {"status": "ignored"}, payload

    assert app.requests_served == reads
    theirs.refresh_from_db()
    assert theirs.status == OrderStatus.OPEN and not Trade.objects.filter(order=theirs).exists()

    # Posted for its own client id, the same body is a signal for that account's order.
    assert post_back(dhan_postback(their_sim, OTHER_DHAN_CLIENT)).json() == {"status": "applied"}
    assert_filled_from_the_books(theirs, other_account)


def test_a_dhan_postback_that_names_no_order_is_refused(db):
    for payload in ({"orderId": "250000000000001"}, {"dhanClientId": DHAN_CLIENT}, {"dhanClientId": True}):
        assert_error(post_back(payload), 400, "VALIDATION_ERROR")
    assert_error(APIClient().post(POSTBACK, ["not", "an", "object"], format="json"), 400, "VALIDATION_ERROR")
