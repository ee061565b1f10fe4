"""A running rule strategy against stored 1-minute candles: it enters when the entry rule turns true on the last
closed bar, once per bar however often the evaluation runs, and exits when the exit rule does."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from marketdata.models import Candle, Instrument
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from orders.tests.factories import EQUITY
from strategies import services
from strategies.models import Signal, SignalStatus, Strategy, StrategyStatus

pytestmark = pytest.mark.django_db

IST = ZoneInfo("Asia/Kolkata")
# 10:00 to 10:07 IST, then a bar opening at 10:08. sma(close, 3) on the bar of 10:06 is 1490 (close 1485, below);
# on 10:07's it is 1500 (close 1525): the close crosses above. On 10:08's it is 1486.67 (close 1450): below.
CLOSES = [1500, 1500, 1500, 1500, 1495, 1490, 1485, 1525, 1450]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def today_at(hh_mm_ss: str) -> datetime:
    return datetime.combine(timezone.localdate(timezone=IST), time.fromisoformat(hh_mm_ss), tzinfo=IST)


def store_candles(closes: list[int], *, first: datetime) -> None:
    Candle.objects.bulk_create(
        Candle(
            symbol=EQUITY,
            interval="1m",
            start=(first + timedelta(minutes=index)).astimezone(UTC),
            open=Decimal(close),
            high=Decimal(close + 2),
            low=Decimal(close - 2),
            close=Decimal(close),
            volume=1000,
        )
        for index, close in enumerate(closes)
    )


@pytest.fixture
def rule_strategy(trader_client, paper, publish_quote, settings) -> dict:
    """A running paper rule strategy buying 1 lot of INFY when its close crosses above its 3-bar SMA, selling when
    the close falls below it; today's candles stored from 10:00 IST."""
    settings.MARKET_ALWAYS_OPEN = True  # today trades, whatever day the tests run on
    publish_quote(EQUITY, Decimal(1500))
    body = {
        "name": "INFY SMA cross",
        "kind": "rule",
        "rule_symbol": EQUITY,
        "entry_rule": "close crosses_above sma(close, 3)",
        "exit_rule": "close < sma(close, 3)",
        "exit_time": "15:15",
        "accounts": [{"account_id": paper.pk}],
        "legs": [{"underlying": "INFY", "instrument": "EQ", "side": "BUY", "lots": 1}],
    }
    created = trader_client.post("/api/strategies", body, format="json")
    assert created.status_code == 201, created.json()
    started = trader_client.post(f"/api/strategies/{created.json()['id']}/start", {"mode": "paper"}, format="json")
    assert started.status_code == 201, started.json()
    store_candles(CLOSES, first=today_at("10:00"))
    return {"id": created.json()["id"], "run_id": started.json()["run"]["id"]}


def held(account) -> int:
    position = Position.objects.filter(account=account, symbol=EQUITY).first()
    return position.quantity if position is not None else 0


def test_the_entry_waits_for_the_crossing_bar_to_close(rule_strategy, paper):
    # At 10:07:30 the crossing bar (10:07) is still forming; the last closed bar (10:06) does not cross.
    assert services.rules_evaluate(now=today_at("10:07:30")) == 0

    assert not Order.objects.filter(strategy_ref=rule_strategy["id"]).exists()
    assert not Signal.objects.filter(strategy_id=rule_strategy["id"]).exists()


def test_a_crossing_on_the_last_closed_bar_enters_once(rule_strategy, paper):
    # 10:08:30: the bar of 10:07 has closed crossing above; the forming bar of 10:08 (close 1450) is not read yet.
    acted = services.rules_evaluate(now=today_at("10:08:30"))

    assert acted == 1
    [order] = Order.objects.filter(strategy_ref=rule_strategy["id"])
    assert (order.symbol, order.side, order.quantity, order.source, order.role, order.status) == (
        EQUITY,
        "BUY",
        1,
        OrderSource.STRATEGY,
        LegRole.ENTRY,
        OrderStatus.FILLED,
    )
    assert held(paper) == 1
    [signal] = Signal.objects.filter(strategy_id=rule_strategy["id"])
    assert (signal.source, signal.action, signal.symbol, signal.status, signal.order_ids) == (
        "rule",
        "ENTRY",
        EQUITY,
        SignalStatus.ACCEPTED,
        [order.pk],
    )
    assert "10:08" in signal.detail  # the bar closing at 10:08

    # The evaluation runs again within the same bar: nothing more.
    assert services.rules_evaluate(now=today_at("10:08:45")) == 0
    assert services.rules_evaluate(now=today_at("10:08:59")) == 0
    assert Order.objects.filter(strategy_ref=rule_strategy["id"]).count() == 1
    assert Signal.objects.filter(strategy_id=rule_strategy["id"]).count() == 1
    assert held(paper) == 1


def test_the_exit_rule_closes_the_position_on_a_later_bar(rule_strategy, paper):
    assert services.rules_evaluate(now=today_at("10:08:30")) == 1
    assert held(paper) == 1

    # 10:09:05: the bar of 10:08 has closed at 1450, below its SMA.
    assert services.rules_evaluate(now=today_at("10:09:05")) == 1

    assert held(paper) == 0
    [exit_order] = Order.objects.filter(strategy_ref=rule_strategy["id"], role=LegRole.SQUARE_OFF)
    assert (exit_order.side, exit_order.quantity, exit_order.status) == ("SELL", 1, OrderStatus.FILLED)
    exit_signal = Signal.objects.get(strategy_id=rule_strategy["id"], action="EXIT")
    assert (exit_signal.source, exit_signal.status, exit_signal.order_ids) == (
        "rule",
        SignalStatus.ACCEPTED,
        [exit_order.pk],
    )
    # Flat again, and the same bar does not trade again (its close is below the SMA: no fresh cross either).
    assert services.rules_evaluate(now=today_at("10:09:30")) == 0
    assert Order.objects.filter(strategy_ref=rule_strategy["id"]).count() == 2
    assert Signal.objects.filter(strategy_id=rule_strategy["id"]).count() == 2


def test_nothing_is_evaluated_after_the_exit_time_or_once_stopped(rule_strategy, paper, trader_client):
    store_candles([1480, 1525], first=today_at("15:13"))  # a cross on the bar closing 15:15

    assert services.rules_evaluate(now=today_at("15:15:30")) == 0
    assert not Order.objects.filter(strategy_ref=rule_strategy["id"]).exists()

    assert trader_client.post(f"/api/strategies/{rule_strategy['id']}/stop", {}, format="json").status_code == 200
    assert services.rules_evaluate(now=today_at("10:08:30")) == 0
    assert not Order.objects.filter(strategy_ref=rule_strategy["id"]).exists()
    assert not Signal.objects.filter(strategy_id=rule_strategy["id"]).exists()


def test_a_leg_that_cannot_be_placed_is_recorded_as_a_rejected_signal(rule_strategy, paper, trader_client):
    # INFY is delisted while the strategy runs: its leg names no instrument any more.
    Instrument.objects.filter(symbol=EQUITY).update(is_active=False)

    services.rules_evaluate(now=today_at("10:08:30"))

    assert held(paper) == 0
    [signal] = Signal.objects.filter(strategy_id=rule_strategy["id"])
    assert (signal.source, signal.action, signal.status, signal.reason) == ("rule", "ENTRY", "rejected", "LEG_FAILED")
    strategy = Strategy.objects.get(pk=rule_strategy["id"])
    assert strategy.status == StrategyStatus.RUNNING and strategy.status_message
