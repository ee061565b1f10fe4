"""The order pipeline end to end through the API and the paper broker."""

import pytest

from orders.models import Order, OrderEvent, Position, Trade
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db(transaction=True)


def place(client, account, **fields):
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


def test_market_order_fills_and_builds_a_position(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    response = place(trader_client, paper)
    assert response.status_code == 201, response.json()
    order = response.json()
    assert order["status"] == "FILLED" and order["filled_quantity"] == 10
    assert [e["to_status"] for e in order["events"]] == ["PENDING", "SUBMITTING", "OPEN", "FILLED"]
    position = Position.objects.get(account=paper, symbol=EQUITY)
    assert position.quantity == 10
    assert Trade.objects.filter(order_id=order["id"]).count() == 1


def test_limit_order_rests_then_fills_on_a_tick(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    response = place(trader_client, paper, order_type="LIMIT", price=1490)
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "OPEN"
    market(EQUITY, "1489")
    order = Order.objects.get(pk=response.json()["id"])
    assert order.status == "FILLED", list(OrderEvent.objects.filter(order=order).values_list("to_status", "message"))
