"""The order state machine, broker updates that must change nothing, and the position arithmetic of fills."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from brokers.protocol import BrokerOrder, BrokerOrderStatus, OrderType, Product, Side
from orders import services
from orders.models import (
    FINAL_STATUSES,
    TRANSITIONS,
    Order,
    OrderEvent,
    OrderSource,
    OrderStatus,
    Position,
    Trade,
    can_transition,
)
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db


def spec(account, **fields) -> services.OrderSpec:
    values = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": Side.BUY,
        "quantity": 10,
        "order_type": OrderType.MARKET,
        "product": Product.MIS,
        **fields,
    }
    return services.OrderSpec(**values)


def history(order: Order) -> list[tuple[str, str, str]]:
    return list(OrderEvent.objects.filter(order=order).values_list("from_status", "to_status", "source"))


def as_update(order: Order, **fields) -> BrokerOrder:
    values = {
        "broker_order_id": order.broker_order_id,
        "symbol": order.symbol,
        "side": Side(order.side),
        "quantity": order.quantity,
        "filled_quantity": order.filled_quantity,
        "order_type": OrderType(order.order_type),
        "product": Product(order.product),
        "status": BrokerOrderStatus.OPEN,
        "price": order.price,
        "average_price": order.average_price,
        **fields,
    }
    return BrokerOrder(**values)


# --- the state machine -------------------------------------------------------------------------------------------


def test_every_status_has_its_transitions_and_a_final_state_has_none():
    assert set(TRANSITIONS) == set(OrderStatus)
    for status, targets in TRANSITIONS.items():
        assert targets <= set(OrderStatus), status
    for final in FINAL_STATUSES:
        assert TRANSITIONS[final] == frozenset()
        assert not any(can_transition(final, new) for new in OrderStatus)


def test_nothing_returns_to_pending_and_only_an_order_in_flight_becomes_unknown():
    assert not any(can_transition(status, OrderStatus.PENDING) for status in OrderStatus)
    assert {s for s in OrderStatus if can_transition(s, OrderStatus.UNKNOWN)} == {OrderStatus.SUBMITTING}
    # The broker is the truth once it has the order: every live state may move to any final state it reports.
    for status in set(OrderStatus) - FINAL_STATUSES - {OrderStatus.PENDING}:
        for final in (OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED):
            assert can_transition(status, final), (status, final)


@pytest.fixture
def filled_order(trader, paper, publish_quote):
    publish_quote(EQUITY, "1500")
    order = services.order_place(user=trader, spec=spec(paper))
    assert order.status == OrderStatus.FILLED and order.filled_quantity == 10
    return order


@pytest.mark.parametrize(
    "stale",
    [
        {"status": BrokerOrderStatus.OPEN, "filled_quantity": 0, "average_price": None},
        {"status": BrokerOrderStatus.TRIGGER_PENDING, "filled_quantity": 0, "average_price": None},
        {"status": BrokerOrderStatus.PARTIALLY_FILLED, "filled_quantity": 4},
        {"status": BrokerOrderStatus.CANCELLED, "filled_quantity": 0},
        {"status": BrokerOrderStatus.REJECTED, "filled_quantity": 0, "status_message": "late"},
        {"status": BrokerOrderStatus.FILLED},  # the same fill, replayed
    ],
)
def test_a_stale_or_replayed_update_of_a_filled_order_changes_nothing(filled_order, stale):
    before = Order.objects.get(pk=filled_order.pk)
    events = history(before)
    position = Position.objects.get(account=before.account, symbol=EQUITY)

    after = services.order_apply_update(
        order_id=before.pk, update=as_update(before, **stale), source=OrderSource.BROKER
    )

    after.refresh_from_db()
    assert (after.status, after.filled_quantity, after.average_price, after.status_message) == (
        OrderStatus.FILLED,
        10,
        before.average_price,
        before.status_message,
    )
    assert after.updated_at == before.updated_at
    assert history(after) == events
    assert Trade.objects.filter(order=after).count() == 1
    position.refresh_from_db()
    assert position.quantity == 10


def test_an_update_naming_another_broker_order_is_ignored(filled_order):
    events = history(filled_order)
    services.order_apply_update(
        order_id=filled_order.pk,
        update=as_update(filled_order, broker_order_id="999999", status=BrokerOrderStatus.CANCELLED),
        source=OrderSource.BROKER,
    )
    filled_order.refresh_from_db()
    assert filled_order.status == OrderStatus.FILLED and history(filled_order) == events


def test_every_transition_writes_an_event_with_from_to_and_source(trader, paper, publish_quote):
    publish_quote(EQUITY, "1500")
    order = services.order_place(user=trader, spec=spec(paper, order_type=OrderType.LIMIT, price=Decimal("1490")))
    assert order.status == OrderStatus.OPEN

    publish_quote(EQUITY, "1480", depth=4)  # crosses the limit; only 4 on offer
    order = services.order_refresh(order=order)
    assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 4)
    order = services.order_cancel(user=trader, order=order)
    assert order.status == OrderStatus.CANCELLED

    assert history(order) == [
        ("", OrderStatus.PENDING, OrderSource.API),
        (OrderStatus.PENDING, OrderStatus.SUBMITTING, OrderSource.API),
        (OrderStatus.SUBMITTING, OrderStatus.OPEN, OrderSource.BROKER),
        (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderSource.BROKER),
        (OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL, OrderSource.API),
        (OrderStatus.PENDING_CANCEL, OrderStatus.CANCELLED, OrderSource.BROKER),
    ]
    fills = OrderEvent.objects.filter(order=order).values_list("to_status", "filled_quantity")
    assert dict(fills)[OrderStatus.CANCELLED] == 4
    # Nothing the broker says later reopens it.
    events = history(order)
    services.order_apply_update(
        order_id=order.pk,
        update=as_update(order, status=BrokerOrderStatus.PARTIALLY_FILLED),
        source=OrderSource.RECONCILE,
    )
    order.refresh_from_db()
    assert order.status == OrderStatus.CANCELLED and history(order) == events


# --- position arithmetic -----------------------------------------------------------------------------------------

IST_MORNING = datetime(2025, 3, 3, 4, 0, tzinfo=UTC)  # 09:30 in Asia/Kolkata


@pytest.fixture
def fill(trader, paper):
    """Apply one fill of `side quantity @ price` to the paper account's INFY MIS position, as a broker update
    would (each fill its own order)."""

    def apply(side: str, quantity: int, price: str, *, at: datetime = IST_MORNING) -> Position:
        order = Order.objects.create(
            user=trader,
            account=paper,
            symbol=EQUITY,
            side=side,
            quantity=quantity,
            filled_quantity=quantity,
            order_type=OrderType.MARKET,
            product=Product.MIS,
            status=OrderStatus.FILLED,
        )
        trade = Trade.objects.create(
            order=order,
            user=trader,
            account=paper,
            symbol=EQUITY,
            side=side,
            product=Product.MIS,
            quantity=quantity,
            price=Decimal(price),
            cumulative_quantity=quantity,
            traded_at=at,
        )
        services.position_apply_fill(trade=trade)
        return Position.objects.get(account=paper, symbol=EQUITY, product=Product.MIS)

    return apply


def test_position_long_add_partial_close_flip_and_close_are_paise_exact(fill):
    p = fill(Side.BUY, 10, "100.05")
    assert (p.quantity, p.average_price, p.realized_pnl) == (10, Decimal("100.05"), Decimal("0"))

    p = fill(Side.BUY, 20, "103.10")  # (10*100.05 + 20*103.10) / 30 = 102.0833...
    assert (p.quantity, p.average_price, p.realized_pnl) == (30, Decimal("102.0833"), Decimal("0"))

    p = fill(Side.SELL, 12, "105.00")  # 12 * (105 - 102.0833) = 35.0004 -> 35.00
    assert (p.quantity, p.average_price, p.realized_pnl) == (18, Decimal("102.0833"), Decimal("35.00"))

    p = fill(Side.SELL, 25, "101.00")  # closes 18: 18 * (101 - 102.0833) = -19.4994 -> -19.50; 7 short @ 101
    assert (p.quantity, p.average_price, p.realized_pnl) == (-7, Decimal("101.00"), Decimal("15.50"))

    p = fill(Side.SELL, 3, "102.00")  # adds to the short: (7*101 + 3*102) / 10 = 101.3
    assert (p.quantity, p.average_price, p.realized_pnl) == (-10, Decimal("101.30"), Decimal("15.50"))

    p = fill(Side.BUY, 10, "99.95")  # closes the short: 10 * (99.95 - 101.30) * -1 = 13.50
    assert (p.quantity, p.average_price, p.realized_pnl) == (0, Decimal("0"), Decimal("29.00"))
    assert p.day_realized_pnl == Decimal("29.00")
    assert (p.day_buy_quantity, p.day_sell_quantity) == (40, 40)
    assert p.day_buy_value == Decimal("1000.50") + Decimal("2062.00") + Decimal("999.50")
    assert p.day_sell_value == Decimal("1260.00") + Decimal("2525.00") + Decimal("306.00")
    assert p.day_quantity == 0


def test_a_new_trading_day_resets_the_day_fields_but_keeps_the_position(fill):
    fill(Side.BUY, 10, "100")
    p = fill(Side.SELL, 4, "110")
    assert (p.day_buy_quantity, p.day_sell_quantity, p.day_realized_pnl) == (10, 4, Decimal("40.00"))

    next_day = IST_MORNING + timedelta(days=1)
    p = fill(Side.SELL, 2, "120", at=next_day)

    assert p.trading_day == next_day.date()
    assert (p.quantity, p.average_price) == (4, Decimal("100"))
    assert p.realized_pnl == Decimal("80.00")  # 40 yesterday + 40 today
    assert p.day_realized_pnl == Decimal("40.00")
    assert (p.day_buy_quantity, p.day_sell_quantity) == (0, 2)
    assert (p.day_buy_value, p.day_sell_value) == (Decimal("0"), Decimal("240.00"))


def test_a_late_fill_from_an_earlier_day_does_not_wipe_todays_day_fields(fill):
    today = IST_MORNING + timedelta(days=1)
    fill(Side.BUY, 10, "100", at=today)
    fill(Side.SELL, 4, "110", at=today)

    p = fill(Side.SELL, 2, "105", at=IST_MORNING)  # yesterday's fill, learnt of only now (reconciliation)

    assert p.trading_day == today.date()
    assert (p.quantity, p.realized_pnl) == (4, Decimal("50.00"))
    assert (p.day_buy_quantity, p.day_sell_quantity) == (10, 4)
    assert p.day_realized_pnl == Decimal("40.00")
