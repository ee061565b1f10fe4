"""What the order pipeline needs from the floors around it: the pre-trade check is the risk engine's and fails closed
without one; a fill reaches the risk engine only once committed; an Idempotency-Key needs the claims' store."""

from __future__ import annotations

import pytest

from algoterm.api import idempotency
from orders import hooks
from orders.models import IdempotencyRecord, Order
from orders.receivers import IDEMPOTENCY_STORE
from orders.services import OrderSpec, order_place
from orders.tests.factories import EQUITY
from orders.tests.test_api_orders import order_body, placed, sim_order
from orders.tests.test_risk_gate import modify, refused
from rms import receivers as rms_receivers
from rms.services import check_order

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_risk_engine(monkeypatch):
    monkeypatch.setattr(hooks, "_pre_trade_checks", [])


def test_the_risk_engine_registers_the_pre_trade_check():
    assert hooks._pre_trade_checks == [check_order]


def test_without_a_pre_trade_check_no_order_is_placed(trader_client, paper, market, no_risk_engine):
    market(EQUITY, "1500")

    body = refused(trader_client.post("/api/orders", order_body(paper), format="json"), "RISK_ENGINE_UNAVAILABLE")

    assert "risk engine" in body["detail"]
    assert not Order.objects.exists()


def test_without_a_pre_trade_check_no_exit_is_placed_either(trader, trader_client, paper, market, monkeypatch):
    market(EQUITY, "1500")
    placed(trader_client, paper, quantity=5, order_type="MARKET", price=None)
    monkeypatch.setattr(hooks, "_pre_trade_checks", [])

    sell = order_body(paper, side="SELL", quantity=5, order_type="MARKET", price=None)
    refused(trader_client.post("/api/orders", sell, format="json"), "RISK_ENGINE_UNAVAILABLE")

    assert Order.objects.count() == 1


def test_without_a_pre_trade_check_no_working_order_grows(trader_client, paper, market, monkeypatch):
    market(EQUITY, "1500")
    order = placed(trader_client, paper, quantity=1, price=1400)  # rests below the market
    monkeypatch.setattr(hooks, "_pre_trade_checks", [])

    refused(modify(trader_client, order["id"], quantity=5), "RISK_ENGINE_UNAVAILABLE")

    assert sim_order(order["id"]).quantity == 1
    assert modify(trader_client, order["id"], price="1390").status_code == 200  # cheaper needs no check


def test_a_fill_makes_the_risk_engine_look_again_once_committed(
    trader, paper, market, monkeypatch, django_capture_on_commit_callbacks
):
    market(EQUITY, "1500")
    evaluated: list[list[str]] = []
    monkeypatch.setattr(rms_receivers, "evaluation_request", lambda *, user_id: evaluated.append([user_id]))
    spec = OrderSpec(account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=5, order_type="MARKET", product="MIS")

    with django_capture_on_commit_callbacks(execute=True):
        order = order_place(user=trader, spec=spec)
        assert order.status == "FILLED"
        assert evaluated == []  # not before the fill is committed

    assert evaluated == [[trader.pk]]


def test_a_fill_does_not_fail_when_the_risk_engine_cannot_be_asked(
    trader, paper, market, monkeypatch, django_capture_on_commit_callbacks
):
    market(EQUITY, "1500")

    def unreachable(*, user_id):
        raise ConnectionError("broker down")

    monkeypatch.setattr(rms_receivers, "evaluation_request", unreachable)
    spec = OrderSpec(account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=5, order_type="MARKET", product="MIS")

    with django_capture_on_commit_callbacks(execute=True):
        order = order_place(user=trader, spec=spec)

    assert Order.objects.get(pk=order.pk).status == "FILLED"


def test_orders_keeps_the_idempotency_claims():
    assert idempotency._stores == [IDEMPOTENCY_STORE]


def test_a_key_is_not_honoured_without_a_claims_store(trader_client, paper, market, monkeypatch):
    market(EQUITY, "1500")
    monkeypatch.setattr(idempotency, "_stores", [])

    keyed = trader_client.post("/api/orders", order_body(paper), format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert keyed.status_code == 500  # a deployment without the store must not act on a key it cannot honour
    assert not Order.objects.exists() and not IdempotencyRecord.objects.exists()

    response = trader_client.post("/api/orders", order_body(paper), format="json")  # no key: nothing to honour
    assert response.status_code == 201, response.json()
