"""The simulated exchange behind the paper broker and the simulators: fills, resting orders, margin, positions."""

from decimal import Decimal

import pytest

from brokers import exchange
from brokers.models import Venue
from brokers.protocol import (
    BrokerOrderStatus,
    InvalidInput,
    ModifyRequest,
    OrderRequest,
    OrderType,
    Product,
    Side,
    Validity,
)

pytestmark = pytest.mark.django_db
SYMBOL = "NSE:INFY"


@pytest.fixture
def account():
    return exchange.exchange_account(venue=Venue.PAPER, client_id="acc_test", opening_balance=Decimal("100000"))


def order(side=Side.BUY, quantity=10, order_type=OrderType.MARKET, product=Product.MIS, **fields) -> OrderRequest:
    return OrderRequest(symbol=SYMBOL, side=side, quantity=quantity, order_type=order_type, product=product, **fields)


def test_market_order_fills_at_the_touch_with_slippage(account, publish_quote, settings):
    settings.PAPER_SLIPPAGE_BPS = 10
    publish_quote(SYMBOL, "1000.00")  # bid 999.95, ask 1000.05

    placed = exchange.place(account=account, request=order())

    assert placed.status == BrokerOrderStatus.FILLED
    assert placed.average_price == Decimal("1001.05")  # 1000.05 * 1.001 = 1001.05005, to the tick
    (position,) = exchange.positions(account=account)
    assert position.quantity == 10 and position.average_price == Decimal("1001.05")


def test_limit_order_rests_until_a_quote_crosses_it(account, publish_quote):
    publish_quote(SYMBOL, "1000.00")
    resting = exchange.place(account=account, request=order(order_type=OrderType.LIMIT, price=Decimal("990.00")))
    assert resting.status == BrokerOrderStatus.OPEN

    assert publish_quote(SYMBOL, "995.00") == 0
    assert publish_quote(SYMBOL, "989.00") == 1

    resting.refresh_from_db()
    assert resting.status == BrokerOrderStatus.FILLED and resting.average_price == Decimal("989.05")


def test_orders_larger_than_the_depth_fill_partially_then_complete(account, publish_quote):
    publish_quote(SYMBOL, "1000.00", depth=40)

    placed = exchange.place(
        account=account, request=order(quantity=100, order_type=OrderType.LIMIT, price=Decimal("1001.00"))
    )

    assert placed.status == BrokerOrderStatus.PARTIALLY_FILLED and placed.filled_quantity == 40
    publish_quote(SYMBOL, "1000.00", depth=40)
    publish_quote(SYMBOL, "1000.00", depth=40)
    placed.refresh_from_db()
    assert placed.status == BrokerOrderStatus.FILLED and placed.filled_quantity == 100
    assert len(exchange.trades(account=account)) == 3


def test_stop_loss_waits_for_its_trigger(account, publish_quote):
    publish_quote(SYMBOL, "1000.00")
    exchange.place(account=account, request=order(quantity=10))
    stop = exchange.place(
        account=account, request=order(side=Side.SELL, order_type=OrderType.SL_M, trigger_price=Decimal("980.00"))
    )
    assert stop.status == BrokerOrderStatus.TRIGGER_PENDING

    publish_quote(SYMBOL, "985.00")
    stop.refresh_from_db()
    assert stop.status == BrokerOrderStatus.TRIGGER_PENDING
    publish_quote(SYMBOL, "979.00")
    stop.refresh_from_db()
    assert stop.status == BrokerOrderStatus.FILLED


def test_ioc_remainder_is_cancelled(account, publish_quote):
    publish_quote(SYMBOL, "1000.00", depth=5)
    placed = exchange.place(account=account, request=order(quantity=8, validity=Validity.IOC))
    assert placed.status == BrokerOrderStatus.CANCELLED and placed.filled_quantity == 5


def test_round_trip_books_realized_pnl_into_cash(account, publish_quote, settings):
    settings.PAPER_SLIPPAGE_BPS = 0
    publish_quote(SYMBOL, "1000.00")
    exchange.place(account=account, request=order(quantity=10))  # buys at 1000.05
    publish_quote(SYMBOL, "1010.00")
    exchange.place(account=account, request=order(side=Side.SELL, quantity=10))  # sells at 1009.95

    (position,) = exchange.positions(account=account)
    assert position.quantity == 0 and position.realized_pnl == Decimal("99.00")
    funds = exchange.funds(account=account)
    assert funds.available_cash == Decimal("100099.00") and funds.used_margin == 0


def test_orders_beyond_available_margin_are_rejected_with_a_reason(account, publish_quote):
    publish_quote(SYMBOL, "1000.00")
    placed = exchange.place(account=account, request=order(quantity=1000, product=Product.CNC))
    assert placed.status == BrokerOrderStatus.REJECTED
    assert "Insufficient funds" in placed.status_message
    assert exchange.positions(account=account) == []


def test_delivery_sells_need_holdings(account, publish_quote):
    publish_quote(SYMBOL, "1000.00")
    refused = exchange.place(account=account, request=order(side=Side.SELL, product=Product.CNC))
    assert refused.status == BrokerOrderStatus.REJECTED and "holdings" in refused.status_message

    exchange.holding_add(account=account, symbol=SYMBOL, quantity=10, average_price=Decimal("900"))
    sold = exchange.place(account=account, request=order(side=Side.SELL, product=Product.CNC))
    assert sold.status == BrokerOrderStatus.FILLED


@pytest.mark.parametrize(
    "bad",
    [
        {"quantity": 0},
        {"order_type": OrderType.LIMIT},
        {"order_type": OrderType.SL, "price": Decimal("10")},
        {"order_type": OrderType.LIMIT, "price": Decimal("10.03")},
    ],
)
def test_invalid_orders_raise(account, bad):
    with pytest.raises(InvalidInput):
        exchange.place(account=account, request=order(**bad))


def test_modify_and_cancel_rules(account, publish_quote):
    publish_quote(SYMBOL, "1000.00")
    resting = exchange.place(account=account, request=order(order_type=OrderType.LIMIT, price=Decimal("950.00")))

    exchange.modify(account=account, order_id=resting.order_id, request=ModifyRequest(price=Decimal("1001.00")))
    resting.refresh_from_db()
    assert resting.status == BrokerOrderStatus.FILLED  # the new price crossed the market

    with pytest.raises(InvalidInput):
        exchange.cancel(account=account, order_id=resting.order_id)
    with pytest.raises(InvalidInput):
        exchange.cancel(account=account, order_id="999")
    other = exchange.exchange_account(venue=Venue.PAPER, client_id="someone-else")
    with pytest.raises(InvalidInput):
        exchange.get_order(account=other, order_id=resting.order_id)


def test_a_modification_cannot_exceed_the_funds_a_new_order_could_not(account, publish_quote):
    publish_quote(SYMBOL, "1000.00")
    small = exchange.place(
        account=account,
        request=order(quantity=1, order_type=OrderType.LIMIT, price=Decimal("900.00"), product=Product.CNC),
    )

    with pytest.raises(InvalidInput, match="Insufficient funds"):
        exchange.modify(
            account=account, order_id=small.order_id, request=ModifyRequest(quantity=10_000, price=Decimal("1001.00"))
        )

    small.refresh_from_db()
    assert small.quantity == 1 and small.status == BrokerOrderStatus.OPEN
    assert exchange.funds(account=account).available_cash > 0


def test_a_partly_filled_order_cannot_be_modified_down_to_its_fills(account, publish_quote):
    publish_quote(SYMBOL, "1000.00", depth=5)
    partial = exchange.place(
        account=account, request=order(quantity=10, order_type=OrderType.LIMIT, price=Decimal("1001.00"))
    )
    assert partial.filled_quantity == 5

    with pytest.raises(InvalidInput, match="cancel the rest"):
        exchange.modify(account=account, order_id=partial.order_id, request=ModifyRequest(quantity=5))
