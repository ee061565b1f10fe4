"""The pre-trade checks: every reason code through POST /api/orders on a paper account, the clock rules with a
controlled `now`, per-account overrides, and the two things that always pass: exits and the RMS's own orders."""

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from algoterm.api.errors import RiskRejected
from algoterm.testing import client_for
from orders.hooks import OrderIntent
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from orders.services import OrderSpec, order_place
from orders.tests.factories import EQUITY, OPTION, paper_account
from rms.models import RmsState, TradingState
from rms.services import IST, Reason, check_order, state_today, trading_day, user_halt
from rms.tests.conftest import place, placed, refused, set_limits

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_tick_evaluation")]

SBIN = "NSE:SBIN"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def account(paper, market):
    """The trader's paper account, with INFY at 1500, SBIN at 800 and the 75-lot option at 100."""
    market(EQUITY, "1500")
    market(SBIN, "800")
    market(OPTION, "100")
    return paper


def long_infy(client, account, quantity: int = 10) -> Position:
    order = placed(client, account, quantity=quantity)
    assert order["status"] == "FILLED", order
    return Position.objects.get(account=account, symbol=EQUITY, product="MIS")


def at(clock: str, day=None) -> datetime:
    """`clock` (HH:MM[:SS]) IST on `day` (today's IST date unless told)."""
    return datetime.combine(day or trading_day(), time.fromisoformat(clock), tzinfo=IST)


def intent(account, **fields) -> OrderIntent:
    values = {
        "account": account,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "lot_size": 1,
        "order_type": "MARKET",
        "product": "MIS",
        "reference_price": Decimal("1500"),
        "reduces_position": False,
        "source": OrderSource.API,
    }
    values.update(fields)
    return OrderIntent(**values)


def reason_of(user, order_intent: OrderIntent, now: datetime) -> str | None:
    """The reason check_order refuses with at `now`, or None when it passes."""
    try:
        check_order(user=user, intent=order_intent, now=now)
    except RiskRejected as error:
        return error.reason
    return None


# --- halted ------------------------------------------------------------------------------------------------------


def test_the_kill_switch_refuses_new_orders(trader, trader_client, account):
    set_limits(trader, kill_switch=True)
    body = refused(trader_client, account, Reason.TRADING_HALTED)
    assert "kill switch" in body["detail"]
    assert Order.objects.count() == 0


def test_an_accounts_kill_switch_stops_that_account_only(trader, trader_client, account):
    other = paper_account(trader, label="Other")
    set_limits(trader, account=account, kill_switch=True)
    refused(trader_client, account, Reason.TRADING_HALTED)
    placed(trader_client, other)


def test_a_halted_day_refuses_new_orders(trader, trader_client, admin_user, account):
    assert user_halt(actor=admin_user, user=trader) is True
    assert state_today(user_id=trader.pk).status == TradingState.HALTED
    body = refused(trader_client, account, Reason.TRADING_HALTED)
    assert Reason.OPERATOR_HALT in body["detail"]


# --- the clock ---------------------------------------------------------------------------------------------------


def test_an_order_outside_the_trading_window_is_refused(trader, trader_client, account):
    # The window is placed away from the real clock, so the API (which checks at the real now) is outside it.
    now = timezone.localtime(timezone.now(), IST).time()
    window = (time(13), time(14)) if now < time(12) else (time(1), time(2))
    set_limits(trader, trading_window_start=window[0], trading_window_end=window[1])
    body = refused(trader_client, account, Reason.OUTSIDE_TRADING_WINDOW)
    assert f"{window[0]:%H:%M}-{window[1]:%H:%M}" in body["detail"]


def test_the_trading_window_includes_both_ends(trader, account):
    set_limits(trader, trading_window_start=time(9, 15), trading_window_end=time(15, 30))
    order = intent(account)
    assert reason_of(trader, order, at("09:14:59")) == Reason.OUTSIDE_TRADING_WINDOW
    assert reason_of(trader, order, at("09:15")) is None
    assert reason_of(trader, order, at("12:00")) is None
    assert reason_of(trader, order, at("15:30")) is None
    assert reason_of(trader, order, at("15:30:01")) == Reason.OUTSIDE_TRADING_WINDOW
    # The window is in IST whatever the server's zone: 03:45 UTC is 09:15 IST.
    assert reason_of(trader, order, at("09:15").astimezone(UTC)) is None


def test_no_new_intraday_orders_from_the_auto_square_off_time(trader, account):
    set_limits(
        trader,
        trading_window_start=time(9, 15),
        trading_window_end=time(15, 30),
        auto_square_off_time=time(15, 15),
    )
    assert reason_of(trader, intent(account, product="MIS"), at("15:14:59")) is None
    assert reason_of(trader, intent(account, product="MIS"), at("15:15")) == Reason.OUTSIDE_TRADING_WINDOW
    assert reason_of(trader, intent(account, product="MIS"), at("15:29")) == Reason.OUTSIDE_TRADING_WINDOW
    assert reason_of(trader, intent(account, product="CNC"), at("15:29")) is None


def test_the_clock_rules_use_the_default_profile_when_configured(trader, account, settings):
    settings.RMS_DEFAULT_TRADING_WINDOW = "09:15-15:30"
    settings.RMS_DEFAULT_AUTO_SQUARE_OFF = "15:15"
    # A user without a profile gets the defaults when the profile is first made.
    assert reason_of(trader, intent(account), at("09:00")) == Reason.OUTSIDE_TRADING_WINDOW
    assert reason_of(trader, intent(account), at("15:20")) == Reason.OUTSIDE_TRADING_WINDOW
    assert reason_of(trader, intent(account, product="CNC"), at("15:20")) is None


# --- size and count ----------------------------------------------------------------------------------------------


def test_more_lots_than_allowed_is_refused(trader, trader_client, account):
    set_limits(trader, max_lots_per_order=2)
    body = refused(trader_client, account, Reason.MAX_LOTS_EXCEEDED, symbol=OPTION, product="NRML", quantity=225)
    assert "3 lots" in body["detail"]
    placed(trader_client, account, symbol=OPTION, product="NRML", quantity=150)
    # Equity has lot 1: 3 shares are 3 lots.
    refused(trader_client, account, Reason.MAX_LOTS_EXCEEDED, quantity=3)


def test_an_order_worth_more_than_the_limit_is_refused(trader, trader_client, account):
    set_limits(trader, max_order_value=15000)
    placed(trader_client, account, order_type="LIMIT", price=1500, quantity=10)  # exactly the limit
    refused(trader_client, account, Reason.MAX_ORDER_VALUE_EXCEEDED, order_type="LIMIT", price=1500, quantity=11)
    # A market order is valued at the last price.
    refused(trader_client, account, Reason.MAX_ORDER_VALUE_EXCEEDED, quantity=11)
    # An SL-M order at its trigger.
    refused(
        trader_client,
        account,
        Reason.MAX_ORDER_VALUE_EXCEEDED,
        order_type="SL-M",
        trigger_price=1600,
        quantity=10,
    )


def test_a_new_position_beyond_the_open_positions_limit_is_refused(trader, trader_client, account):
    set_limits(trader, max_open_positions=1)
    long_infy(trader_client, account)
    refused(trader_client, account, Reason.MAX_OPEN_POSITIONS, symbol=SBIN, quantity=1)
    refused(trader_client, account, Reason.MAX_OPEN_POSITIONS, product="CNC", quantity=1)  # another product
    placed(trader_client, account, quantity=5)  # adding to the position held is no new position
    placed(trader_client, account, side="SELL", quantity=15)  # closed
    placed(trader_client, account, symbol=SBIN, quantity=1)  # room again


def test_open_positions_count_across_accounts(trader, trader_client, account):
    set_limits(trader, max_open_positions=1)
    other = paper_account(trader, label="Other")
    long_infy(trader_client, account)
    refused(trader_client, other, Reason.MAX_OPEN_POSITIONS, symbol=SBIN, quantity=1)


def test_orders_beyond_the_daily_count_are_refused(trader, trader_client, account):
    set_limits(trader, max_orders_per_day=2)
    first = placed(trader_client, account, order_type="LIMIT", price=1400)
    assert (
        trader_client.delete(f"/api/orders/{first['id']}").status_code == 200
    )  # cancelled orders still count, as brokers count them
    placed(trader_client, account, order_type="LIMIT", price=1400)
    body = refused(trader_client, account, Reason.MAX_ORDERS_PER_DAY)
    assert "2 orders" in body["detail"]
    # Another user's orders are not mine.
    from accounts.tests.factories import UserFactory

    someone = UserFactory()
    set_limits(someone, max_orders_per_day=2)
    placed(client_for(someone), paper_account(someone))


def test_yesterdays_orders_do_not_count_today(trader, trader_client, account):
    set_limits(trader, max_orders_per_day=1)
    order = placed(trader_client, account, order_type="LIMIT", price=1400)
    Order.objects.filter(pk=order["id"]).update(created_at=timezone.now() - timedelta(days=1))
    placed(trader_client, account, order_type="LIMIT", price=1400)


# --- loss, state, funds, products, segments ----------------------------------------------------------------------


def test_no_new_orders_once_the_days_loss_reaches_the_limit(trader, trader_client, account, market):
    set_limits(trader, max_daily_loss=500)
    position = long_infy(trader_client, account)
    market(EQUITY, str(position.average_price - 45))  # MTM -450: inside the limit
    placed(trader_client, account, symbol=SBIN, quantity=1, product="CNC")
    market(EQUITY, str(position.average_price - 60))  # MTM about -600
    body = refused(trader_client, account, Reason.DAILY_LOSS_LIMIT_HIT, symbol=SBIN, quantity=1, product="CNC")
    assert "loss limit" in body["detail"]
    # Closing the loser still passes.
    assert placed(trader_client, account, side="SELL", quantity=10)["status"] == "FILLED"


def test_reducing_allows_exits_only(trader, trader_client, account):
    position = long_infy(trader_client, account)
    state = state_today(user_id=trader.pk)
    RmsState.objects.filter(pk=state.pk).update(status=TradingState.REDUCING, reason=Reason.DAILY_PROFIT_TARGET_HIT)

    body = refused(trader_client, account, Reason.REDUCE_ONLY, symbol=SBIN, quantity=1)
    assert Reason.DAILY_PROFIT_TARGET_HIT in body["detail"]
    refused(trader_client, account, Reason.REDUCE_ONLY, quantity=1)  # adding to the long
    refused(trader_client, account, Reason.REDUCE_ONLY, side="SELL", quantity=20)  # flips to a short
    refused(trader_client, account, Reason.REDUCE_ONLY, side="SELL", quantity=10, product="CNC")  # another product
    assert placed(trader_client, account, side="SELL", quantity=4)["status"] == "FILLED"
    assert placed(trader_client, account, side="SELL", quantity=6)["status"] == "FILLED"
    position.refresh_from_db()
    assert position.quantity == 0
    refused(trader_client, account, Reason.REDUCE_ONLY, side="SELL", quantity=1)  # now a new short


def test_an_order_needing_more_margin_than_available_is_refused(trader, trader_client, instruments, market):
    small = paper_account(trader, opening_balance="10000", label="Small")
    market(EQUITY, "1500")
    body = refused(trader_client, small, Reason.INSUFFICIENT_FUNDS, product="CNC")  # 15000 of 10000
    assert "10000" in body["detail"]
    placed(trader_client, small, product="MIS")  # a fifth of it as intraday margin


def test_the_funds_check_can_be_left_to_the_broker(trader, trader_client, instruments, market, settings):
    settings.RMS_FUNDS_CHECK = False
    small = paper_account(trader, opening_balance="10000", label="Small")
    market(EQUITY, "1500")
    response = place(trader_client, small, product="CNC")
    assert response.status_code == 422 and response.json()["error_code"] == "ORDER_REJECTED"  # the exchange's own


def test_a_product_not_allowed_is_refused(trader, trader_client, account):
    set_limits(trader, allowed_products=["CNC"])
    body = refused(trader_client, account, Reason.PRODUCT_NOT_ALLOWED, product="MIS")
    assert "MIS" in body["detail"]
    placed(trader_client, account, product="CNC")


def test_a_segment_not_allowed_is_refused(trader, trader_client, account):
    set_limits(trader, allowed_segments=["NSE"])
    body = refused(trader_client, account, Reason.SEGMENT_NOT_ALLOWED, symbol=OPTION, product="NRML", quantity=75)
    assert "NFO" in body["detail"]
    placed(trader_client, account)


# --- overrides ---------------------------------------------------------------------------------------------------


def test_an_account_override_applies_to_that_account_only(trader, trader_client, account):
    other = paper_account(trader, label="Other")
    set_limits(trader, max_order_value=100000)
    set_limits(trader, account=account, max_order_value=10000)

    refused(trader_client, account, Reason.MAX_ORDER_VALUE_EXCEEDED)  # 15000 > 10000
    placed(trader_client, other)  # the profile's 100000
    # Another user with the same kind of account is untouched.
    from accounts.tests.factories import UserFactory

    someone = UserFactory()
    placed(client_for(someone), paper_account(someone))


def test_an_override_inherits_what_it_leaves_empty(trader, trader_client, account):
    set_limits(trader, allowed_products=["CNC"])
    set_limits(trader, account=account, max_order_value=100000)
    refused(trader_client, account, Reason.PRODUCT_NOT_ALLOWED, product="MIS")


# --- what always passes ------------------------------------------------------------------------------------------


def test_exits_pass_every_rule(trader, trader_client, account, admin_user):
    long_infy(trader_client, account)
    set_limits(
        trader,
        kill_switch=True,
        max_orders_per_day=1,
        max_order_value=1,
        max_lots_per_order=1,
        max_open_positions=1,
        allowed_products=["CNC"],
        allowed_segments=["NFO"],
    )
    refused(trader_client, account, Reason.TRADING_HALTED, quantity=1)
    assert placed(trader_client, account, side="SELL", quantity=10)["status"] == "FILLED"
    assert Position.objects.get(account=account, symbol=EQUITY).quantity == 0


def test_exits_pass_a_halted_day_and_a_closed_window(trader, trader_client, account, admin_user):
    long_infy(trader_client, account)
    now = timezone.localtime(timezone.now(), IST).time()
    window = (time(13), time(14)) if now < time(12) else (time(1), time(2))
    set_limits(trader, trading_window_start=window[0], trading_window_end=window[1])
    state = state_today(user_id=trader.pk)
    RmsState.objects.filter(pk=state.pk).update(status=TradingState.HALTED, reason=Reason.OPERATOR_HALT)
    assert placed(trader_client, account, side="SELL", quantity=10)["status"] == "FILLED"


def test_two_exits_of_the_whole_position_are_not_both_exits(trader, trader_client, account):
    """Resting sells of the whole long, each an exit on its own, would together make a short: new exposure."""
    long_infy(trader_client, account)
    state = state_today(user_id=trader.pk)
    RmsState.objects.filter(pk=state.pk).update(status=TradingState.HALTED, reason=Reason.OPERATOR_HALT)
    first = placed(trader_client, account, side="SELL", quantity=6, order_type="LIMIT", price=1600)
    placed(trader_client, account, side="SELL", quantity=4, order_type="LIMIT", price=1600)  # still within the 10
    refused(trader_client, account, Reason.TRADING_HALTED, side="SELL", quantity=1, order_type="LIMIT", price=1600)
    # A cancelled exit frees its quantity again.
    assert trader_client.delete(f"/api/orders/{first['id']}").status_code == 200
    placed(trader_client, account, side="SELL", quantity=6, order_type="LIMIT", price=1600)


def test_a_manual_exit_passes_beside_the_positions_target_and_stop(trader, trader_client, account):
    entry = placed(trader_client, account, target=1600, stop_loss=1400)
    assert entry["status"] == "FILLED"
    from orders.services import order_exits_place

    order_exits_place(order_id=entry["id"])  # the target and stop-loss legs (a worker does this after commit)
    assert Order.objects.filter(parent_id=entry["id"]).count() == 2
    set_limits(trader, kill_switch=True)
    assert placed(trader_client, account, side="SELL", quantity=10)["status"] == "FILLED"


def test_the_rms_own_orders_always_pass(trader, account, admin_user):
    set_limits(trader, kill_switch=True, max_order_value=1, allowed_products=["CNC"])
    user_halt(actor=admin_user, user=trader)
    assert reason_of(trader, intent(account, source=OrderSource.RMS), timezone.now()) is None
    assert reason_of(trader, intent(account, source=OrderSource.STRATEGY), timezone.now()) == Reason.TRADING_HALTED
    order = order_place(
        user=trader,
        spec=OrderSpec(
            account_id=account.pk, symbol=EQUITY, side="SELL", quantity=10, order_type="MARKET", product="MIS"
        ),
        source=OrderSource.RMS,
        role=LegRole.SQUARE_OFF,
    )
    assert order.status == OrderStatus.FILLED
