"""The order routes through the API and the paper broker: placing, validation, reading, modifying, cancelling,
multi-leg orders, trades, and partial fills."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from brokers.models import AccountStatus, BrokerAccount, SimOrder
from brokers.services import broker_session_mark_expired
from orders.models import Order, OrderEvent, Position, Trade
from orders.tests.factories import EQUITY, OPTION, paper_account

# Most of these act within the request; the tests whose fills arrive later (a published quote crossing a resting
# order, announced to the pipeline after the exchange commits) run with real commits.
pytestmark = pytest.mark.django_db
AFTER_COMMIT = pytest.mark.django_db(transaction=True)

SBIN = "NSE:SBIN"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


DROP = object()  # leave the field out of the body


def order_body(account, **fields) -> dict:
    """A resting-friendly LIMIT buy of 10 INFY at 1500 unless told otherwise; DROP removes a field."""
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "LIMIT",
        "price": 1500,
        "product": "MIS",
    }
    body.update(fields)
    return {key: value for key, value in body.items() if value is not DROP}


def place(client, account, **fields):
    return client.post("/api/orders", order_body(account, **fields), format="json")


def placed(client, account, **fields) -> dict:
    response = place(client, account, **fields)
    assert response.status_code == 201, response.json()
    return response.json()


def D(value) -> Decimal:
    """A JSON number as the Decimal it stands for."""
    return Decimal(str(value))


def sim_order(order_id: str) -> SimOrder:
    """What the paper exchange holds for our order (it carries our order's compact id as its tag)."""
    return SimOrder.objects.get(tag=Order.objects.get(pk=order_id).broker_tag)


# --- placing: validation ----------------------------------------------------------------------------------------

VALIDATION_CASES = {
    "unknown field": ({"comment": "hi"}, "comment"),
    "bad side": ({"side": "HOLD"}, "side"),
    "bad order_type": ({"order_type": "STOP"}, "order_type"),
    "bad product": ({"product": "MTF"}, "product"),
    "bad validity": ({"validity": "GTC"}, "validity"),
    "zero quantity": ({"quantity": 0}, "quantity"),
    "quantity not a lot multiple": ({"symbol": OPTION, "product": "NRML", "price": 100, "quantity": 10}, "quantity"),
    "price off the tick": ({"price": "1500.03"}, "price"),
    "market with a price": ({"order_type": "MARKET"}, "price"),
    "limit without a price": ({"price": DROP}, "price"),
    "sl without a trigger": ({"order_type": "SL"}, "trigger_price"),
    "sl buy trigger above its price": ({"order_type": "SL", "trigger_price": 1510}, "trigger_price"),
    "sl sell trigger below its price": ({"order_type": "SL", "side": "SELL", "trigger_price": 1490}, "trigger_price"),
    "sl-m with a price": ({"order_type": "SL-M", "trigger_price": 1510}, "price"),
    "stop orders cannot be IOC": (
        {"order_type": "SL-M", "price": DROP, "trigger_price": 1510, "validity": "IOC"},
        "validity",
    ),
    "malformed symbol": ({"symbol": "INFY"}, "symbol"),
    "unknown symbol": ({"symbol": "NSE:NOSUCHCO"}, "symbol"),
    "index symbol": ({"symbol": "NSE:NIFTY 50"}, "symbol"),
    "expired instrument": (
        {"symbol": "NFO:NIFTYOLD24000CE", "product": "NRML", "price": 100, "quantity": 75},
        "symbol",
    ),
    "cnc on an option": ({"symbol": OPTION, "product": "CNC", "price": 100, "quantity": 75}, "product"),
    "nrml on equity": ({"product": "NRML"}, "product"),
    "buy target below the price": ({"target": 1490}, "target"),
    "sell target above the price": ({"side": "SELL", "target": 1510}, "target"),
    "buy stop-loss above the price": ({"stop_loss": 1510}, "stop_loss"),
    "sell stop-loss below the price": ({"side": "SELL", "stop_loss": 1490}, "stop_loss"),
    "target off the tick": ({"target": "1510.02"}, "target"),
    "trailing stop without a stop-loss": ({"trailing_stop": 5}, "trailing_stop"),
    "tag with bad characters": ({"tag": "my tag!"}, "tag"),
}


@pytest.mark.parametrize(("fields", "field"), list(VALIDATION_CASES.values()), ids=list(VALIDATION_CASES))
def test_invalid_orders_are_refused_naming_the_field_and_nothing_is_sent(trader_client, paper, market, fields, field):
    market(EQUITY, "1500")
    response = place(trader_client, paper, **fields)
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert set(body["errors"]) == {field}, body
    assert Order.objects.count() == 0
    assert SimOrder.objects.count() == 0


def test_an_order_on_another_users_account_is_not_found(trader_client, paper, market):
    market(EQUITY, "1500")
    stranger_account = paper_account(UserFactory())
    assert_error(place(trader_client, stranger_account), 404, "NOT_FOUND")
    assert_other_user_gets_404("POST", "/api/orders", order_body(paper))
    assert Order.objects.count() == 0


@pytest.mark.parametrize("how", ["expired", "login_required"])
def test_an_account_needing_a_broker_login_answers_409(trader_client, paper, market, how):
    market(EQUITY, "1500")
    if how == "expired":
        assert broker_session_mark_expired(account=paper, reason="test")
    else:
        BrokerAccount.objects.filter(pk=paper.pk).update(status=AccountStatus.LOGIN_REQUIRED)
    assert_error(place(trader_client, paper), 409, "BROKER_SESSION_EXPIRED")
    assert Order.objects.count() == 0
    assert SimOrder.objects.count() == 0


def test_placing_requires_authentication_and_a_trading_role(paper, market):
    market(EQUITY, "1500")
    assert_requires_auth("POST", "/api/orders", order_body(paper))
    viewer = UserFactory(role=Role.USER)
    viewer_account = paper_account(viewer)
    assert_error(place(client_for(viewer), viewer_account), 403, "PERMISSION_DENIED")
    assert Order.objects.count() == 0


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("PATCH", "/api/orders/{order_id}", {"price": 1495}),
        ("DELETE", "/api/orders/{order_id}", None),
        ("POST", "/api/orders/bulk", {"legs": []}),
        ("POST", "/api/positions/squareoff", {}),
    ],
)
def test_a_view_only_user_cannot_change_orders(instruments, market, method, url, data):
    market(EQUITY, "1500")
    viewer = UserFactory(role=Role.USER)
    account = paper_account(viewer)
    order = Order.objects.create(
        user=viewer,
        account=account,
        symbol=EQUITY,
        side="BUY",
        quantity=10,
        order_type="LIMIT",
        product="MIS",
        price=Decimal("1490"),
        status="OPEN",
    )
    client = client_for(viewer)
    path = url.format(order_id=order.pk)
    response = (
        getattr(client, method.lower())(path, data, format="json")
        if data is not None
        else getattr(client, method.lower())(path)
    )
    assert_error(response, 403, "PERMISSION_DENIED")
    order.refresh_from_db()
    assert (order.status, order.price) == ("OPEN", Decimal("1490"))
    # A viewer may still read.
    assert client.get(f"/api/orders/{order.pk}").status_code == 200


def test_insufficient_funds_are_refused_by_the_risk_check_before_the_broker(trader, trader_client, instruments, market):
    account = paper_account(trader, opening_balance="1000")
    market(EQUITY, "1500")
    # 10 x 1500 intraday needs 3,000 of margin; the account has 1,000.
    body = assert_error(place(trader_client, account), 422, "RISK_REJECTED")
    assert body["reason"] == "INSUFFICIENT_FUNDS" and "1000.00 is available" in body["detail"]
    assert not Order.objects.exists() and not SimOrder.objects.exists()


def test_a_broker_rejection_keeps_the_order_with_its_id(trader_client, paper, market):
    market(EQUITY, "1500")
    # Delivery sell with no holdings: our checks pass, the exchange refuses.
    response = place(trader_client, paper, side="SELL", product="CNC")
    body = assert_error(response, 422, "ORDER_REJECTED")
    assert "Insufficient holdings" in body["detail"]
    order_id = body["order_id"]
    listed = trader_client.get("/api/orders").json()
    assert [(o["id"], o["status"]) for o in listed["items"]] == [(order_id, "REJECTED")]
    detail = trader_client.get(f"/api/orders/{order_id}").json()
    assert detail["status"] == "REJECTED" and "Insufficient holdings" in detail["status_message"]
    assert detail["events"][-1]["to_status"] == "REJECTED"
    assert sim_order(order_id).status == "REJECTED"
    assert not Position.objects.exists() and not Trade.objects.exists()


def test_a_limit_order_is_placed_with_every_field_echoed(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(
        trader_client,
        paper,
        price=1490,
        target=1520,
        stop_loss=1480,
        trailing_stop=5,
        tag="swing-1",
        symbol="nse:infy ",
    )
    assert order["id"].startswith("ord_")
    assert order["status"] == "OPEN" and order["filled_quantity"] == 0 and order["pending_quantity"] == 10
    assert (order["symbol"], order["side"], order["order_type"], order["product"], order["validity"]) == (
        EQUITY,
        "BUY",
        "LIMIT",
        "MIS",
        "DAY",
    )
    assert (D(order["price"]), D(order["target"]), D(order["stop_loss"]), D(order["trailing_stop"])) == (
        Decimal("1490"),
        Decimal("1520"),
        Decimal("1480"),
        Decimal("5"),
    )
    assert order["tag"] == "swing-1" and order["account_id"] == paper.pk
    assert order["broker_order_id"]
    assert [e["to_status"] for e in order["events"]] == ["PENDING", "SUBMITTING", "OPEN"]
    exchange_order = sim_order(order["id"])
    assert exchange_order.order_id == order["broker_order_id"]
    assert (exchange_order.side, exchange_order.quantity, exchange_order.price) == ("BUY", 10, Decimal("1490"))


# --- reading ----------------------------------------------------------------------------------------------------


def test_an_order_is_read_with_its_events_and_only_by_its_owner(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, order_type="MARKET", price=DROP)
    response = trader_client.get(f"/api/orders/{order['id']}")
    assert response.status_code == 200
    detail = response.json()
    assert detail["id"] == order["id"] and detail["status"] == "FILLED"
    assert [e["to_status"] for e in detail["events"]] == ["PENDING", "SUBMITTING", "OPEN", "FILLED"]
    assert [e["from_status"] for e in detail["events"]] == [None, "PENDING", "SUBMITTING", "OPEN"]
    assert detail["events"][-1]["filled_quantity"] == 10
    assert D(detail["average_price"]) > 0
    assert_other_user_gets_404("GET", f"/api/orders/{order['id']}")
    assert_requires_auth("GET", f"/api/orders/{order['id']}")
    assert_error(trader_client.get("/api/orders/ord_doesnotexist"), 404, "NOT_FOUND")


@pytest.fixture
def order_book(trader, trader_client, paper, market):
    """Three orders of the trader on two accounts, one of another user, one created yesterday."""
    market(EQUITY, "1500")
    market(SBIN, "820")
    second = paper_account(trader, label="Second")
    resting = placed(trader_client, paper, price=1490, tag="dip")  # OPEN
    sold = placed(trader_client, paper, symbol=SBIN, side="SELL", order_type="MARKET", price=DROP)  # FILLED
    old = placed(trader_client, second, quantity=5, price=1480)  # OPEN, on the second account
    yesterday = timezone.now() - timedelta(days=1)
    Order.objects.filter(pk=old["id"]).update(created_at=yesterday)
    stranger = UserFactory()
    placed(client_for(stranger), paper_account(stranger))
    return {"resting": resting["id"], "sold": sold["id"], "old": old["id"], "second": second, "yesterday": yesterday}


def listed_ids(client, query: str = "") -> list[str]:
    response = client.get(f"/api/orders{query}")
    assert response.status_code == 200, response.json()
    return [item["id"] for item in response.json()["items"]]


def test_the_order_list_is_the_users_own_newest_first(trader_client, order_book):
    assert listed_ids(trader_client) == [order_book["sold"], order_book["resting"], order_book["old"]]


def test_the_order_list_filters(trader_client, order_book, paper):
    resting, sold, old = order_book["resting"], order_book["sold"], order_book["old"]
    assert listed_ids(trader_client, "?status=OPEN") == [resting, old]
    assert listed_ids(trader_client, "?status=FILLED") == [sold]
    assert listed_ids(trader_client, "?status=FILLED&status=OPEN") == [sold, resting, old]
    assert listed_ids(trader_client, "?status=CANCELLED") == []
    assert listed_ids(trader_client, f"?account_id={order_book['second'].pk}") == [old]
    assert listed_ids(trader_client, f"?account_id={paper.pk}") == [sold, resting]
    assert listed_ids(trader_client, "?symbol=nse:sbin") == [sold]
    assert listed_ids(trader_client, "?side=SELL") == [sold]
    assert listed_ids(trader_client, "?side=BUY") == [resting, old]
    assert listed_ids(trader_client, "?open=true") == [resting, old]
    assert listed_ids(trader_client, "?open=false") == [sold]
    since = (order_book["yesterday"] + timedelta(hours=1)).isoformat().replace("+", "%2B")
    assert listed_ids(trader_client, f"?from={since}") == [sold, resting]
    assert listed_ids(trader_client, f"?to={since}") == [old]
    assert listed_ids(trader_client, f"?from={since}&side=BUY&status=OPEN") == [resting]
    assert listed_ids(trader_client, "?tag=dip") == [resting]
    assert listed_ids(trader_client, "?source=api") == [sold, resting, old]
    assert listed_ids(trader_client, "?source=strategy") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=WORKING", "status"),
        ("side=HOLD", "side"),
        ("open=perhaps", "open"),
        ("from=yesterday", "from"),
        ("to=2024-13-45", "to"),
        ("from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z", "from"),
        ("symbol=INFY", "symbol"),
        ("colour=red", "colour"),
        ("page_size=101", "page_size"),
        ("page_size=0", "page_size"),
        ("page=0", "page"),
        ("page=two", "page"),
    ],
)
def test_bad_list_filters_answer_400(trader_client, paper, query, field):
    body = assert_error(trader_client.get(f"/api/orders?{query}"), 400, "VALIDATION_ERROR")
    assert field in body["errors"], body


def test_the_order_list_is_paginated(trader_client, order_book):
    first = trader_client.get("/api/orders?page_size=2").json()
    assert {key: first[key] for key in ("page", "page_size", "total", "total_pages")} == {
        "page": 1,
        "page_size": 2,
        "total": 3,
        "total_pages": 2,
    }
    second = trader_client.get("/api/orders?page_size=2&page=2").json()
    assert second["page"] == 2 and len(second["items"]) == 1
    assert [o["id"] for o in first["items"] + second["items"]] == [
        order_book["sold"],
        order_book["resting"],
        order_book["old"],
    ]
    past_the_end = trader_client.get("/api/orders?page_size=2&page=3").json()
    assert past_the_end["items"] == [] and past_the_end["total"] == 3
    default = trader_client.get("/api/orders").json()
    assert default["page"] == 1 and default["page_size"] == 20
    assert trader_client.get("/api/orders?page_size=100").status_code == 200
    assert_requires_auth("GET", "/api/orders")


def test_an_empty_order_list(trader_client):
    assert trader_client.get("/api/orders").json() == {
        "items": [],
        "page": 1,
        "page_size": 20,
        "total": 0,
        "total_pages": 0,
    }


# --- modifying --------------------------------------------------------------------------------------------------


def test_a_resting_limit_order_is_modified_here_and_at_the_exchange(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, price=1490)
    response = trader_client.patch(f"/api/orders/{order['id']}", {"price": 1495, "quantity": 20}, format="json")
    assert response.status_code == 200, response.json()
    modified = response.json()
    assert (D(modified["price"]), modified["quantity"], modified["status"]) == (Decimal("1495"), 20, "OPEN")
    assert modified["pending_quantity"] == 20
    assert [e["to_status"] for e in modified["events"]][-2:] == ["PENDING_MODIFY", "OPEN"]
    exchange_order = sim_order(order["id"])
    assert (exchange_order.price, exchange_order.quantity, exchange_order.status) == (Decimal("1495"), 20, "OPEN")
    assert exchange_order.modifications == 1
    stored = Order.objects.get(pk=order["id"])
    assert (stored.price, stored.quantity, stored.status) == (Decimal("1495"), 20, "OPEN")


def test_modifying_into_the_market_fills(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, price=1490)
    response = trader_client.patch(f"/api/orders/{order['id']}", {"price": 1501}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "FILLED"
    assert D(response.json()["average_price"]) == Decimal("1500.05")  # the ask, not worse than the limit
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 10


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "non_field_errors"),
        ({"price": "1495.03"}, "price"),
        ({"price": -5}, "price"),
        ({"quantity": 0}, "quantity"),
        ({"order_type": "STOP"}, "order_type"),
        ({"order_type": "SL"}, "trigger_price"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_modifications_answer_400_and_change_nothing(trader_client, paper, market, data, field):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, price=1490)
    body = assert_error(trader_client.patch(f"/api/orders/{order['id']}", data, format="json"), 400, "VALIDATION_ERROR")
    assert field in body["errors"], body
    stored = Order.objects.get(pk=order["id"])
    assert (stored.price, stored.quantity, stored.status) == (Decimal("1490"), 10, "OPEN")
    exchange_order = sim_order(order["id"])
    assert (exchange_order.price, exchange_order.quantity, exchange_order.modifications) == (Decimal("1490"), 10, 0)


def test_an_option_modification_must_keep_the_lot_size(trader_client, paper, market):
    market(OPTION, "100")
    order = placed(trader_client, paper, symbol=OPTION, product="NRML", price=95, quantity=75)
    response = trader_client.patch(f"/api/orders/{order['id']}", {"quantity": 100}, format="json")
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert "quantity" in body["errors"]
    response = trader_client.patch(f"/api/orders/{order['id']}", {"quantity": 150}, format="json")
    assert response.status_code == 200, response.json()
    assert sim_order(order["id"]).quantity == 150


def test_a_stop_orders_trigger_is_modified_at_the_exchange(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, order_type="SL", price=1525, trigger_price=1520)
    assert order["status"] == "OPEN" and sim_order(order["id"]).status == "TRIGGER_PENDING"
    response = trader_client.patch(f"/api/orders/{order['id']}", {"trigger_price": 1510}, format="json")
    assert response.status_code == 200, response.json()
    assert (D(response.json()["trigger_price"]), D(response.json()["price"])) == (Decimal("1510"), Decimal("1525"))
    exchange_order = sim_order(order["id"])
    assert (exchange_order.trigger_price, exchange_order.price) == (Decimal("1510"), Decimal("1525"))
    # A buy stop's trigger may not go above its limit price.
    body = assert_error(
        trader_client.patch(f"/api/orders/{order['id']}", {"trigger_price": 1530}, format="json"),
        400,
        "VALIDATION_ERROR",
    )
    assert "trigger_price" in body["errors"]
    assert sim_order(order["id"]).trigger_price == Decimal("1510")


def test_a_filled_order_cannot_be_modified(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, order_type="MARKET", price=DROP)
    assert order["status"] == "FILLED"
    assert_error(
        trader_client.patch(f"/api/orders/{order['id']}", {"quantity": 20}, format="json"), 409, "INVALID_STATE"
    )
    assert Order.objects.get(pk=order["id"]).quantity == 10


def test_modifying_someone_elses_order_or_anonymously_is_refused(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, price=1490)
    assert_other_user_gets_404("PATCH", f"/api/orders/{order['id']}", {"price": 1495})
    assert_requires_auth("PATCH", f"/api/orders/{order['id']}", {"price": 1495})
    assert sim_order(order["id"]).price == Decimal("1490")


@AFTER_COMMIT
def test_a_filled_entry_lists_its_target_and_stop_loss_legs(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    entry = placed(trader_client, paper, order_type="MARKET", price=DROP, target=1520, stop_loss=1480)
    assert entry["status"] == "FILLED"
    detail = trader_client.get(f"/api/orders/{entry['id']}").json()
    exits = {Order.objects.get(pk=pk).role: Order.objects.get(pk=pk) for pk in detail["exit_ids"]}
    assert set(exits) == {"target", "stop_loss"}
    target, stop = exits["target"], exits["stop_loss"]
    assert (target.side, target.quantity, target.order_type, target.price, target.status) == (
        "SELL",
        10,
        "LIMIT",
        Decimal("1520"),
        "OPEN",
    )
    assert (stop.side, stop.quantity, stop.order_type, stop.trigger_price, stop.status) == (
        "SELL",
        10,
        "SL-M",
        Decimal("1480"),
        "OPEN",
    )
    assert all(leg.parent_id == entry["id"] for leg in exits.values())
    market(EQUITY, "1521")  # the target fills; its sibling is cancelled
    assert Order.objects.get(pk=target.pk).status == "FILLED"
    assert Order.objects.get(pk=stop.pk).status == "CANCELLED"
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0


# --- cancelling -------------------------------------------------------------------------------------------------


def test_a_resting_order_is_cancelled(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, price=1490)
    response = trader_client.delete(f"/api/orders/{order['id']}")
    assert response.status_code == 200, response.json()
    cancelled = response.json()
    assert cancelled["status"] == "CANCELLED" and cancelled["pending_quantity"] == 0
    assert [e["to_status"] for e in cancelled["events"]][-2:] == ["PENDING_CANCEL", "CANCELLED"]
    assert sim_order(order["id"]).status == "CANCELLED"
    # Twice: already final.
    assert_error(trader_client.delete(f"/api/orders/{order['id']}"), 409, "INVALID_STATE")
    assert OrderEvent.objects.filter(order_id=order["id"], to_status="CANCELLED").count() == 1


def test_a_filled_order_cannot_be_cancelled(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, order_type="MARKET", price=DROP)
    body = assert_error(trader_client.delete(f"/api/orders/{order['id']}"), 409, "INVALID_STATE")
    assert "FILLED" in body["detail"]
    assert Order.objects.get(pk=order["id"]).status == "FILLED"


def test_cancelling_someone_elses_order_or_anonymously_is_refused(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, price=1490)
    assert_other_user_gets_404("DELETE", f"/api/orders/{order['id']}")
    assert_requires_auth("DELETE", f"/api/orders/{order['id']}")
    assert Order.objects.get(pk=order["id"]).status == "OPEN"
    assert sim_order(order["id"]).status == "OPEN"


# --- multi-leg --------------------------------------------------------------------------------------------------


def leg(account, **fields) -> dict:
    return order_body(account, **fields)


def test_bulk_places_every_leg_buys_first(trader_client, paper, market):
    market(EQUITY, "1500")
    market(SBIN, "820")
    legs = [leg(paper, symbol=SBIN, side="SELL", price=830), leg(paper, price=1490)]
    response = trader_client.post("/api/orders/bulk", {"legs": legs}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "placed" and body["all_or_none"] is False
    assert [(r["index"], r["status"], r["order"]["side"], r["order"]["status"]) for r in body["legs"]] == [
        (0, "placed", "SELL", "OPEN"),
        (1, "placed", "BUY", "OPEN"),
    ]
    sell, buy = (sim_order(r["order"]["id"]) for r in body["legs"])
    assert buy.pk < sell.pk  # the exchange saw the buy first
    assert buy.created_at <= sell.created_at


@pytest.mark.parametrize(
    ("bad_leg", "field"),
    [
        ({"symbol": OPTION, "product": "NRML", "price": 100, "quantity": 10}, "legs.1.quantity"),
        ({"price": "1490.02"}, "legs.1.price"),
        ({"side": "HOLD"}, "legs.1.side"),
        ({"symbol": "INFY"}, "legs.1.symbol"),
        ({"symbol": "NSE:NOSUCHCO"}, "legs.1.symbol"),
    ],
)
def test_bulk_with_an_invalid_leg_sends_nothing(trader_client, paper, market, bad_leg, field):
    market(EQUITY, "1500")
    legs = [leg(paper, price=1490), leg(paper, **bad_leg)]
    body = assert_error(trader_client.post("/api/orders/bulk", {"legs": legs}, format="json"), 400, "VALIDATION_ERROR")
    assert set(body["errors"]) == {field}, body
    assert Order.objects.count() == 0
    assert SimOrder.objects.count() == 0


def test_bulk_leg_on_another_users_account_sends_nothing(trader_client, paper, market):
    market(EQUITY, "1500")
    stranger_account = paper_account(UserFactory())
    legs = [leg(paper, price=1490), leg(stranger_account)]
    body = assert_error(trader_client.post("/api/orders/bulk", {"legs": legs}, format="json"), 400, "VALIDATION_ERROR")
    assert "legs.1.account_id" in body["errors"]
    assert Order.objects.count() == 0


def test_bulk_all_or_none_rolls_back_when_the_broker_rejects_a_leg(trader_client, paper, market):
    market(EQUITY, "1500")
    market(SBIN, "820")
    legs = [
        leg(paper, side="SELL", price=1510),  # rests; sent last (a sell)
        leg(paper, price=1490),  # rests; sent first
        leg(paper, symbol=SBIN, price=800, quantity=1_000_000),  # far beyond the funds: the risk check refuses it
    ]
    response = trader_client.post("/api/orders/bulk", {"legs": legs, "all_or_none": True}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "rolled_back" and body["all_or_none"] is True
    statuses = [r["status"] for r in body["legs"]]
    assert statuses == ["not_sent", "cancelled", "failed"]
    assert body["legs"][0]["order"] is None
    cancelled = body["legs"][1]["order"]
    assert cancelled["status"] == "CANCELLED"
    assert sim_order(cancelled["id"]).status == "CANCELLED"
    assert body["legs"][2]["error_code"] == "RISK_REJECTED" and "available" in body["legs"][2]["detail"]
    assert body["legs"][2]["order"] is None
    assert Order.objects.count() == 1  # neither the sell leg nor the refused one became an order
    assert not Order.objects.filter(status__in=["OPEN", "PARTIALLY_FILLED"]).exists()


def test_bulk_without_all_or_none_keeps_the_placed_legs(trader_client, paper, market):
    market(EQUITY, "1500")
    market(SBIN, "820")
    # The second leg is a delivery sell with no holdings: it passes our checks and the exchange refuses it.
    legs = [leg(paper, price=1490), leg(paper, symbol=SBIN, side="SELL", product="CNC", price=820)]
    response = trader_client.post("/api/orders/bulk", {"legs": legs}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "partial"
    assert [r["status"] for r in body["legs"]] == ["placed", "failed"]
    assert body["legs"][0]["order"]["status"] == "OPEN"
    assert sim_order(body["legs"][0]["order"]["id"]).status == "OPEN"
    assert body["legs"][1]["order"]["status"] == "REJECTED" and body["legs"][1]["error_code"] == "ORDER_REJECTED"


@pytest.mark.parametrize("data", [{"legs": []}, {}, {"legs": [{}]}, {"legs": "x"}])
def test_bulk_needs_legs(trader_client, paper, data):
    body = assert_error(trader_client.post("/api/orders/bulk", data, format="json"), 400, "VALIDATION_ERROR")
    assert any(key.startswith("legs") for key in body["errors"]), body


def test_bulk_requires_authentication(paper):
    assert_requires_auth("POST", "/api/orders/bulk", {"legs": [order_body(paper)]})


# --- fills, trades and positions ---------------------------------------------------------------------------------


@AFTER_COMMIT
def test_a_limit_buy_fills_in_two_steps_then_a_partial_sell_realizes_pnl(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500", depth=4)  # ask 1500.05 for 4
    order = placed(trader_client, paper, price=1510)
    assert (order["status"], order["filled_quantity"], D(order["average_price"])) == (
        "PARTIALLY_FILLED",
        4,
        Decimal("1500.05"),
    )
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 4

    market(EQUITY, "1502", depth=1000)  # ask 1502.05: the resting 6 fill
    stored = Order.objects.get(pk=order["id"])
    assert (stored.status, stored.filled_quantity, stored.average_price) == ("FILLED", 10, Decimal("1501.25"))
    trades = list(Trade.objects.filter(order=stored).order_by("cumulative_quantity"))
    assert [(t.quantity, t.price, t.cumulative_quantity) for t in trades] == [
        (4, Decimal("1500.05"), 4),
        (6, Decimal("1502.05"), 10),
    ]
    position = Position.objects.get(account=paper, symbol=EQUITY, product="MIS")
    assert (position.quantity, position.average_price) == (10, Decimal("1501.25"))
    assert position.day_buy_value == Decimal("15012.50")
    events = [e["to_status"] for e in trader_client.get(f"/api/orders/{order['id']}").json()["events"]]
    assert events == ["PENDING", "SUBMITTING", "OPEN", "PARTIALLY_FILLED", "FILLED"]

    market(EQUITY, "1510")  # bid 1509.95
    sell = placed(trader_client, paper, side="SELL", quantity=4, price=1505)
    assert sell["status"] == "FILLED" and D(sell["average_price"]) == Decimal("1509.95")
    position.refresh_from_db()
    assert position.quantity == 6
    assert position.average_price == Decimal("1501.25")
    assert position.realized_pnl == Decimal("34.80")  # 4 x (1509.95 - 1501.25)
    assert position.day_realized_pnl == Decimal("34.80")

    positions = trader_client.get("/api/positions").json()
    (item,) = positions["items"]
    assert (item["quantity"], D(item["average_price"]), D(item["realized_pnl"])) == (
        6,
        Decimal("1501.25"),
        Decimal("34.80"),
    )
    assert (D(item["ltp"]), D(item["unrealized_pnl"])) == (Decimal("1510"), Decimal("52.50"))
    assert (item["day_buy_quantity"], item["day_sell_quantity"], item["day_quantity"]) == (10, 4, 6)


def test_a_partially_filled_order_is_modified_then_cancelled_keeping_its_fills(trader_client, paper, market):
    market(EQUITY, "1500", depth=4)
    order = placed(trader_client, paper, price=1510)
    assert (order["status"], order["filled_quantity"]) == ("PARTIALLY_FILLED", 4)
    market(EQUITY, "1520", depth=4)  # above the limit: nothing more fills
    url = f"/api/orders/{order['id']}"
    body = assert_error(trader_client.patch(url, {"quantity": 4}, format="json"), 400, "VALIDATION_ERROR")
    assert "quantity" in body["errors"]
    response = trader_client.patch(url, {"quantity": 8}, format="json")
    assert response.status_code == 200, response.json()
    modified = response.json()
    assert (modified["status"], modified["quantity"], modified["filled_quantity"], modified["pending_quantity"]) == (
        "PARTIALLY_FILLED",
        8,
        4,
        4,
    )
    assert (sim_order(order["id"]).quantity, sim_order(order["id"]).filled_quantity) == (8, 4)
    cancelled = trader_client.delete(url).json()
    assert (cancelled["status"], cancelled["filled_quantity"], cancelled["pending_quantity"]) == ("CANCELLED", 4, 0)
    assert D(cancelled["average_price"]) == Decimal("1500.05")
    assert sim_order(order["id"]).status == "CANCELLED"
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 4
    assert Trade.objects.filter(order_id=order["id"]).count() == 1


@AFTER_COMMIT
def test_a_market_buy_fills_across_ticks_with_slippage(trader_client, paper, market, eager_tasks, settings):
    settings.PAPER_SLIPPAGE_BPS = 5
    market(EQUITY, "1500", depth=4)  # ask 1500.05 + 5 bps = 1500.80 on the tick
    order = placed(trader_client, paper, order_type="MARKET", price=DROP)
    assert (order["status"], order["filled_quantity"]) == ("PARTIALLY_FILLED", 4)
    market(EQUITY, "1502", depth=1000)  # ask 1502.05 + 5 bps = 1502.80
    stored = Order.objects.get(pk=order["id"])
    assert (stored.status, stored.filled_quantity, stored.average_price) == ("FILLED", 10, Decimal("1502.00"))
    assert [(t.quantity, t.price) for t in Trade.objects.filter(order=stored).order_by("cumulative_quantity")] == [
        (4, Decimal("1500.80")),
        (6, Decimal("1502.80")),
    ]
    position = Position.objects.get(account=paper, symbol=EQUITY)
    assert (position.quantity, position.average_price) == (10, Decimal("1502.00"))


def test_trades_are_listed_and_filtered(trader, trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    market(SBIN, "820")
    second = paper_account(trader, label="Second")
    infy = placed(trader_client, paper, order_type="MARKET", price=DROP)
    sbin = placed(trader_client, second, symbol=SBIN, side="SELL", order_type="MARKET", price=DROP, quantity=3)
    stranger = UserFactory()
    placed(client_for(stranger), paper_account(stranger), order_type="MARKET", price=DROP)

    def trade_ids(query: str = "") -> list[tuple[str, int]]:
        response = trader_client.get(f"/api/trades{query}")
        assert response.status_code == 200, response.json()
        return [(t["order_id"], t["quantity"]) for t in response.json()["items"]]

    assert trade_ids() == [(sbin["id"], 3), (infy["id"], 10)]
    assert trade_ids(f"?order_id={infy['id']}") == [(infy["id"], 10)]
    assert trade_ids("?symbol=nse:sbin") == [(sbin["id"], 3)]
    assert trade_ids(f"?account_id={paper.pk}") == [(infy["id"], 10)]
    future = (timezone.now() + timedelta(hours=1)).isoformat().replace("+", "%2B")
    assert trade_ids(f"?from={future}") == []
    assert trade_ids(f"?to={future}") == [(sbin["id"], 3), (infy["id"], 10)]
    page = trader_client.get("/api/trades?page_size=1").json()
    assert (page["total"], page["total_pages"], len(page["items"])) == (2, 2, 1)
    trade = trader_client.get(f"/api/trades?order_id={sbin['id']}").json()["items"][0]
    assert trade["id"].startswith("trd_") and trade["side"] == "SELL" and trade["account_id"] == second.pk
    assert D(trade["value"]) == D(trade["price"]) * 3
    assert_error(trader_client.get("/api/trades?from=soon"), 400, "VALIDATION_ERROR")
    assert_error(trader_client.get("/api/trades?page_size=101"), 400, "VALIDATION_ERROR")
    assert_requires_auth("GET", "/api/trades")
