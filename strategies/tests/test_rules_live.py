"""A running rule strategy against stored 1-minute candles: it enters when the entry rule turns true on the last
closed bar, once per bar however often the evaluation runs, and exits when the exit rule does."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from marketdata.models import Candle, Instrument
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from orders.tests.factories import EQUITY
from strategies import services
from strategies.backtest import backtest_execute
from strategies.definitions import Kind, LegDefinition, LegInstrument, StrategyDefinition
from strategies.models import Signal, SignalStatus, Strategy, StrategyStatus
from strategies.rules import rule_history, rule_parse

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
    strategy = start_infy_rule_strategy(
        trader_client,
        paper,
        name="INFY SMA cross",
        entry_rule="close crosses_above sma(close, 3)",
        exit_rule="close < sma(close, 3)",
    )
    store_candles(CLOSES, first=today_at("10:00"))
    return strategy


def start_infy_rule_strategy(trader_client, paper, **fields) -> dict:
    """A rule strategy buying 1 lot of INFY in the paper account, created and started through the API."""
    body = {
        "kind": "rule",
        "rule_symbol": EQUITY,
        "exit_time": "15:15",
        "accounts": [{"account_id": paper.pk}],
        "legs": [{"underlying": "INFY", "instrument": "EQ", "side": "BUY", "lots": 1}],
        **fields,
    }
    created = trader_client.post("/api/strategies", body, format="json")
    assert created.status_code == 201, created.json()
    started = trader_client.post(f"/api/strategies/{created.json()['id']}/start", {"mode": "paper"}, format="json")
    assert started.status_code == 201, started.json()
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


def test_a_rule_signal_is_told_to_the_operators(rule_strategy, django_capture_on_commit_callbacks):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from algoterm.realtime import ops_group

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(ops_group("signals"), channel)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.rules_evaluate(now=today_at("10:08:30"))
        message = async_to_sync(layer.receive)(channel)
    finally:
        async_to_sync(layer.group_discard)(ops_group("signals"), channel)

    [signal] = Signal.objects.filter(strategy_id=rule_strategy["id"])
    assert (message["type"], message["topic"], message["t"]) == ("ops.event", "signals", "signal")
    assert message["p"]["id"] == signal.pk and message["p"]["order_ids"] == signal.order_ids
    assert (message["p"]["source"], message["p"]["action"], message["p"]["status"]) == ("rule", "ENTRY", "accepted")


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


# --- history: a long indicator on hourly bars across weekends and holidays -----------------------------------------

# Thursday 16 April 2026, 10:20 IST: the 09:15-10:15 bar has closed, the 10:15 one is forming. The weeks before hold
# weekends and four NSE holidays (Ram Navami 26 March, Mahavir Jayanti 31 March, Good Friday 3 April, Ambedkar
# Jayanti 14 April), so 39 calendar days hold only 24 sessions: 169 hourly bars, fewer than ema(close, 200) needs.
EMA_NOW = datetime(2026, 4, 16, 10, 20, tzinfo=IST)
EMA_RULE = "close crosses_above ema(close, 200)"
HISTORY_SESSIONS = 45  # more than the warm-up needs, so only the window decides how many bars are read


def store_hourly_history(*, now: datetime = EMA_NOW) -> None:
    """Every minute of the HISTORY_SESSIONS trading days before `now`'s day at 1000, then today's minutes from 09:15
    to 10:19 at 1000 except the last of the first hour (10:14) and after, at 1100: the 09:15-10:15 bar closes at
    1100, above its ema(close, 200) (about 1001), after bars that closed at 1000, on their ema."""
    from marketdata import calendar

    today = now.astimezone(IST).date()
    day = calendar.trading_days_back(today, sessions=HISTORY_SESSIONS)
    rows = []
    while day < today:
        if calendar.is_trading_day(day):
            rows += [(datetime.combine(day, time(9, 15), tzinfo=IST) + timedelta(minutes=n), 1000) for n in range(375)]
        day += timedelta(days=1)
    opening = datetime.combine(today, time(9, 15), tzinfo=IST)
    rows += [(opening + timedelta(minutes=n), 1000 if n < 59 else 1100) for n in range(65)]
    Candle.objects.bulk_create(
        (
            Candle(
                symbol=EQUITY,
                interval="1m",
                start=moment.astimezone(UTC),
                open=Decimal(close),
                high=Decimal(close),
                low=Decimal(close),
                close=Decimal(close),
                volume=100,
            )
            for moment, close in rows
        ),
        batch_size=5000,
    )


@pytest.fixture
def hourly_ema_strategy(trader_client, paper, publish_quote, settings) -> dict:
    settings.MARKET_ALWAYS_OPEN = True  # the paper market fills whatever day the tests run on; the clock is EMA_NOW
    publish_quote(EQUITY, Decimal(1100))
    strategy = start_infy_rule_strategy(
        trader_client,
        paper,
        name="INFY hourly EMA 200",
        timeframe_minutes=60,
        entry_rule=EMA_RULE,
        exit_rule="close < ema(close, 200)",
    )
    store_hourly_history()
    return strategy


def test_an_hourly_ema_200_rule_reads_enough_history_across_weekends_and_holidays_to_fire_live(hourly_ema_strategy):
    acted = services.rules_evaluate(now=EMA_NOW)

    assert acted == 1
    [signal] = Signal.objects.filter(strategy_id=hourly_ema_strategy["id"])
    assert (signal.source, signal.action) == ("rule", "ENTRY")
    assert "10:15" in signal.detail  # the bar closing at 10:15, not the forming one


def test_the_rule_history_holds_the_bars_an_hourly_ema_200_needs(db):
    store_hourly_history()
    rule = rule_parse(EMA_RULE)

    history = rule_history(symbol=EQUITY, timeframe_minutes=60, rules=[rule], first_day=EMA_NOW.date(), end=EMA_NOW)

    assert rule.lookback == 201  # 200 bars for the ema, one more for the crossing's previous bar
    assert len(history.series) >= 202
    assert history.last_close == datetime(2026, 4, 16, 10, 15, tzinfo=IST)  # the forming 10:15 bar is left out
    days = {date.fromordinal(int(ordinal)) for ordinal in history.series.day}
    assert min(days) < date(2026, 3, 26)  # back across the four holidays and the weekends
    assert not days & {date(2026, 3, 26), date(2026, 3, 31), date(2026, 4, 3), date(2026, 4, 14)}


def test_live_evaluation_and_the_backtest_read_rule_history_through_the_same_function(hourly_ema_strategy, monkeypatch):
    from strategies import rules
    from strategies.backtest import engine
    from strategies.services import live_rules

    real_rule_history = rules.rule_history
    calls = []

    def recorded(**arguments):
        history = real_rule_history(**arguments)
        calls.append((arguments["first_day"], arguments["end"], len(history.series)))
        return history

    # Recorded where each caller looks the function up: live evaluation, and the backtest engine.
    monkeypatch.setattr(live_rules, "rule_history", recorded)
    monkeypatch.setattr(engine, "rule_history", recorded)
    definition = StrategyDefinition(
        kind=Kind.RULE,
        legs=(LegDefinition(underlying="INFY", instrument=LegInstrument.EQUITY, side="BUY", lots=1),),
        exit_time=time(15, 15),
        rule_symbol=EQUITY,
        timeframe_minutes=60,
        entry_rule=EMA_RULE,
    )

    assert services.rules_evaluate(now=EMA_NOW) == 1
    result = backtest_execute(definition=definition, start=EMA_NOW.date(), end=EMA_NOW.date(), capital=Decimal(100000))

    (live_day, live_end, live_bars), (backtest_day, backtest_end, backtest_bars) = calls
    assert live_day == backtest_day == EMA_NOW.date()
    assert (live_end, backtest_end) == (EMA_NOW, datetime(2026, 4, 17, tzinfo=IST))
    assert backtest_bars == live_bars + 1  # the same bars, and the 10:15 bar that had not closed at 10:20
    # Both act on the bar closing at 10:15: live entered then, the backtest at the next minute's open.
    (trade,) = result.trades
    assert trade.entry_at == datetime(2026, 4, 16, 10, 15, tzinfo=IST)
