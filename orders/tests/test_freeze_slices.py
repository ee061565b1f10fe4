"""Exits larger than the exchange's freeze quantity go out as several orders (never not at all), and a modify
cannot grow an order past the freeze limit or while trading is stopped platform-wide."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from algoterm.config import config_put
from algoterm.console.system import trading_stop
from brokers.prices import quote_at, quote_publish
from marketdata.models import Instrument, InstrumentType
from orders.models import LegRole, Order, OrderStatus, Position
from orders.services import OrderSpec, order_modify, order_place, positions_square_off, quantities_within_freeze
from orders.tests.factories import instrument_create, paper_account, standard_instruments

pytestmark = pytest.mark.django_db
SYMBOL = "NFO:NIFTYFRZ24500CE"


@pytest.fixture
def long_call(trader, admin_user):
    """300 units (4 lots) of a NIFTY call held on paper, with NIFTY's freeze quantity set to 150 (2 lots)."""
    standard_instruments()
    instrument_create(SYMBOL, instrument_type=InstrumentType.CE, lot_size=75, expiry=date.today() + timedelta(days=7))
    Instrument.objects.filter(symbol=SYMBOL).update(underlying="NIFTY")
    quote_publish(quote_at(SYMBOL, "100", depth=10_000))
    account = paper_account(trader)
    for _ in range(2):
        spec = OrderSpec(
            account_id=account.pk, symbol=SYMBOL, side="BUY", quantity=150, order_type="MARKET", product="NRML"
        )
        order_place(user=trader, spec=spec)
    config_put(actor=admin_user, name="freeze_quantities", data={"NIFTY": 150})
    assert Position.objects.get(account=account, symbol=SYMBOL).quantity == 300
    return account


def test_slices_are_whole_lots_within_the_limit(long_call):
    assert quantities_within_freeze(symbol=SYMBOL, quantity=300) == [150, 150]
    assert quantities_within_freeze(symbol=SYMBOL, quantity=375) == [150, 150, 75]
    assert quantities_within_freeze(symbol=SYMBOL, quantity=150) == [150]
    assert quantities_within_freeze(symbol="NSE:INFY", quantity=100_000) == [100_000]  # equities have no freeze


def test_a_square_off_above_the_freeze_quantity_goes_out_in_slices(trader, long_call):
    result = positions_square_off(user=trader, account_id=long_call.pk, symbol=SYMBOL)

    assert result.failed == []
    assert sorted(order.quantity for order in result.placed) == [150, 150]
    assert all(order.role == LegRole.SQUARE_OFF and order.status == OrderStatus.FILLED for order in result.placed)
    assert Position.objects.get(account=long_call, symbol=SYMBOL).quantity == 0


def test_a_modify_cannot_grow_an_order_past_the_freeze_or_while_trading_is_stopped(trader, admin_user, long_call):
    spec = OrderSpec(
        account_id=long_call.pk,
        symbol=SYMBOL,
        side="BUY",
        quantity=75,
        order_type="LIMIT",
        product="NRML",
        price=Decimal("90"),
    )
    resting = order_place(user=trader, spec=spec)
    assert resting.status == OrderStatus.OPEN

    from algoterm.api.errors import RiskRejected, ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        order_modify(user=trader, order=resting, quantity=225)
    assert "freeze" in refused.value.errors["quantity"][0]

    trading_stop(actor=admin_user, reason="exchange glitch")
    with pytest.raises(RiskRejected) as halted:
        order_modify(user=trader, order=resting, quantity=150)
    assert halted.value.reason == "PLATFORM_HALTED"
    assert Order.objects.get(pk=resting.pk).quantity == 75
