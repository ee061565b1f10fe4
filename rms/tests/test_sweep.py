"""The MTM monitor and what it enforces: the set-based MTM, loss and profit breaches with their square-off through
the order pipeline, the profit lock and its trailing, the auto square-off at a controlled clock, overlapping sweeps,
a square-off resumed after a worker died, resets, a new trading day, and tick-driven evaluation."""

import threading
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as project_settings
from django.db import connection, connections

from accounts.models import AuditEvent, Notification, Role
from accounts.tests.factories import UserFactory
from accounts.tests.test_events_ws import connect, token_for
from algoterm.api.errors import RiskRejected
from algoterm.testing import client_for
from brokers.models import AccountStatus
from brokers.prices import quote_at, quote_publish
from brokers.services import broker_account_refresh, broker_session_mark_expired
from orders.hooks import OrderIntent
from orders.models import LegRole, Order, OrderEvent, OrderSource, OrderStatus, Position
from orders.tests.factories import EQUITY, paper_account, standard_instruments
from rms import services
from rms.models import RmsEvent, RmsState, TradingState
from rms.services import (
    IST,
    Reason,
    check_order,
    evaluation,
    mtm_book,
    profile_update,
    state_today,
    sweep,
    trading_day,
    user_halt,
    user_mtm,
    user_resume,
)
from rms.services.evaluation import evaluation_pending_take, evaluation_request
from rms.tasks import evaluate_pending
from rms.tests.conftest import placed, refused, set_limits

pytestmark = pytest.mark.django_db

SBIN = "NSE:SBIN"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def D(value) -> Decimal:
    return Decimal(str(value))


def at(clock: str, day=None) -> datetime:
    """`clock` (HH:MM[:SS]) IST on `day` (today's IST date unless told)."""
    return datetime.combine(day or trading_day(), time.fromisoformat(clock), tzinfo=IST)


def hold(client, account, market, *, symbol=EQUITY, quantity=10, product="MIS", price="1500") -> Position:
    """A long of `quantity` bought at market through the API; returns the position (its average is the fill)."""
    market(symbol, price)
    order = placed(client, account, symbol=symbol, quantity=quantity, product=product)
    assert order["status"] == "FILLED", order
    return Position.objects.get(account=account, symbol=symbol, product=product)


def mtm_at(market, position: Position, mtm) -> None:
    """Publish the price at which the one position's unrealized PnL is `mtm`."""
    market(position.symbol, str(position.average_price + D(mtm) / position.quantity))


def square_off_orders(user) -> list[Order]:
    return list(Order.objects.filter(user=user, role=LegRole.SQUARE_OFF).order_by("created_at"))


def events(user, kind) -> list[RmsEvent]:
    return list(RmsEvent.objects.filter(user=user, kind=kind).order_by("created_at"))


def open_quantity(user) -> dict[tuple[str, str], int]:
    return {(p.symbol, p.product): p.quantity for p in Position.objects.filter(user=user)}


# --- MTM ---------------------------------------------------------------------------------------------------------


def test_mtm_is_todays_realized_plus_unrealized(instruments, publish_quote, no_tick_evaluation):
    today = trading_day()
    yesterday = today - timedelta(days=1)
    first, second, flat = UserFactory(), UserFactory(), UserFactory()
    a1, a2 = paper_account(first, label="One"), paper_account(first, label="Two")
    b1, c1 = paper_account(second), paper_account(flat)

    def position(account, symbol, product, quantity, average, day_realized="0", day=today):
        return Position.objects.create(
            user=account.owner,
            account=account,
            symbol=symbol,
            product=product,
            quantity=quantity,
            average_price=D(average),
            realized_pnl=D(day_realized) + D("1000"),  # lifetime realized: not today's MTM
            day_realized_pnl=D(day_realized),
            trading_day=day,
        )

    position(a1, EQUITY, "MIS", 10, "1500.25", "250.50")
    position(a1, SBIN, "CNC", 3, "790.00", "999.00", day=yesterday)  # carried: its old day's realized is not today's
    position(a1, "NSE:OLDCO", "CNC", 0, "0", "500.00", day=yesterday)  # closed on an earlier day: not today's MTM
    position(a2, SBIN, "MIS", -5, "800.40", "-100.25")
    position(a2, EQUITY, "CNC", 0, "0", "75.10")  # closed today: its realized counts
    position(b1, EQUITY, "MIS", -4, "1510.00")
    position(c1, SBIN, "MIS", 0, "0", "10.00", day=yesterday)  # nothing today: not evaluated
    publish_quote(EQUITY, "1512.35")
    publish_quote(SBIN, "801.10")

    first_a1 = D("250.50") + (D("1512.35") - D("1500.25")) * 10 + (D("801.10") - D("790.00")) * 3
    first_a2 = D("-100.25") + (D("801.10") - D("800.40")) * -5 + D("75.10")
    second_b1 = (D("1512.35") - D("1510.00")) * -4
    assert (first_a1, first_a2, second_b1) == (D("404.80"), D("-28.65"), D("-9.40"))

    book = mtm_book()
    mtm = dict(zip(book.user_ids, book.mtm, strict=True))
    assert set(mtm) == {first.pk, second.pk}
    assert D(mtm[first.pk]) == first_a1 + first_a2 == D("376.15")
    assert D(mtm[second.pk]) == second_b1
    assert D(book.account_mtm[a1.pk]) == first_a1
    assert D(book.account_mtm[a2.pk]) == first_a2
    assert D(book.account_mtm[b1.pk]) == second_b1
    open_positions = dict(zip(book.user_ids, book.open_positions, strict=True))
    assert open_positions == {first.pk: 3, second.pk: 1}
    mis_open = dict(zip(book.user_ids, book.mis_open, strict=True))
    assert mis_open == {first.pk: 2, second.pk: 1}
    assert user_mtm(user=first) == D("376.15")
    assert user_mtm(user=flat) == D("0.00")
    assert sweep(act=False).evaluated == 2
    # A symbol without a quote contributes its realized PnL only.
    position(b1, "NSE:NOQUOTE", "MIS", 7, "100", "12.34")
    assert user_mtm(user=second) == second_b1 + D("12.34")


# --- loss breach -------------------------------------------------------------------------------------------------


@pytest.fixture
def losing(trader, trader_client, paper, market, no_tick_evaluation):
    """A trader with a 500 loss limit, long INFY (MIS) and SBIN (CNC), a resting buy, and INFY now down 1000."""
    set_limits(trader, max_daily_loss=500)
    infy = hold(trader_client, paper, market)
    sbin = hold(trader_client, paper, market, symbol=SBIN, quantity=5, product="CNC", price="800")
    resting = placed(trader_client, paper, symbol=SBIN, quantity=1, order_type="LIMIT", price=700, product="CNC")
    mtm_at(market, infy, -1000)
    market(SBIN, str(sbin.average_price))
    return resting


def test_a_loss_breach_halts_cancels_and_squares_off_through_the_pipeline(trader, trader_client, paper, losing):
    assert user_mtm(user=trader) == D("-1000.00")
    result = sweep()
    assert [(b.user_id, b.reason, b.mtm) for b in result.breaches] == [
        (trader.pk, Reason.DAILY_LOSS_LIMIT_HIT, D("-1000.00"))
    ]

    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason, state.breach_mtm) == (TradingState.HALTED, Reason.DAILY_LOSS_LIMIT_HIT, -1000)
    assert state.square_off_pending is False and state.square_off_done_at is not None
    assert Order.objects.get(pk=losing["id"]).status == OrderStatus.CANCELLED
    orders = square_off_orders(trader)
    assert sorted((o.symbol, o.side, o.quantity, o.product) for o in orders) == [
        (EQUITY, "SELL", 10, "MIS"),
        (SBIN, "SELL", 5, "CNC"),
    ]
    assert all(o.source == OrderSource.RMS and o.status == OrderStatus.FILLED for o in orders)
    assert set(OrderEvent.objects.filter(order__in=orders).values_list("source", flat=True)) >= {OrderSource.RMS}
    assert set(open_quantity(trader).values()) == {0}

    [breach] = events(trader, RmsEvent.Kind.BREACH)
    assert (breach.reason, breach.mtm, breach.details) == (Reason.DAILY_LOSS_LIMIT_HIT, -1000, {"state": "HALTED"})
    [square_off] = events(trader, RmsEvent.Kind.SQUARE_OFF)
    assert sorted(square_off.details["placed"]) == sorted(o.pk for o in orders)
    assert square_off.details["cancelled"] == [losing["id"]] and square_off.details["failed"] == []
    [notification] = Notification.objects.filter(user=trader, kind="rms_breach")
    assert notification.data["reason"] == Reason.DAILY_LOSS_LIMIT_HIT and notification.data["event_id"] == breach.pk
    assert AuditEvent.objects.filter(action="rms.breach", target_id=trader.pk).count() == 1

    # Handled once: later sweeps find nothing more to do, and the day is halted for new orders.
    again = sweep()
    assert again.breaches == [] and again.resumed == 0
    assert len(events(trader, RmsEvent.Kind.BREACH)) == 1 and len(square_off_orders(trader)) == 2
    refused(trader_client, paper, Reason.TRADING_HALTED, symbol=SBIN, quantity=1, product="CNC")


def test_a_sweep_leaves_users_inside_their_limits_alone(trader, trader_client, paper, market, no_tick_evaluation):
    set_limits(trader, max_daily_loss=500, daily_profit_target=2000)
    infy = hold(trader_client, paper, market)
    mtm_at(market, infy, -499.5)
    assert sweep().breaches == []
    mtm_at(market, infy, 1999.5)
    assert sweep().breaches == []
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL
    assert square_off_orders(trader) == []
    assert not RmsEvent.objects.filter(user=trader).exclude(kind=RmsEvent.Kind.CONFIG).exists()


def test_the_loss_limit_is_reached_at_exactly_the_limit(trader, trader_client, paper, market, no_tick_evaluation):
    set_limits(trader, max_daily_loss=500)
    infy = hold(trader_client, paper, market)
    mtm_at(market, infy, -500)
    assert [b.reason for b in sweep().breaches] == [Reason.DAILY_LOSS_LIMIT_HIT]


def test_only_the_breaching_user_is_squared_off(trader, trader_client, paper, market, losing):
    other = UserFactory()
    other_account = paper_account(other)
    set_limits(other, max_daily_loss=500)
    market(EQUITY, "1400")
    placed(client_for(other), other_account)  # long at 1400: INFY is at its price, nothing lost
    sweep()
    assert state_today(user_id=other.pk).status == TradingState.NORMAL
    assert square_off_orders(other) == [] and open_quantity(other) == {(EQUITY, "MIS"): 10}


# --- one breach, one square-off ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_overlapping_sweeps_handle_one_breach_once(settings, publish_quote):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.RMS_TICK_EVALUATION = False
    standard_instruments()
    user = UserFactory()
    account = paper_account(user)
    client = client_for(user)
    set_limits(user, max_daily_loss=500)
    infy = hold(client, account, publish_quote)
    hold(client, account, publish_quote, symbol=SBIN, quantity=5, product="CNC", price="800")
    mtm_at(publish_quote, infy, -1000)

    threads, rounds, errors = 8, 3, []  # later rounds find the square-off pending, maybe still running
    barrier = threading.Barrier(threads)

    def run() -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                sweep()
        except Exception as error:  # reported below with the others
            errors.append(error)
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []

    assert len(events(user, RmsEvent.Kind.BREACH)) == 1
    # The sweeps that found the square-off running elsewhere left it to that worker.
    assert len(events(user, RmsEvent.Kind.SQUARE_OFF)) == 1
    orders = square_off_orders(user)
    assert sorted((o.symbol, o.side, o.quantity) for o in orders) == [(EQUITY, "SELL", 10), (SBIN, "SELL", 5)]
    assert open_quantity(user) == {(EQUITY, "MIS"): 0, (SBIN, "CNC"): 0}
    assert Notification.objects.filter(user=user, kind="rms_breach").count() == 1
    state = state_today(user_id=user.pk)
    assert state.status == TradingState.HALTED and state.square_off_pending is False
    assert sweep().breaches == [] and len(square_off_orders(user)) == 2
    connections.close_all()


# --- profit rules ------------------------------------------------------------------------------------------------


def test_the_profit_target_leaves_exits_only(trader, trader_client, paper, market, no_tick_evaluation):
    set_limits(trader, daily_profit_target=1000)
    infy = hold(trader_client, paper, market)
    mtm_at(market, infy, 1200)
    assert [(b.reason, b.mtm) for b in sweep().breaches] == [(Reason.DAILY_PROFIT_TARGET_HIT, D("1200.00"))]
    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason) == (TradingState.REDUCING, Reason.DAILY_PROFIT_TARGET_HIT)
    [order] = square_off_orders(trader)
    assert (order.side, order.quantity, order.status, order.source) == ("SELL", 10, OrderStatus.FILLED, "rms")
    assert len(events(trader, RmsEvent.Kind.BREACH)) == 1 and len(events(trader, RmsEvent.Kind.SQUARE_OFF)) == 1
    notification = Notification.objects.get(user=trader, kind="rms_breach")
    assert "only exits are allowed" in notification.body
    refused(trader_client, paper, Reason.REDUCE_ONLY)
    refused(trader_client, paper, Reason.REDUCE_ONLY, side="SELL")  # a new short is new exposure too
    assert sweep().breaches == []


def test_a_loss_after_the_profit_target_still_halts(trader, trader_client, paper, market, no_tick_evaluation):
    """REDUCING is not the end: a loss breach after it escalates to HALTED."""
    set_limits(trader, daily_profit_target=1000, max_daily_loss=500)
    infy = hold(trader_client, paper, market)
    state = state_today(user_id=trader.pk)
    RmsState.objects.filter(pk=state.pk).update(status=TradingState.REDUCING, reason=Reason.DAILY_PROFIT_TARGET_HIT)
    mtm_at(market, infy, -600)
    assert [b.reason for b in sweep().breaches] == [Reason.DAILY_LOSS_LIMIT_HIT]
    assert state_today(user_id=trader.pk).status == TradingState.HALTED
    assert open_quantity(trader) == {(EQUITY, "MIS"): 0}


def test_the_profit_lock_locks_then_squares_off_below_it(trader, trader_client, paper, market, no_tick_evaluation):
    set_limits(trader, profit_lock_at=1000, profit_lock_amount=500)
    infy = hold(trader_client, paper, market)

    mtm_at(market, infy, 900)
    assert sweep().locks_raised == 0 and state_today(user_id=trader.pk).locked_profit is None

    mtm_at(market, infy, 1000)
    result = sweep()
    assert result.locks_raised == 1 and result.breaches == []
    assert state_today(user_id=trader.pk).locked_profit == 500
    [locked] = events(trader, RmsEvent.Kind.PROFIT_LOCKED)
    assert (locked.mtm, locked.details) == (1000, {"locked": "500.00"})

    mtm_at(market, infy, 600)  # fell, but above the lock
    assert sweep().breaches == [] and sweep().locks_raised == 0
    mtm_at(market, infy, 500)  # at the lock is not below it
    assert sweep().breaches == []

    mtm_at(market, infy, 450)
    assert [(b.reason, b.mtm) for b in sweep().breaches] == [(Reason.PROFIT_LOCK_HIT, D("450.00"))]
    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason, state.locked_profit) == (TradingState.REDUCING, Reason.PROFIT_LOCK_HIT, 500)
    [order] = square_off_orders(trader)
    assert (order.side, order.quantity, order.status) == ("SELL", 10, OrderStatus.FILLED)
    assert len(events(trader, RmsEvent.Kind.PROFIT_LOCKED)) == 1
    refused(trader_client, paper, Reason.REDUCE_ONLY)


def test_the_trailing_lock_rises_with_mtm(trader, trader_client, paper, market, no_tick_evaluation):
    set_limits(trader, profit_lock_at=1000, profit_lock_amount=500, trailing_profit_every=200, trailing_profit_step=100)
    infy = hold(trader_client, paper, market)

    mtm_at(market, infy, 1100)
    sweep()
    assert state_today(user_id=trader.pk).locked_profit == 500  # less than one step gained beyond the lock

    mtm_at(market, infy, 1400)  # two steps beyond where it locked
    assert sweep().locks_raised == 1
    assert state_today(user_id=trader.pk).locked_profit == 700
    assert [e.details["locked"] for e in events(trader, RmsEvent.Kind.PROFIT_LOCKED)] == ["500.00", "700.00"]

    mtm_at(market, infy, 1300)  # the lock never falls back
    assert sweep().locks_raised == 0 and state_today(user_id=trader.pk).locked_profit == 700

    mtm_at(market, infy, 650)  # above the first lock, below the raised one
    assert [b.reason for b in sweep().breaches] == [Reason.PROFIT_LOCK_HIT]
    assert state_today(user_id=trader.pk).status == TradingState.REDUCING
    assert open_quantity(trader) == {(EQUITY, "MIS"): 0}


def test_profit_lock_levels():
    limits = {
        "profit_lock_at": D(1000),
        "profit_lock_amount": D(500),
        "trailing_profit_every": D(200),
        "trailing_profit_step": D(100),
    }
    assert services.profit_lock_level(mtm=D("999.99"), limits=limits) is None
    assert services.profit_lock_level(mtm=D(1000), limits=limits) == 500
    assert services.profit_lock_level(mtm=D("1199.99"), limits=limits) == 500
    assert services.profit_lock_level(mtm=D(1200), limits=limits) == 600
    assert services.profit_lock_level(mtm=D(1400), limits=limits) == 700
    without_trailing = limits | {"trailing_profit_every": None, "trailing_profit_step": None}
    assert services.profit_lock_level(mtm=D(5000), limits=without_trailing) == 500


# --- auto square-off ---------------------------------------------------------------------------------------------


def test_the_auto_square_off_closes_intraday_positions_once_at_its_time(
    trader, trader_client, paper, market, no_tick_evaluation
):
    # The positions are taken before the time is set: the API checks MIS orders against the real clock.
    hold(trader_client, paper, market)
    hold(trader_client, paper, market, symbol=SBIN, quantity=5, product="CNC", price="800")
    resting = placed(trader_client, paper, symbol=SBIN, quantity=1, order_type="LIMIT", price=700, product="MIS")
    set_limits(trader, auto_square_off_time=time(15, 15))

    assert sweep(now=at("15:14:59")).auto_squared_off == 0
    assert square_off_orders(trader) == [] and open_quantity(trader) == {(EQUITY, "MIS"): 10, (SBIN, "CNC"): 5}

    assert sweep(now=at("15:15")).auto_squared_off == 1
    [order] = square_off_orders(trader)
    assert (order.symbol, order.side, order.quantity, order.product) == (EQUITY, "SELL", 10, "MIS")
    assert (order.source, order.status) == (OrderSource.RMS, OrderStatus.FILLED)
    assert open_quantity(trader) == {(EQUITY, "MIS"): 0, (SBIN, "CNC"): 5}
    assert Order.objects.get(pk=resting["id"]).status == OrderStatus.CANCELLED  # a pending MIS order too
    [event] = events(trader, RmsEvent.Kind.AUTO_SQUARE_OFF)
    assert (event.reason, event.details["placed"]) == (Reason.AUTO_SQUARE_OFF, [order.pk])
    state = state_today(user_id=trader.pk)
    assert state.auto_square_off_done_at is not None and state.status == TradingState.NORMAL

    # An operator lifts it (the trader's own loosening would wait for the next trading day) for a new intraday
    # position after it.
    profile_update(actor=UserFactory(role=Role.ADMIN), user=trader, data={"auto_square_off_time": None})
    hold(trader_client, paper, market, quantity=2)
    set_limits(trader, auto_square_off_time=time(15, 15))
    assert sweep(now=at("15:20")).auto_squared_off == 0  # once a day
    assert len(square_off_orders(trader)) == 1 and len(events(trader, RmsEvent.Kind.AUTO_SQUARE_OFF)) == 1
    assert open_quantity(trader)[(EQUITY, "MIS")] == 2


def test_an_auto_square_off_that_could_not_run_is_retried(
    trader, trader_client, paper, market, settings, no_tick_evaluation
):
    from orders.services.square_off import _square_off_lock

    settings.SQUARE_OFF_LOCK_WAIT_SECONDS = 0.2
    hold(trader_client, paper, market)
    set_limits(trader, auto_square_off_time=time(15, 15))
    with _square_off_lock(user_id=trader.pk):  # the user's own square-off is running
        assert sweep(now=at("15:15")).auto_squared_off == 1
    assert open_quantity(trader) == {(EQUITY, "MIS"): 10}
    assert state_today(user_id=trader.pk).auto_square_off_done_at is None

    broker_session_mark_expired(account=paper, reason="test")  # the broker refuses it: retried too
    assert sweep(now=at("15:16")).auto_squared_off == 1
    assert open_quantity(trader) == {(EQUITY, "MIS"): 10}
    assert state_today(user_id=trader.pk).auto_square_off_done_at is None

    broker_account_refresh(user=trader, account=paper)
    assert sweep(now=at("15:17")).auto_squared_off == 1
    assert open_quantity(trader) == {(EQUITY, "MIS"): 0}
    assert sweep(now=at("15:18")).auto_squared_off == 0


def test_the_auto_square_off_is_off_without_a_time(trader, trader_client, paper, market, no_tick_evaluation):
    hold(trader_client, paper, market)
    assert services.limits_for(user=trader).auto_square_off_time is None  # the test default
    assert sweep(now=at("23:59")).auto_squared_off == 0
    assert open_quantity(trader) == {(EQUITY, "MIS"): 10}


# --- resuming a half-done square-off -----------------------------------------------------------------------------


def test_a_breach_whose_worker_died_is_squared_off_by_the_next_sweep(trader, trader_client, paper, losing):
    # What breach_handle commits before it squares off, as if the worker died right after.
    state = state_today(user_id=trader.pk)
    RmsState.objects.filter(pk=state.pk).update(
        status=TradingState.HALTED, reason=Reason.DAILY_LOSS_LIMIT_HIT, square_off_pending=True
    )
    result = sweep()
    assert result.resumed == 1 and result.breaches == []
    assert set(open_quantity(trader).values()) == {0}
    assert Order.objects.get(pk=losing["id"]).status == OrderStatus.CANCELLED
    assert all(o.source == OrderSource.RMS for o in square_off_orders(trader))
    state.refresh_from_db()
    assert state.square_off_pending is False and state.square_off_done_at is not None
    assert events(trader, RmsEvent.Kind.BREACH) == [] and len(events(trader, RmsEvent.Kind.SQUARE_OFF)) == 1
    assert sweep().resumed == 0 and len(square_off_orders(trader)) == 2


def test_a_square_off_the_broker_refused_is_completed_by_a_later_sweep(trader, trader_client, paper, losing):
    broker_session_mark_expired(account=paper, reason="test")
    sweep()
    state = state_today(user_id=trader.pk)
    assert state.status == TradingState.HALTED and state.square_off_pending is True
    assert open_quantity(trader) == {(EQUITY, "MIS"): 10, (SBIN, "CNC"): 5}
    [failed] = events(trader, RmsEvent.Kind.SQUARE_OFF)
    assert len(failed.details["failed"]) == 3  # the resting order and both positions

    assert sweep().resumed == 1  # still logged out: still pending
    assert state_today(user_id=trader.pk).square_off_pending is True

    broker_account_refresh(user=trader, account=paper)
    paper.refresh_from_db()
    assert paper.status == AccountStatus.CONNECTED
    assert sweep().resumed == 1
    state.refresh_from_db()
    assert state.square_off_pending is False and state.square_off_done_at is not None
    assert set(open_quantity(trader).values()) == {0}
    assert Order.objects.get(pk=losing["id"]).status == OrderStatus.CANCELLED
    assert len(events(trader, RmsEvent.Kind.BREACH)) == 1
    assert sweep().resumed == 0


def test_a_user_whose_square_off_cannot_run_now_does_not_stop_the_sweep(
    trader, trader_client, paper, market, settings, no_tick_evaluation
):
    from orders.services.square_off import _square_off_lock

    settings.SQUARE_OFF_LOCK_WAIT_SECONDS = 0.2
    other = UserFactory()
    other_account = paper_account(other)
    for user, account in ((trader, paper), (other, other_account)):
        set_limits(user, max_daily_loss=500)
        infy = hold(client_for(user), account, market)
    mtm_at(market, infy, -1000)  # both bought at the same price
    first, second = sorted([trader, other], key=lambda user: user.pk)  # the order the sweep takes them in

    with _square_off_lock(user_id=first.pk):  # the user's own square-off is running
        result = sweep()
    assert sorted(b.user_id for b in result.breaches) == sorted([first.pk, second.pk])
    assert state_today(user_id=first.pk).square_off_pending is True
    assert open_quantity(first) == {(EQUITY, "MIS"): 10}
    assert state_today(user_id=second.pk).square_off_pending is False
    assert open_quantity(second) == {(EQUITY, "MIS"): 0}

    assert sweep().resumed == 1
    assert state_today(user_id=first.pk).square_off_pending is False
    assert open_quantity(first) == {(EQUITY, "MIS"): 0}


# --- resets and days ---------------------------------------------------------------------------------------------


def test_an_operator_halt_and_resume(trader, trader_client, paper, market, admin_user, no_tick_evaluation):
    hold(trader_client, paper, market)
    assert user_halt(actor=admin_user, user=trader) is True
    assert user_halt(actor=admin_user, user=trader) is False  # already halted
    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason) == (TradingState.HALTED, Reason.OPERATOR_HALT)
    assert open_quantity(trader) == {(EQUITY, "MIS"): 0}
    [breach] = events(trader, RmsEvent.Kind.BREACH)
    assert breach.actor == admin_user
    refused(trader_client, paper, Reason.TRADING_HALTED)

    state = user_resume(actor=admin_user, user=trader)
    assert (state.status, state.reason, state.square_off_pending) == (TradingState.NORMAL, "", False)
    assert events(trader, RmsEvent.Kind.RESUME)[0].details["from"] == "HALTED"
    assert AuditEvent.objects.filter(action="rms.resume").count() == 1
    placed(trader_client, paper)
    assert sweep().breaches == []
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL


def test_a_resume_after_a_loss_breach_gives_a_fresh_loss_budget(trader, trader_client, paper, losing, admin_user):
    assert [b.reason for b in sweep().breaches] == [Reason.DAILY_LOSS_LIMIT_HIT]
    realized = user_mtm(user=trader)
    assert realized <= D("-500")  # the square-off realized the loss

    state = user_resume(actor=admin_user, user=trader)
    assert state.mtm_baseline == realized
    assert sweep().breaches == []  # the loss already taken does not halt again
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL

    market_fill = placed(trader_client, paper, quantity=10)  # a new long at the current price
    assert market_fill["status"] == "FILLED"
    position = Position.objects.get(account=paper, symbol=EQUITY, product="MIS")
    quote_publish(quote_at(EQUITY, str(D(market_fill["average_price"]) - D("60"))))  # 600 more lost
    assert position.quantity == 10
    assert [b.reason for b in sweep().breaches] == [Reason.DAILY_LOSS_LIMIT_HIT]


@pytest.mark.django_db(transaction=True)
def test_a_fill_triggers_an_evaluation_without_a_tick_or_a_sweep(
    trader, trader_client, paper, market, eager_tasks, no_tick_evaluation
):
    set_limits(trader, daily_profit_target=100)
    infy = hold(trader_client, paper, market)
    market(EQUITY, str(infy.average_price + D("20")))  # +200 unrealized; ticks evaluate nobody here
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL

    sold = placed(trader_client, paper, side="SELL", quantity=5)  # the fill realizes about +100

    assert sold["status"] == "FILLED"
    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason) == (TradingState.REDUCING, Reason.DAILY_PROFIT_TARGET_HIT)
    assert Position.objects.get(account=paper, symbol=EQUITY, product="MIS").quantity == 0  # squared off


def test_a_new_trading_day_starts_normal(trader, trader_client, paper, market, no_tick_evaluation):
    yesterday = trading_day() - timedelta(days=1)
    RmsState.objects.create(
        user=trader, trading_day=yesterday, status=TradingState.HALTED, reason=Reason.DAILY_LOSS_LIMIT_HIT
    )
    set_limits(trader, max_daily_loss=500)
    infy = hold(trader_client, paper, market)  # yesterday's halt does not stop today's orders
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL
    mtm_at(market, infy, -600)
    assert [b.reason for b in sweep().breaches] == [Reason.DAILY_LOSS_LIMIT_HIT]  # a new day, a new breach
    refused(trader_client, paper, Reason.TRADING_HALTED)

    tomorrow = trading_day() + timedelta(days=1)
    result = sweep(now=at("10:00", tomorrow))
    assert result.evaluated == 0 and result.breaches == []  # today's closed loser is not tomorrow's MTM
    order = OrderIntent(
        account=paper,
        symbol=EQUITY,
        side="BUY",
        quantity=10,
        lot_size=1,
        order_type="MARKET",
        product="MIS",
        reference_price=D(1500),
        reduces_position=False,
        source=OrderSource.API,
    )
    check_order(user=trader, intent=order, now=at("10:00", tomorrow))  # passes
    assert state_today(user_id=trader.pk, day=tomorrow).status == TradingState.NORMAL
    with pytest.raises(RiskRejected):
        check_order(user=trader, intent=order)


# --- tick-driven -------------------------------------------------------------------------------------------------


def test_a_tick_that_breaches_squares_off_at_once(trader, trader_client, paper, market, eager_tasks):
    set_limits(trader, max_daily_loss=500)
    infy = hold(trader_client, paper, market)
    mtm_at(market, infy, -400)
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL
    mtm_at(market, infy, -700)  # no sweep called: the tick itself is evaluated
    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason) == (TradingState.HALTED, Reason.DAILY_LOSS_LIMIT_HIT)
    assert open_quantity(trader) == {(EQUITY, "MIS"): 0}
    [order] = square_off_orders(trader)
    assert (order.status, order.source) == (OrderStatus.FILLED, OrderSource.RMS)
    mtm_at(market, infy, -900)
    assert len(events(trader, RmsEvent.Kind.BREACH)) == 1 and len(square_off_orders(trader)) == 1


def test_ticks_evaluate_only_the_holders(trader, trader_client, paper, market, eager_tasks):
    set_limits(trader, max_daily_loss=500)
    infy = hold(trader_client, paper, market)
    other = UserFactory()
    set_limits(other, max_daily_loss=100)
    hold(client_for(other), paper_account(other), market, symbol=SBIN, quantity=1, price="800")
    market(SBIN, "600")  # the other's loser: the trader is not touched
    assert state_today(user_id=other.pk).status == TradingState.HALTED
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL
    assert open_quantity(trader) == {(EQUITY, "MIS"): 10}
    mtm_at(market, infy, -100)
    assert state_today(user_id=trader.pk).status == TradingState.NORMAL


# --- pushed to the user ------------------------------------------------------------------------------------------


@database_sync_to_async
def losing_trader() -> tuple:
    standard_instruments()
    user = UserFactory()
    account = paper_account(user)
    set_limits(user, max_daily_loss=500)
    infy = hold(client_for(user), account, publish)
    mtm_at(publish, infy, -1000)
    return user, account


def publish(symbol: str, price) -> int:
    return quote_publish(quote_at(symbol, price))


@pytest.mark.django_db(transaction=True)
async def test_a_breach_is_pushed_as_an_rms_alert_and_a_notification(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.RMS_TICK_EVALUATION = False
    try:
        user, _ = await losing_trader()
        communicator = await connect(f"/ws/events?token={token_for(user)}")
        assert (await communicator.receive_json_from())["t"] == "server_ready"
        await database_sync_to_async(sweep)()
        seen: dict[str, list[dict]] = {}
        while not {"rms_alert", "notification"} <= set(seen):
            message = await communicator.receive_json_from(timeout=5)
            seen.setdefault(message["t"], []).append(message["p"])
        [alert] = [a for a in seen["rms_alert"] if a["kind"] == "breach"]
        assert (alert["reason"], alert["state"], D(alert["mtm"])) == (Reason.DAILY_LOSS_LIMIT_HIT, "HALTED", -1000)
        assert any(n["kind"] == "rms_breach" for n in seen["notification"])
        await communicator.disconnect()
    finally:
        await database_sync_to_async(connections.close_all)()


@pytest.mark.skipif(project_settings.EMBEDDED, reason="embedded: no Redis to gather requests in")
def test_the_fills_of_a_burst_share_one_evaluation_task(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(evaluation, "task_send", lambda *, name, **options: sent.append(name))
    evaluation_pending_take()  # nothing left over from another test

    for user_id in ("usr_burst1", "usr_burst2", "usr_burst1"):
        evaluation_request(user_id=user_id)
    assert sent == ["rms.tasks.evaluate_pending"]
    assert evaluation_pending_take() == ["usr_burst1", "usr_burst2"]

    evaluation_request(user_id="usr_burst3")  # after the task took the set: another task
    assert sent == ["rms.tasks.evaluate_pending"] * 2
    assert evaluation_pending_take() == ["usr_burst3"]
    assert evaluation_pending_take() == []


@pytest.mark.skipif(project_settings.EMBEDDED, reason="embedded: no Redis to gather requests in")
def test_the_coalesced_evaluation_handles_a_breach(trader, paper, losing):
    evaluation_pending_take()
    evaluation_request(user_id=trader.pk)  # as the fill of an order would (the task is run here, not queued)

    assert evaluate_pending.apply().result == 1  # breaches handled
    state = state_today(user_id=trader.pk)
    assert (state.status, state.reason) == (TradingState.HALTED, Reason.DAILY_LOSS_LIMIT_HIT)
