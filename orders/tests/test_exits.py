"""Targets, stop-losses (one cancels the other) and trailing stops, end to end through the API and the paper
broker: quotes fill the resting legs, and the follow-up tasks run inline as a worker would run them."""

from decimal import Decimal

import pytest

from brokers.models import SimOrder, SimPosition
from orders import services
from orders.models import LegRole, Order, OrderEvent, OrderSource, OrderStatus, Position, Trade
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _slippage(settings):
    settings.PAPER_SLIPPAGE_BPS = 5  # the numbers below are worked out for 5 bps on market and SL-M fills


@pytest.fixture
def enter(trader_client, paper, market, eager_tasks):
    """POST a MARKET entry of 10 INFY at a 1500 market; returns the filled entry."""

    def post(side: str = "BUY", **fields) -> Order:
        market(EQUITY, "1500")
        body = {
            "account_id": paper.pk,
            "symbol": EQUITY,
            "side": side,
            "quantity": 10,
            "order_type": "MARKET",
            "product": "MIS",
            **fields,
        }
        response = trader_client.post("/api/orders", body, format="json")
        assert response.status_code == 201, response.json()
        entry = Order.objects.get(pk=response.json()["id"])
        assert (entry.status, entry.filled_quantity) == (OrderStatus.FILLED, 10)
        assert sorted(response.json()["exit_ids"]) == sorted(entry.exits.values_list("pk", flat=True))
        return entry

    return post


def legs(entry: Order) -> tuple[Order, Order]:
    exits = {leg.role: leg for leg in Order.objects.filter(parent=entry)}
    assert set(exits) == {LegRole.TARGET, LegRole.STOP_LOSS}, exits
    return exits[LegRole.TARGET], exits[LegRole.STOP_LOSS]


def sim(order: Order) -> SimOrder:
    (found,) = SimOrder.objects.filter(tag=order.broker_tag)
    return found


def position(account) -> Position:
    return Position.objects.get(account=account, symbol=EQUITY)


def assert_flat_with(account, realized: str) -> None:
    ours = position(account)
    assert (ours.quantity, ours.realized_pnl, ours.day_realized_pnl) == (0, Decimal(realized), Decimal(realized))
    exchange = SimPosition.objects.get(account__client_id=account.pk, symbol=EQUITY)
    assert (exchange.quantity, exchange.realized_pnl) == (0, Decimal(realized)), "we and the exchange must agree"


def test_a_filled_long_entry_gets_a_limit_target_and_an_sl_m_stop_for_its_quantity(enter):
    entry = enter(target="1520", stop_loss="1480")

    assert entry.average_price == Decimal("1500.80")  # ask 1500.05 plus 5 bps, on the tick
    assert entry.exits_placed_at is not None
    target, stop = legs(entry)
    for leg in (target, stop):
        assert (leg.side, leg.quantity, leg.product, leg.source) == ("SELL", 10, "MIS", OrderSource.SYSTEM)
        assert leg.status == OrderStatus.OPEN and leg.broker_order_id == sim(leg).order_id
    assert (target.order_type, target.price, target.trigger_price) == ("LIMIT", Decimal("1520"), None)
    assert (stop.order_type, stop.price, stop.trigger_price) == ("SL-M", None, Decimal("1480"))
    assert sim(stop).status == "TRIGGER_PENDING"
    assert position(entry.account).quantity == 10


def test_the_target_fills_and_the_stop_is_cancelled(enter, market, paper):
    target, stop = legs(enter(target="1520", stop_loss="1480"))

    market(EQUITY, "1525")

    target.refresh_from_db(), stop.refresh_from_db()
    assert (target.status, target.filled_quantity, target.average_price) == (
        OrderStatus.FILLED,
        10,
        Decimal("1524.95"),
    )
    assert stop.status == OrderStatus.CANCELLED and stop.filled_quantity == 0
    assert sim(stop).status == "CANCELLED"
    assert OrderEvent.objects.filter(order=stop, to_status=OrderStatus.PENDING_CANCEL, source="system").exists()
    assert_flat_with(paper, "241.50")  # 10 * (1524.95 - 1500.80)

    market(EQUITY, "1470")  # the cancelled stop's level: nothing more happens
    assert position(paper).quantity == 0
    assert Trade.objects.filter(account=paper).count() == 2


def test_the_stop_triggers_and_the_target_is_cancelled(enter, market, paper):
    target, stop = legs(enter(target="1520", stop_loss="1480"))

    market(EQUITY, "1490")  # above the trigger: nothing
    stop.refresh_from_db()
    assert stop.status == OrderStatus.OPEN and stop.filled_quantity == 0

    market(EQUITY, "1475")

    target.refresh_from_db(), stop.refresh_from_db()
    assert (stop.status, stop.filled_quantity, stop.average_price) == (OrderStatus.FILLED, 10, Decimal("1474.20"))
    assert target.status == OrderStatus.CANCELLED and sim(target).status == "CANCELLED"
    assert_flat_with(paper, "-266.00")  # bid 1474.95 less 5 bps = 1474.20; 10 * (1474.20 - 1500.80)


def test_a_partly_filled_target_shrinks_the_stop_and_the_stop_then_closes_the_rest(enter, market, paper):
    target, stop = legs(enter(target="1520", stop_loss="1480"))

    market(EQUITY, "1525", depth=4)  # only 4 bid at the target

    target.refresh_from_db(), stop.refresh_from_db()
    assert (target.status, target.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 4)
    assert (stop.status, stop.quantity, stop.filled_quantity) == (OrderStatus.OPEN, 6, 0)
    assert sim(stop).quantity == 6
    assert position(paper).quantity == 6

    market(EQUITY, "1475")

    target.refresh_from_db(), stop.refresh_from_db()
    assert (stop.status, stop.filled_quantity) == (OrderStatus.FILLED, 6)
    assert (target.status, target.filled_quantity) == (OrderStatus.CANCELLED, 4)
    assert sim(target).status == "CANCELLED"
    assert_flat_with(paper, "-63.00")  # 4 * (1524.95 - 1500.80) + 6 * (1474.20 - 1500.80)


def test_a_partly_filled_target_then_fills_in_full_and_cancels_the_shrunk_stop(enter, market, paper):
    target, stop = legs(enter(target="1520", stop_loss="1480"))

    market(EQUITY, "1525", depth=4)
    market(EQUITY, "1530", depth=3)
    stop.refresh_from_db()
    assert (stop.status, stop.quantity) == (OrderStatus.OPEN, 3)

    market(EQUITY, "1521")

    target.refresh_from_db(), stop.refresh_from_db()
    assert (target.status, target.filled_quantity) == (OrderStatus.FILLED, 10)
    assert stop.status == OrderStatus.CANCELLED and sim(stop).status == "CANCELLED"
    fills = Trade.objects.filter(order=target).order_by("cumulative_quantity").values_list("quantity", flat=True)
    assert list(fills) == [4, 3, 3]
    assert target.average_price == Decimal("1525.25")  # (4 * 1524.95 + 3 * 1529.95 + 3 * 1520.95) / 10
    assert_flat_with(paper, "244.50")  # 4 * 24.15 + 3 * 29.15 + 3 * 20.15


def test_both_legs_partly_filled_always_cover_exactly_what_is_left(enter, market, paper):
    target, stop = legs(enter(target="1520", stop_loss="1480"))

    market(EQUITY, "1525", depth=4)  # target: 4 of 10
    market(EQUITY, "1475", depth=3)  # the stop triggers: 3 of its 6

    target.refresh_from_db(), stop.refresh_from_db()
    held = position(paper).quantity
    assert held == 3
    assert (target.status, target.quantity, target.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 7, 4)
    assert (stop.status, stop.quantity - stop.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, 3)
    assert sim(target).remaining == sim(stop).remaining == 3

    market(EQUITY, "1474")  # the stop, triggered, takes the rest

    target.refresh_from_db(), stop.refresh_from_db()
    assert (stop.status, stop.filled_quantity) == (OrderStatus.FILLED, 6)
    assert (target.status, target.filled_quantity) == (OrderStatus.CANCELLED, 4)
    # 4 * (1524.95 - 1500.80) + 3 * (1474.20 - 1500.80) + 3 * (1473.20 - 1500.80)
    assert_flat_with(paper, "-66.00")


def test_a_second_fill_of_one_exit_at_another_price_is_recorded_at_its_exact_price(enter, market, paper):
    target, stop = legs(enter(target="1520", stop_loss="1480"))

    market(EQUITY, "1525", depth=4)
    market(EQUITY, "1530", depth=3)
    market(EQUITY, "1475")  # the stop closes the last 3

    fills = Trade.objects.filter(order=target).order_by("cumulative_quantity").values_list("quantity", "price")
    assert list(fills) == [(4, Decimal("1524.95")), (3, Decimal("1529.95"))]
    assert_flat_with(paper, "104.25")  # 4 * 24.15 + 3 * 29.15 + 3 * (1474.20 - 1500.80)


def test_a_short_entry_has_its_target_below_and_its_stop_above(enter, market, paper):
    entry = enter("SELL", target="1480", stop_loss="1520")
    assert entry.average_price == Decimal("1499.20")  # bid 1499.95 less 5 bps
    target, stop = legs(entry)
    assert (target.side, target.order_type, target.price, target.quantity) == ("BUY", "LIMIT", Decimal("1480"), 10)
    assert (stop.side, stop.order_type, stop.trigger_price, stop.quantity) == ("BUY", "SL-M", Decimal("1520"), 10)
    assert position(paper).quantity == -10

    market(EQUITY, "1475")

    target.refresh_from_db(), stop.refresh_from_db()
    assert (target.status, target.average_price) == (OrderStatus.FILLED, Decimal("1475.05"))
    assert stop.status == OrderStatus.CANCELLED
    assert_flat_with(paper, "241.50")  # 10 * (1499.20 - 1475.05)


def test_a_short_entrys_stop_triggers_above_and_the_target_is_cancelled(enter, market, paper):
    target, stop = legs(enter("SELL", target="1480", stop_loss="1520"))

    market(EQUITY, "1525")

    target.refresh_from_db(), stop.refresh_from_db()
    assert (stop.status, stop.average_price) == (OrderStatus.FILLED, Decimal("1525.80"))  # ask 1525.05 + 5 bps
    assert target.status == OrderStatus.CANCELLED
    assert_flat_with(paper, "-266.00")  # 10 * (1499.20 - 1525.80)


def test_exits_are_validated_against_the_side(trader_client, paper, market, eager_tasks):
    market(EQUITY, "1500")
    body = {"account_id": paper.pk, "symbol": EQUITY, "quantity": 10, "order_type": "MARKET", "product": "MIS"}
    long = trader_client.post(
        "/api/orders", {**body, "side": "BUY", "target": "1480", "stop_loss": "1520"}, format="json"
    )
    short = trader_client.post(
        "/api/orders", {**body, "side": "SELL", "target": "1520", "stop_loss": "1480"}, format="json"
    )
    for response in (long, short):
        assert response.status_code == 400, response.json()
        assert set(response.json()["errors"]) >= {"target", "stop_loss"}
    assert not Order.objects.exists() and not SimOrder.objects.exists()


# --- trailing ----------------------------------------------------------------------------------------------------


def test_a_trailing_stop_rises_with_the_price_and_never_falls(enter, market, paper):
    entry = enter(stop_loss="1480", trailing_stop="20")
    (stop,) = Order.objects.filter(parent=entry)
    assert stop.role == LegRole.STOP_LOSS and stop.trigger_price == Decimal("1480")

    assert services.stops_trail() == 0  # at 1500 the trail (1480) is where the stop already is

    steps = [("1530", "1510"), ("1545.50", "1525.50"), ("1535", "1525.50"), ("1527", "1525.50"), ("1552.35", "1532.35")]
    for price, trigger in steps:
        market(EQUITY, price)
        services.stops_trail()
        stop.refresh_from_db()
        assert (stop.status, stop.trigger_price) == (OrderStatus.OPEN, Decimal(trigger)), price
        assert sim(stop).trigger_price == Decimal(trigger), price
        assert sim(stop).status == "TRIGGER_PENDING"
    moves = OrderEvent.objects.filter(order=stop, to_status=OrderStatus.PENDING_MODIFY, source="system").count()
    assert moves == 3

    market(EQUITY, "1532")  # falls through the trailed stop

    stop.refresh_from_db()
    assert (stop.status, stop.filled_quantity, stop.average_price) == (OrderStatus.FILLED, 10, Decimal("1531.20"))
    assert_flat_with(paper, "304.00")  # bid 1531.95 less 5 bps = 1531.20; 10 * (1531.20 - 1500.80)
    assert services.stops_trail() == 0


def test_a_short_entrys_trailing_stop_falls_with_the_price_and_never_rises(enter, market, paper):
    entry = enter("SELL", stop_loss="1520", trailing_stop="20")
    (stop,) = Order.objects.filter(parent=entry)

    for price, trigger in [("1470", "1490"), ("1481", "1490"), ("1462.35", "1482.35")]:
        market(EQUITY, price)
        services.stops_trail()
        stop.refresh_from_db()
        assert (stop.status, stop.trigger_price) == (OrderStatus.OPEN, Decimal(trigger)), price
        assert sim(stop).trigger_price == Decimal(trigger), price
