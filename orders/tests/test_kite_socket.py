"""Order updates on the Kite ticker reach the order pipeline: a Zerodha account's KiteFeed (the real kiteconnect
`KiteTicker`) against the Kite ticker simulator, which accepts the access tokens the Kite HTTP simulator issued.
No postback URL is registered and nothing reconciles, so the socket is the only way our orders hear of fills.

The feed shares Twisted's one reactor with every other KiteFeed test in the process (see marketdata/feeds/kite.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.tests.factories import UserFactory
from algoterm.sandbox.simulators.kite import KiteSimulator
from algoterm.sandbox.simulators.kite_ticker import KiteTickerSimulator
from algoterm.testing import client_for
from brokers.models import BrokerAccount
from brokers.tests.test_api import connect_zerodha
from marketdata.feeds.kite import KiteFeed
from marketdata.tests.feed_helpers import running
from orders import postbacks
from orders.models import Order, OrderStatus, Position, Trade
from orders.tests.factories import EQUITY
from orders.tests.test_kite import _simulator, at_exchange, place, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

KITE_USER = "ZX9876"  # who connect_zerodha logs in as
INFY = 408065


@pytest.fixture
def kite_sim(settings) -> Iterator[KiteSimulator]:
    """The Kite HTTP simulator with no postback URL (as test_kite's `kite_sim`)."""
    yield from _simulator(settings, "")


@pytest.fixture
def ticker_sim(kite_sim: KiteSimulator, settings) -> Iterator[KiteTickerSimulator]:
    """The Kite ticker, accepting the sessions the Kite HTTP simulator issued; feeds find it through settings."""
    with KiteTickerSimulator(authorize=kite_sim.has_session) as simulator:
        settings.KITE_TICKER_URL = simulator.url
        yield simulator


@pytest.fixture
def socket_updates(monkeypatch) -> list[tuple[str, object, str]]:
    """Every order update the feeds handed over: (account id, data, "applied" | "ignored"), in order."""
    seen: list[tuple[str, object, str]] = []
    apply = postbacks.kite_socket_update_apply

    def recording(*, account_id: str, data: dict) -> str:
        result = apply(account_id=account_id, data=data)
        seen.append((account_id, data, result))
        return result

    def no_postbacks(**kwargs):
        raise AssertionError("no postback may reach this test")

    monkeypatch.setattr(postbacks, "kite_socket_update_apply", recording)
    monkeypatch.setattr(postbacks, "kite_postback_apply", no_postbacks)
    return seen


@pytest.fixture
def zerodha(kite_sim, trader_client, instruments) -> BrokerAccount:
    account, _ = connect_zerodha(trader_client)
    return BrokerAccount.objects.get(pk=account["id"])


def resting_limit_order(client, account: BrokerAccount) -> Order:
    response = place(client, account, order_type="LIMIT", price=1490)
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "OPEN"
    return Order.objects.get(pk=response.json()["id"])


def test_a_fill_pushed_on_the_ticker_fills_our_order(
    kite_sim, ticker_sim, zerodha, trader_client, publish_quote, socket_updates, eager_tasks
):
    publish_quote(EQUITY, "1500")
    order = resting_limit_order(trader_client, zerodha)
    feed = KiteFeed.from_account(zerodha, symbols=[EQUITY])

    with running(feed):
        assert ticker_sim.wait_until(lambda: ticker_sim.subscriptions() == {INFY: "full"})
        publish_quote(EQUITY, "1489")  # the exchange fills the resting order
        [sim_order] = at_exchange(order)
        assert sim_order.status == "FILLED" and sim_order.filled_quantity == 10
        order.refresh_from_db()
        assert order.status == OrderStatus.OPEN  # no postback, no reconcile: nothing has told us yet

        ticker_sim.push_order_update(kite_sim._kite_order(sim_order, KITE_USER))
        wait_until(lambda: socket_updates, what="the ticker's order update")

        ticker_sim.push_order_update(kite_sim._kite_order(sim_order, KITE_USER))  # a replay
        wait_until(lambda: len(socket_updates) == 2, what="the replayed order update")

    assert [(account_id, result) for account_id, _, result in socket_updates] == [(zerodha.pk, "applied")] * 2
    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED and order.filled_quantity == 10
    assert order.broker_order_id == sim_order.order_id
    assert order.events.last().source == "broker"
    [trade] = Trade.objects.filter(order=order)
    assert trade.quantity == 10 and trade.price == order.average_price
    assert Position.objects.get(account=zerodha, symbol=EQUITY).quantity == 10
    assert feed.connections_opened == 1


def test_updates_for_other_accounts_unknown_or_malformed_orders_are_ignored(
    kite_sim, ticker_sim, zerodha, trader_client, publish_quote, socket_updates, eager_tasks
):
    other_client = client_for(UserFactory())
    other_account = BrokerAccount.objects.get(pk=connect_zerodha(other_client)[0]["id"])
    publish_quote(EQUITY, "1500")
    ours = resting_limit_order(trader_client, zerodha)
    theirs = resting_limit_order(other_client, other_account)
    publish_quote(EQUITY, "1489")  # fills both at the exchange
    [our_sim], [their_sim] = at_exchange(ours), at_exchange(theirs)
    their_update = kite_sim._kite_order(their_sim, KITE_USER)
    our_update = kite_sim._kite_order(our_sim, KITE_USER)
    bad_updates = [
        their_update,  # another account's order, by its tag and by its Kite id
        {**their_update, "tag": None},
        {**our_update, "order_id": "250000000999999", "tag": "ord0000000000000000a"},  # an order we do not know
        {**our_update, "transaction_type": "HOLD"},  # ours, but not a Kite order
        {key: value for key, value in our_update.items() if key != "quantity"},
        ["not", "an", "order"],
    ]

    feed = KiteFeed.from_account(zerodha, symbols=[EQUITY])
    with running(feed):
        assert ticker_sim.wait_until(lambda: ticker_sim.subscriptions() == {INFY: "full"})
        for update in bad_updates:
            ticker_sim.push_order_update(update)
        wait_until(lambda: len(socket_updates) == len(bad_updates), what="the ignored order updates")

        for model_order in (ours, theirs):
            model_order.refresh_from_db()
            assert model_order.status == OrderStatus.OPEN and model_order.filled_quantity == 0
        assert not Trade.objects.exists()

        ticker_sim.push_order_update(our_update)  # the feed is still alive and applies the next good one
        wait_until(lambda: len(socket_updates) == len(bad_updates) + 1, what="our order update")

    assert [result for _, _, result in socket_updates] == ["ignored"] * len(bad_updates) + ["applied"]
    assert {account_id for account_id, _, _ in socket_updates} == {zerodha.pk}
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert ours.status == OrderStatus.FILLED and Trade.objects.filter(order=ours).count() == 1
    assert theirs.status == OrderStatus.OPEN and not Trade.objects.filter(order=theirs).exists()
    assert feed.connections_opened == 1

    # The same update applies on its own account's socket: only the account filter kept it out above.
    assert postbacks.kite_socket_update_apply(account_id=other_account.pk, data=their_update) == "applied"
    theirs.refresh_from_db()
    assert theirs.status == OrderStatus.FILLED


def test_a_failing_order_update_handler_does_not_stop_the_feed(ticker_sim, instruments):
    handled: list[dict] = []

    def handler(data: dict) -> None:
        if data.get("order_id") == "boom":
            raise RuntimeError("a bad update")
        handled.append(data)

    ticker_sim.register_token("socket-key", "socket-token")
    feed = KiteFeed(
        api_key="socket-key", access_token="socket-token", symbols=[EQUITY], url=ticker_sim.url, on_order_update=handler
    )
    with running(feed):
        assert ticker_sim.wait_until(lambda: ticker_sim.subscriptions() == {INFY: "full"})
        ticker_sim.push_order_update({"order_id": "boom"})
        ticker_sim.push_order_update({"order_id": "fine"})
        wait_until(lambda: handled, what="the update after the failing one")
    assert handled == [{"order_id": "fine"}]
    assert feed.connections_opened == 1
