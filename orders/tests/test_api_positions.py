"""Positions, square-off and the portfolio through the API and the paper broker."""

from decimal import Decimal

import pytest

from accounts.tests.factories import UserFactory
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from brokers.exchange import holding_add
from brokers.models import SimAccount, SimOrder
from brokers.services import broker_session_mark_expired
from orders.models import Order, OrderEvent, Position
from orders.tests.factories import EQUITY, paper_account

pytestmark = pytest.mark.django_db
AFTER_COMMIT = pytest.mark.django_db(transaction=True)

SBIN = "NSE:SBIN"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def D(value) -> Decimal:
    return Decimal(str(value))


def place(client, account, **fields) -> dict:
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    response = client.post("/api/orders", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def fill(client, account, *, symbol=EQUITY, side="BUY", quantity=10, limit) -> dict:
    """A marketable LIMIT order: it fills at the touch (no slippage), so prices are exact."""
    order = place(client, account, symbol=symbol, side=side, quantity=quantity, order_type="LIMIT", price=limit)
    assert order["status"] == "FILLED", order
    return order


@pytest.fixture
def second(trader, instruments):
    return paper_account(trader, label="Second")


@pytest.fixture
def book(trader_client, paper, second, market):
    """Long 10 INFY @ 1500.05 and short 5 SBIN @ 819.95 on the first account, long 20 INFY @ 1520.05 on the second;
    the market is then INFY 1520, SBIN 820."""
    market(EQUITY, "1500")
    fill(trader_client, paper, limit=1501)  # ask 1500.05
    market(SBIN, "820")
    fill(trader_client, paper, symbol=SBIN, side="SELL", quantity=5, limit=819)  # bid 819.95
    market(EQUITY, "1520")
    fill(trader_client, second, quantity=20, limit=1521)  # ask 1520.05


def by_key(items: list[dict]) -> dict[tuple[str, str], dict]:
    return {(item["account_id"], item["symbol"]): item for item in items}


# --- positions --------------------------------------------------------------------------------------------------


def test_positions_per_account_consolidated_and_totals(trader_client, paper, second, book):
    response = trader_client.get("/api/positions")
    assert response.status_code == 200, response.json()
    body = response.json()
    items = by_key(body["items"])
    assert set(items) == {(paper.pk, EQUITY), (paper.pk, SBIN), (second.pk, EQUITY)}
    expected = {
        (paper.pk, EQUITY): (10, "1500.05", "1520", "199.50"),
        (paper.pk, SBIN): (-5, "819.95", "820", "-0.25"),
        (second.pk, EQUITY): (20, "1520.05", "1520", "-1.00"),
    }
    for key, (quantity, average, ltp, unrealized) in expected.items():
        item = items[key]
        assert (item["quantity"], D(item["average_price"]), D(item["ltp"]), D(item["unrealized_pnl"])) == (
            quantity,
            Decimal(average),
            Decimal(ltp),
            Decimal(unrealized),
        ), item
        assert item["product"] == "MIS" and D(item["realized_pnl"]) == 0
    assert items[(paper.pk, SBIN)]["day_sell_quantity"] == 5
    assert D(items[(paper.pk, SBIN)]["day_sell_value"]) == Decimal("4099.75")

    consolidated = {(group["symbol"], group["product"]): group for group in body["consolidated"]}
    assert set(consolidated) == {(EQUITY, "MIS"), (SBIN, "MIS")}
    infy = consolidated[(EQUITY, "MIS")]
    assert infy["quantity"] == 30
    assert D(infy["average_price"]) == Decimal("1513.38")  # (10 x 1500.05 + 20 x 1520.05) / 30
    assert D(infy["ltp"]) == Decimal("1520") and D(infy["unrealized_pnl"]) == Decimal("198.50")
    assert infy["accounts"] == sorted([paper.pk, second.pk])
    sbin = consolidated[(SBIN, "MIS")]
    assert (sbin["quantity"], D(sbin["average_price"]), sbin["accounts"]) == (-5, Decimal("819.95"), [paper.pk])

    totals = body["totals"]
    assert (D(totals["realized_pnl"]), D(totals["unrealized_pnl"]), D(totals["day_pnl"])) == (
        Decimal("0"),
        Decimal("198.25"),
        Decimal("198.25"),
    )
    assert totals["open_positions"] == 3


def test_positions_follow_the_published_quote(trader_client, paper, second, book, market):
    market(EQUITY, "1530")
    items = by_key(trader_client.get("/api/positions").json()["items"])
    assert D(items[(paper.pk, EQUITY)]["ltp"]) == Decimal("1530")
    assert D(items[(paper.pk, EQUITY)]["unrealized_pnl"]) == Decimal("299.50")
    assert D(items[(second.pk, EQUITY)]["unrealized_pnl"]) == Decimal("199.00")


def test_positions_of_one_account(trader_client, paper, second, book):
    body = trader_client.get(f"/api/positions?account_id={second.pk}").json()
    assert [(item["account_id"], item["symbol"], item["quantity"]) for item in body["items"]] == [
        (second.pk, EQUITY, 20)
    ]
    assert [group["accounts"] for group in body["consolidated"]] == [[second.pk]]
    assert D(body["totals"]["unrealized_pnl"]) == Decimal("-1.00") and body["totals"]["open_positions"] == 1


def test_closed_positions_keep_their_realized_pnl_and_open_hides_them(trader_client, paper, second, book, market):
    market(SBIN, "810")
    fill(trader_client, paper, symbol=SBIN, side="BUY", quantity=5, limit=811)  # ask 810.05 closes the short
    items = by_key(trader_client.get("/api/positions").json()["items"])
    closed = items[(paper.pk, SBIN)]
    assert closed["quantity"] == 0 and D(closed["realized_pnl"]) == Decimal("49.50")  # 5 x (819.95 - 810.05)
    assert D(closed["unrealized_pnl"]) == 0
    body = trader_client.get("/api/positions?open=true").json()
    assert {(item["account_id"], item["symbol"]) for item in body["items"]} == {(paper.pk, EQUITY), (second.pk, EQUITY)}
    everything = trader_client.get("/api/positions").json()
    assert D(everything["totals"]["realized_pnl"]) == Decimal("49.50")
    assert everything["totals"]["open_positions"] == 2


def test_positions_are_private(trader_client, paper, book):
    assert_other_user_gets_404("GET", f"/api/positions?account_id={paper.pk}")
    stranger = client_for(UserFactory())
    assert stranger.get("/api/positions").json()["items"] == []
    assert_error(trader_client.get("/api/positions?account_id=acc_nosuchaccount"), 404, "NOT_FOUND")
    assert_error(trader_client.get("/api/positions?open=perhaps"), 400, "VALIDATION_ERROR")
    assert_requires_auth("GET", "/api/positions")


# --- square-off -------------------------------------------------------------------------------------------------


def squareoff(client, **data):
    return client.post("/api/positions/squareoff", data, format="json")


def open_positions() -> dict[tuple[str, str], int]:
    return {(p.account_id, p.symbol): p.quantity for p in Position.objects.exclude(quantity=0)}


def test_square_off_everything_then_again_places_nothing(trader_client, paper, second, book):
    response = squareoff(trader_client)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["cancelled"] == [] and body["failed"] == []
    closing = {
        (o["account_id"], o["symbol"]): (o["side"], o["quantity"], o["status"], o["role"], o["order_type"])
        for o in body["placed"]
    }
    assert closing == {
        (paper.pk, EQUITY): ("SELL", 10, "FILLED", "square_off", "MARKET"),
        (paper.pk, SBIN): ("BUY", 5, "FILLED", "square_off", "MARKET"),
        (second.pk, EQUITY): ("SELL", 20, "FILLED", "square_off", "MARKET"),
    }
    assert open_positions() == {}
    orders_before = Order.objects.count()
    again = squareoff(trader_client)
    assert again.status_code == 200
    assert again.json() == {"cancelled": [], "placed": [], "failed": []}
    assert Order.objects.count() == orders_before


def test_square_off_one_account(trader_client, paper, second, book):
    body = squareoff(trader_client, account_id=second.pk).json()
    assert [(o["account_id"], o["symbol"], o["side"], o["quantity"]) for o in body["placed"]] == [
        (second.pk, EQUITY, "SELL", 20)
    ]
    assert open_positions() == {(paper.pk, EQUITY): 10, (paper.pk, SBIN): -5}


def test_square_off_one_symbol(trader_client, paper, second, book):
    body = squareoff(trader_client, symbol="nse:sbin").json()
    assert [(o["account_id"], o["symbol"], o["side"], o["quantity"]) for o in body["placed"]] == [
        (paper.pk, SBIN, "BUY", 5)
    ]
    assert open_positions() == {(paper.pk, EQUITY): 10, (second.pk, EQUITY): 20}


def test_square_off_cancels_pending_orders_in_scope_first(trader_client, paper, second, book):
    infy_bid = place(trader_client, paper, order_type="LIMIT", price=1400)  # rests
    sbin_offer = place(trader_client, paper, symbol=SBIN, side="SELL", order_type="LIMIT", price=900)  # rests
    body = squareoff(trader_client, symbol=EQUITY).json()
    assert [o["id"] for o in body["cancelled"]] == [infy_bid["id"]]
    assert body["cancelled"][0]["status"] == "CANCELLED"
    assert SimOrder.objects.get(tag=Order.objects.get(pk=infy_bid["id"]).broker_tag).status == "CANCELLED"
    assert Order.objects.get(pk=sbin_offer["id"]).status == "OPEN"  # another symbol: out of scope
    cancel_asked = OrderEvent.objects.get(order_id=infy_bid["id"], to_status="PENDING_CANCEL").created_at
    placed = Order.objects.filter(pk__in=[o["id"] for o in body["placed"]])
    assert placed.count() == 2 and all(order.created_at >= cancel_asked for order in placed)
    assert open_positions() == {(paper.pk, SBIN): -5}

    body = squareoff(trader_client).json()
    assert [o["id"] for o in body["cancelled"]] == [sbin_offer["id"]]
    assert [(o["symbol"], o["side"], o["quantity"]) for o in body["placed"]] == [(SBIN, "BUY", 5)]
    assert open_positions() == {}


@AFTER_COMMIT
def test_square_off_twice_while_the_close_is_still_working_places_nothing(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    fill(trader_client, paper, limit=1501)
    market(EQUITY, "1500", depth=4)  # only 4 can be sold now
    first = squareoff(trader_client).json()
    (closing,) = first["placed"]
    assert (closing["side"], closing["quantity"], closing["filled_quantity"], closing["status"]) == (
        "SELL",
        10,
        4,
        "PARTIALLY_FILLED",
    )
    assert open_positions() == {(paper.pk, EQUITY): 6}
    second_call = squareoff(trader_client).json()
    assert second_call == {"cancelled": [], "placed": [], "failed": []}
    assert Order.objects.filter(role="square_off").count() == 1
    market(EQUITY, "1500", depth=1000)  # the rest of the close fills
    assert Order.objects.get(pk=closing["id"]).status == "FILLED"
    assert open_positions() == {}


def test_square_off_input_and_ownership(trader_client, paper, second, book):
    body = assert_error(squareoff(trader_client, symbol="INFY"), 400, "VALIDATION_ERROR")
    assert "symbol" in body["errors"]
    body = assert_error(squareoff(trader_client, everything=True), 400, "VALIDATION_ERROR")
    assert "everything" in body["errors"]
    assert_other_user_gets_404("POST", "/api/positions/squareoff", {"account_id": paper.pk})
    assert_error(squareoff(trader_client, account_id="acc_nosuchaccount"), 404, "NOT_FOUND")
    assert_requires_auth("POST", "/api/positions/squareoff", {})
    assert open_positions() == {(paper.pk, EQUITY): 10, (paper.pk, SBIN): -5, (second.pk, EQUITY): 20}
    assert not Order.objects.filter(role="square_off").exists()


def test_a_stranger_squaring_off_touches_nothing_of_ours(paper, book):
    stranger = client_for(UserFactory())
    response = squareoff(stranger)
    assert response.status_code == 200
    assert response.json() == {"cancelled": [], "placed": [], "failed": []}
    assert len(open_positions()) == 3


# --- portfolio --------------------------------------------------------------------------------------------------


def test_portfolio_holdings_positions_and_totals(trader, trader_client, paper, market):
    exchange_account = SimAccount.objects.get(venue="paper", client_id=paper.pk)
    holding_add(account=exchange_account, symbol=EQUITY, quantity=5, average_price=Decimal("1400"))
    holding_add(account=exchange_account, symbol=SBIN, quantity=10, average_price=Decimal("850"))
    market(EQUITY, "1500")
    market(SBIN, "820")
    fill(trader_client, paper, limit=1501)  # a 10 INFY intraday position @ 1500.05
    expired = paper_account(trader, label="Expired")
    assert broker_session_mark_expired(account=expired, reason="test")

    response = trader_client.get("/api/portfolio")
    assert response.status_code == 200, response.json()
    body = response.json()
    holdings = {h["symbol"]: h for h in body["holdings"]}
    assert set(holdings) == {EQUITY, SBIN}
    infy, sbin = holdings[EQUITY], holdings[SBIN]
    assert (infy["account_id"], infy["quantity"], D(infy["average_price"]), D(infy["ltp"])) == (
        paper.pk,
        5,
        Decimal("1400"),
        Decimal("1500"),
    )
    assert (D(infy["value"]), D(infy["unrealized_pnl"])) == (Decimal("7500"), Decimal("500"))
    assert (D(sbin["value"]), D(sbin["unrealized_pnl"])) == (Decimal("8200"), Decimal("-300"))
    assert D(body["holdings_value"]) == Decimal("15700")
    assert D(body["holdings_unrealized_pnl"]) == Decimal("200")
    assert [(p["account_id"], p["symbol"], p["quantity"]) for p in body["positions"]] == [(paper.pk, EQUITY, 10)]
    assert D(body["positions"][0]["unrealized_pnl"]) == Decimal("-0.50")  # 10 x (1500 - 1500.05)
    assert D(body["totals"]["unrealized_pnl"]) == Decimal("-0.50") and body["totals"]["open_positions"] == 1
    assert [(a["account_id"], a["error_code"]) for a in body["unavailable_accounts"]] == [
        (expired.pk, "BROKER_SESSION_EXPIRED")
    ]

    market(EQUITY, "1510")
    moved = trader_client.get("/api/portfolio").json()
    assert D({h["symbol"]: h for h in moved["holdings"]}[EQUITY]["unrealized_pnl"]) == Decimal("550")


def test_portfolio_is_private(paper, market):
    holding_add(
        account=SimAccount.objects.get(venue="paper", client_id=paper.pk),
        symbol=EQUITY,
        quantity=5,
        average_price=Decimal("1400"),
    )
    market(EQUITY, "1500")
    body = client_for(UserFactory()).get("/api/portfolio").json()
    assert body["holdings"] == [] and body["positions"] == [] and D(body["holdings_value"]) == 0
    assert_requires_auth("GET", "/api/portfolio")
