"""One risk gate in front of the broker for everything that adds exposure: a modification is checked as the order
will stand, an exit never grows past the position it closes, the kill switch and a platform stop refuse every
growth, and the risk engine's own square-off orders are not the user's to change."""

from __future__ import annotations

from decimal import Decimal

import pytest

from algoterm.testing import assert_error
from orders.models import LegRole, Order, OrderSource, Position
from orders.tests.factories import EQUITY, OPTION
from orders.tests.test_api_orders import DROP, placed, sim_order

pytestmark = pytest.mark.django_db
AFTER_COMMIT = pytest.mark.django_db(transaction=True)

SBIN = "NSE:SBIN"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def limits(client, **values) -> dict:
    response = client.post("/api/rms/config", values, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def refused(response, reason: str) -> dict:
    body = assert_error(response, 422, "RISK_REJECTED")
    assert body["reason"] == reason, body
    return body


def modify(client, order_id: str, **data):
    return client.patch(f"/api/orders/{order_id}", data, format="json")


def platform_stop(admin_client) -> None:
    response = admin_client.post("/api/system/stop", {"reason": "exchange glitch"}, format="json")
    assert response.status_code == 200, response.json()


# --- modify goes through the gate --------------------------------------------------------------------------------


def test_the_issue_repro_a_modify_cannot_grow_past_the_kill_switch(trader_client, paper, market):
    market(EQUITY, "1500")
    small = placed(trader_client, paper, quantity=1, price=1400)  # rests below the market
    limits(trader_client, max_lots_per_order=5, max_order_value=20000, kill_switch=True)

    refused(trader_client.post("/api/orders", _body(paper, quantity=100), format="json"), "TRADING_HALTED")
    body = refused(modify(trader_client, small["id"], quantity=500, price=1499), "TRADING_HALTED")

    assert "kill switch" in body["detail"]
    stored = Order.objects.get(pk=small["id"])
    assert (stored.quantity, stored.price, stored.status) == (1, Decimal("1400"), "OPEN")
    at_exchange = sim_order(small["id"])
    assert (at_exchange.quantity, at_exchange.price, at_exchange.modifications) == (1, Decimal("1400"), 0)


def test_a_modify_is_checked_as_the_order_will_stand(trader_client, paper, market):
    market(OPTION, "100")
    order = placed(trader_client, paper, symbol=OPTION, product="NRML", quantity=150, price=50)  # 2 lots, 7,500
    limits(trader_client, max_lots_per_order=5, max_order_value=20000, max_orders_per_day=1)

    refused(modify(trader_client, order["id"], quantity=450), "MAX_LOTS_EXCEEDED")  # 6 lots
    refused(modify(trader_client, order["id"], price="150"), "MAX_ORDER_VALUE_EXCEEDED")  # 2 lots at 150: 22,500

    # Within the limits it goes out, and it is not another order of the day (the one allowed is used up).
    response = modify(trader_client, order["id"], quantity=225, price="80")
    assert response.status_code == 200, response.json()
    assert (sim_order(order["id"]).quantity, sim_order(order["id"]).price) == (225, Decimal("80"))


def test_shrinking_an_order_is_allowed_with_the_kill_switch_on(trader_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, quantity=10, price=1400)
    limits(trader_client, kill_switch=True)

    response = modify(trader_client, order["id"], quantity=4, price="1390")

    assert response.status_code == 200, response.json()
    assert (sim_order(order["id"]).quantity, sim_order(order["id"]).price) == (4, Decimal("1390"))
    refused(modify(trader_client, order["id"], price="1395"), "TRADING_HALTED")  # a higher price is more value


def test_a_platform_stop_refuses_a_modify_that_grows_an_entry(trader_client, admin_client, paper, market):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, quantity=1, price=1400)
    platform_stop(admin_client)

    refused(modify(trader_client, order["id"], quantity=500), "PLATFORM_HALTED")

    assert sim_order(order["id"]).quantity == 1


# --- exits never outgrow their position --------------------------------------------------------------------------


def _stop_leg(trader_client, paper, market, quantity: int) -> Order:
    market(EQUITY, "1500")
    entry = placed(trader_client, paper, quantity=quantity, order_type="MARKET", price=DROP, stop_loss=1480)
    assert entry["status"] == "FILLED"
    return Order.objects.get(parent_id=entry["id"], role=LegRole.STOP_LOSS)


@AFTER_COMMIT
def test_the_issue_repro_a_stop_loss_leg_cannot_grow_into_a_reverse_position(
    trader_client, admin_client, paper, market, eager_tasks
):
    stop = _stop_leg(trader_client, paper, market, quantity=1)
    platform_stop(admin_client)

    body = refused(modify(trader_client, stop.pk, quantity=500), "EXIT_EXCEEDS_POSITION")

    assert "at most 1" in body["detail"]
    assert sim_order(stop.pk).quantity == 1
    market(EQUITY, "1470")  # the stop triggers: it closes the long and opens nothing
    assert Order.objects.get(pk=stop.pk).status == "FILLED"
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0


@AFTER_COMMIT
def test_an_exit_leg_grows_only_up_to_the_position_and_not_at_all_during_a_stop(
    trader_client, admin_client, paper, market, eager_tasks
):
    stop = _stop_leg(trader_client, paper, market, quantity=10)
    assert modify(trader_client, stop.pk, quantity=5).status_code == 200
    assert modify(trader_client, stop.pk, quantity=10).status_code == 200  # back to the whole position
    refused(modify(trader_client, stop.pk, quantity=11), "EXIT_EXCEEDS_POSITION")

    assert modify(trader_client, stop.pk, quantity=5).status_code == 200
    platform_stop(admin_client)
    refused(modify(trader_client, stop.pk, quantity=10), "PLATFORM_HALTED")  # every growth waits for the restart
    assert modify(trader_client, stop.pk, trigger_price="1485").status_code == 200  # moving a stop is no growth
    assert (sim_order(stop.pk).quantity, sim_order(stop.pk).trigger_price) == (5, Decimal("1485"))


# --- the risk engine's square-off is not the user's to undo ------------------------------------------------------


@AFTER_COMMIT
def test_the_rms_square_off_order_cannot_be_modified_or_cancelled_by_the_user(
    trader_client, paper, market, eager_tasks
):
    market(EQUITY, "1500")
    placed(trader_client, paper, quantity=10, order_type="MARKET", price=DROP)
    market(EQUITY, "1500", depth=0)  # nobody to sell to: the square-off rests
    response = trader_client.post("/api/rms/squareoff", {}, format="json")
    assert response.status_code == 200, response.json()
    [square_off] = Order.objects.filter(role=LegRole.SQUARE_OFF)
    assert (square_off.source, square_off.status, square_off.quantity) == (OrderSource.RMS, "OPEN", 10)

    body = assert_error(modify(trader_client, square_off.pk, quantity=1), 409, "ORDER_LOCKED")
    assert "risk engine" in body["detail"]
    assert_error(trader_client.delete(f"/api/orders/{square_off.pk}"), 409, "ORDER_LOCKED")

    at_exchange = sim_order(square_off.pk)
    assert (at_exchange.quantity, at_exchange.status, at_exchange.modifications) == (10, "OPEN", 0)
    market(EQUITY, "1500")  # liquidity returns: the square-off closes the position
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0


# --- every other path reaches the same gate ----------------------------------------------------------------------


def test_bulk_legs_pass_the_gate(trader_client, paper, market):
    market(EQUITY, "1500")
    market(SBIN, "820")
    limits(trader_client, kill_switch=True)

    legs = [_leg(paper, price=1490), _leg(paper, symbol=SBIN, price=800)]
    response = trader_client.post("/api/orders/bulk", {"legs": legs, "all_or_none": True}, format="json")

    assert response.status_code == 201, response.json()
    assert [leg["error_code"] for leg in response.json()["legs"]] == ["RISK_REJECTED", None]
    assert [leg["status"] for leg in response.json()["legs"]] == ["failed", "not_sent"]
    assert not Order.objects.exists()


def _body(account, **fields) -> dict:
    body = {"account_id": account.pk, "symbol": EQUITY, "side": "BUY", "quantity": 10, "order_type": "MARKET"}
    body["product"] = "MIS"
    body.update(fields)
    return body


def _leg(account, **fields) -> dict:
    return _body(account, order_type="LIMIT", **fields)
