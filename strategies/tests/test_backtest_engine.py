"""The backtest engine over real stored candles: every expected figure is worked out by hand in the comments."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import matplotlib.image
import numpy as np
import pytest

from marketdata.calendar import IST
from marketdata.chain import expiry_moment, risk_free_rate
from marketdata.models import Candle, Instrument, InstrumentType
from marketdata.options import black_scholes_price
from strategies import legs as leg_choice
from strategies.backtest import BacktestError, BacktestSignal, backtest_execute
from strategies.charts import equity_chart_png
from strategies.definitions import (
    ExitLevel,
    ExitUnit,
    ExpiryChoice,
    Kind,
    LegDefinition,
    LegInstrument,
    StrategyDefinition,
    StrikeChoice,
)

pytestmark = pytest.mark.django_db

SPOT = "NSE:NIFTY 50"
NIFTY_LOT = 75  # marketdata.instruments.DEMO_INDICES, used while the instrument master lists no NIFTY contract
MONDAY, HOLI_TUESDAY, WEDNESDAY, THURSDAY, FRIDAY = (date(2026, 3, day) for day in (2, 3, 4, 5, 6))
PLAIN_MONDAY = date(2026, 3, 9)  # its weekly NIFTY expiry is Tuesday 10 March, not a monthly one
CAPITAL = Decimal("100000")


def at(day: date, clock: str) -> datetime:
    hour, minute = map(int, clock.split(":"))
    return datetime.combine(day, time(hour, minute), tzinfo=IST)


def store(symbol: str, day: date, rows: list[tuple[str, float, float, float, float]]) -> None:
    """Candles given as (HH:MM, open, high, low, close)."""
    Candle.objects.bulk_create(
        Candle(
            symbol=symbol,
            interval="1m",
            start=at(day, clock),
            open=Decimal(str(opening)),
            high=Decimal(str(high)),
            low=Decimal(str(low)),
            close=Decimal(str(closing)),
            volume=1000,
        )
        for clock, opening, high, low, closing in rows
    )


def store_closes(symbol: str, day: date, closes: list[float], *, first: str = "09:15") -> None:
    """One bar a minute from `first`: each opens at the previous close, high and low 2 beyond open and close."""
    start = at(day, first)
    rows = []
    previous = closes[0]
    for index, closing in enumerate(closes):
        moment = start + timedelta(minutes=index)
        rows.append((f"{moment:%H:%M}", previous, max(previous, closing) + 2, min(previous, closing) - 2, closing))
        previous = closing
    store(symbol, day, rows)


def future_leg(side: str = "SELL", **options) -> LegDefinition:
    return LegDefinition(underlying="NIFTY", instrument=LegInstrument.FUTURE, side=side, lots=1, **options)


def time_based(*legs: LegDefinition, entry: str = "09:16", exit: str = "09:20", **options) -> StrategyDefinition:
    return StrategyDefinition(
        kind=Kind.TIME_BASED,
        legs=legs,
        entry_time=time.fromisoformat(entry),
        exit_time=time.fromisoformat(exit),
        **options,
    )


def run(definition: StrategyDefinition, start: date = MONDAY, end: date | None = None, **options):
    return backtest_execute(definition=definition, start=start, end=end or start, capital=CAPITAL, **options)


def test_three_days_worked_by_hand_skipping_a_holiday_and_an_unlisted_weekday():
    # One short NIFTY future (lot 75), in at the close of the 09:16 bar, out at the close of the 09:20 bar:
    #   Mon 2 Mar:  in 24000, out 23996 -> -(23996 - 24000) * 75 = +300
    #   Tue 3 Mar:  Holi, an NSE holiday: its candles are skipped although Tuesday is a listed weekday
    #   Wed 4 Mar:  in 24000, out 24002 -> -150
    #   Thu 5 Mar:  in 24000, out 23994 -> +450
    #   Fri 6 Mar:  Friday is not among the weekdays: skipped
    # total 600; 2 winners of 3 trades -> 66.67%.
    # Equity: 100000 at Monday's open, then 100300, 100150, 100600 at each day's close (the 09:21 bar's end):
    # the largest fall is 100300 -> 100150 = 150, i.e. 150 / 100300 = 0.1496% -> 0.15.
    # Daily returns on 100000: 0.003, -0.0015, 0.0045; mean 0.002; deviations 0.001, -0.0035, 0.0025, squares summing
    # to 19.5e-6, / (3 - 1) = 9.75e-6, std 0.0031225; Sharpe = 0.002 / 0.0031225 * sqrt(252) = 0.64051 * 15.87451
    # = 10.168 -> 10.17.
    store_closes(SPOT, MONDAY, [24010, 24000, 24005, 23990, 23998, 23996, 23900])
    store_closes(SPOT, HOLI_TUESDAY, [24000, 24000, 25000, 25000, 25000, 25000, 25000])
    store_closes(SPOT, WEDNESDAY, [23995, 24000, 24003, 24001, 24004, 24002, 24100])
    store_closes(SPOT, THURSDAY, [24008, 24000, 23990, 23992, 23997, 23994, 23950])
    store_closes(SPOT, FRIDAY, [24000, 24000, 20000, 20000, 20000, 20000, 20000])
    definition = time_based(future_leg(), weekdays=(0, 1, 2, 3))

    result = run(definition, start=MONDAY, end=FRIDAY)

    assert [(trade.entry_at, trade.exit_at) for trade in result.trades] == [
        (at(day, "09:16"), at(day, "09:20")) for day in (MONDAY, WEDNESDAY, THURSDAY)
    ]
    assert [trade.entry_price for trade in result.trades] == [Decimal("24000.00")] * 3
    assert [trade.exit_price for trade in result.trades] == [
        Decimal("23996.00"),
        Decimal("24002.00"),
        Decimal("23994.00"),
    ]
    assert [trade.pnl for trade in result.trades] == [Decimal("300.00"), Decimal("-150.00"), Decimal("450.00")]
    first = result.trades[0]
    # The March monthly expiry, the last Tuesday (31st), is Mahavir Jayanti: it moves to Monday 30th, still March.
    assert (first.leg, first.symbol, first.side, first.quantity) == (0, "NFO:NIFTY26MARFUT", "SELL", NIFTY_LOT)
    assert {(trade.exit_reason, trade.priced_by) for trade in result.trades} == {("exit_time", "candles")}
    assert result.total_pnl == Decimal("600.00")
    assert result.win_rate == Decimal("66.67")
    assert result.equity_curve == [
        (at(MONDAY, "09:15"), Decimal("100000")),
        (at(MONDAY, "09:22"), Decimal("100300.00")),
        (at(WEDNESDAY, "09:22"), Decimal("100150.00")),
        (at(THURSDAY, "09:22"), Decimal("100600.00")),
    ]
    assert result.max_drawdown == Decimal("150.00")
    assert result.max_drawdown_pct == Decimal("0.15")
    assert result.sharpe == Decimal("10.17")
    assert (result.days, result.bars) == (3, 21)


def test_a_leg_stop_loss_fills_at_its_level_or_at_a_gapping_open():
    # Short at 24000 with a 20-point stop at 24020. 09:17 reaches 24019 (no stop); 09:18 trades up to 24025.
    touched = [
        ("09:15", 24000, 24002, 23998, 24000),
        ("09:16", 24000, 24002, 23998, 24000),
        ("09:17", 24000, 24019, 23999, 24010),
        ("09:18", 24010, 24025, 24005, 24015),
        ("09:19", 24015, 24016, 23900, 23910),
        ("09:20", 23910, 23912, 23900, 23905),
    ]
    store(SPOT, MONDAY, touched)
    # On Wednesday 09:18 opens at 24030, beyond the stop: the stop fills there.
    store(SPOT, WEDNESDAY, [row if row[0] != "09:18" else ("09:18", 24030, 24035, 24025, 24030) for row in touched])
    definition = time_based(future_leg(stop_loss=ExitLevel(ExitUnit.POINTS, Decimal(20))))

    result = run(definition, start=MONDAY, end=WEDNESDAY)

    touched_stop, gapped_stop = result.trades
    assert (touched_stop.exit_at, touched_stop.exit_price, touched_stop.exit_reason) == (
        at(MONDAY, "09:18"),
        Decimal("24020.00"),
        "stop_loss",
    )
    assert touched_stop.pnl == Decimal(-20 * NIFTY_LOT)
    assert (gapped_stop.exit_price, gapped_stop.exit_reason, gapped_stop.pnl) == (
        Decimal("24030.00"),
        "stop_loss",
        Decimal(-30 * NIFTY_LOT),
    )


def test_a_percent_target_and_a_bar_reaching_both_levels_fills_the_stop():
    # Long at 24000; target 0.05% of it = 12 points -> 24012, reached by 09:18's high of 24015.
    store(
        SPOT,
        MONDAY,
        [
            ("09:15", 24000, 24001, 23999, 24000),
            ("09:16", 24000, 24001, 23999, 24000),
            ("09:17", 24000, 24011, 23995, 24005),
            ("09:18", 24005, 24015, 24004, 24014),
            ("09:20", 24014, 24016, 24013, 24015),
        ],
    )
    # Wednesday's 09:17 bar spans both the 24012 target and a 10-point stop at 23990: the stop is assumed first.
    store(
        SPOT,
        WEDNESDAY,
        [
            ("09:16", 24000, 24001, 23999, 24000),
            ("09:17", 24000, 24013, 23989, 24001),
            ("09:20", 24001, 24002, 24000, 24001),
        ],
    )
    target = ExitLevel(ExitUnit.PERCENT, Decimal("0.05"))
    monday = run(time_based(future_leg("BUY", target=target))).trades
    wednesday = run(
        time_based(future_leg("BUY", target=target, stop_loss=ExitLevel(ExitUnit.POINTS, Decimal(10))), entry="09:16"),
        start=WEDNESDAY,
    ).trades

    assert [(trade.exit_at, trade.exit_price, trade.exit_reason, trade.pnl) for trade in monday] == [
        (at(MONDAY, "09:18"), Decimal("24012.00"), "target", Decimal(12 * NIFTY_LOT))
    ]
    assert [(trade.exit_price, trade.exit_reason) for trade in wednesday] == [(Decimal("23990.00"), "stop_loss")]


def test_the_trailing_stop_follows_the_best_price_of_earlier_bars():
    # Long at 24000 trailing 10 points. 09:17: low 23995 stays above 24000 - 10; its high 24030 lifts the stop to
    # 24020 from the next bar on. 09:18 falls to 24015 and is stopped at 24020: +20 * 75 = 1500.
    store(
        SPOT,
        MONDAY,
        [
            ("09:16", 24000, 24001, 23999, 24000),
            ("09:17", 24000, 24030, 23995, 24028),
            ("09:18", 24028, 24029, 24015, 24016),
            ("09:20", 24016, 24017, 24010, 24011),
        ],
    )

    result = run(time_based(future_leg("BUY"), trailing_stop=Decimal(10)))

    assert [(trade.exit_at, trade.exit_price, trade.exit_reason, trade.pnl) for trade in result.trades] == [
        (at(MONDAY, "09:18"), Decimal("24020.00"), "trailing_stop", Decimal("1500.00"))
    ]


@pytest.mark.parametrize(
    ("limits", "closes", "exit_price", "reason"),
    [
        # Short at 24000 (lot 75), MTM stop 1000. 09:17 closes at 24012 (-900) though its high, 24014 (store_closes
        # puts it 2 above), would be -1050: MTM is read at closes. 09:18 closes at 24014: -1050 -> out there.
        ({"mtm_stop_loss": Decimal(1000)}, [24000, 24000, 24012, 24014, 24020, 24030], "24014.00", "mtm_stop_loss"),
        # MTM target 600: 09:17 closes at 23995 (+375, its low 23993 +525); the 09:18 close of 23992 is +600.
        ({"mtm_target": Decimal(600)}, [24000, 24000, 23995, 23992, 23980, 23970], "23992.00", "mtm_target"),
    ],
)
def test_the_strategy_mtm_limits_close_everything_at_the_breaching_close(limits, closes, exit_price, reason):
    store_closes(SPOT, MONDAY, closes)

    result = run(time_based(future_leg(), **limits))

    assert [(trade.exit_at, trade.exit_price, trade.exit_reason) for trade in result.trades] == [
        (at(MONDAY, "09:18"), Decimal(exit_price), reason)
    ]


def test_a_stopped_leg_re_enters_at_the_next_open_only_as_often_as_allowed():
    # The market rises 12 points a bar from 24000 at 09:16 (highs 2 above the close); a short with a 10-point stop
    # is stopped in every bar:
    #   in 24000 (09:16 close), stop 24010 in 09:17; again at 09:18's open 24012, stop 24022 in 09:18;
    #   again at 09:19's open 24024, stop 24034 in 09:19; no re-entry left, though the climb goes on.
    store_closes(SPOT, MONDAY, [24000 + 12 * step for step in range(-1, 10)])
    definition = time_based(future_leg(stop_loss=ExitLevel(ExitUnit.POINTS, Decimal(10))), exit="09:25", reentries=2)

    result = run(definition)

    assert [(trade.entry_at, trade.entry_price, trade.exit_at, trade.exit_price) for trade in result.trades] == [
        (at(MONDAY, "09:16"), Decimal("24000.00"), at(MONDAY, "09:17"), Decimal("24010.00")),
        (at(MONDAY, "09:18"), Decimal("24012.00"), at(MONDAY, "09:18"), Decimal("24022.00")),
        (at(MONDAY, "09:19"), Decimal("24024.00"), at(MONDAY, "09:19"), Decimal("24034.00")),
    ]
    assert {trade.exit_reason for trade in result.trades} == {"stop_loss"}
    assert result.total_pnl == Decimal(-3 * 10 * NIFTY_LOT)


def test_without_a_bar_at_the_exit_time_the_day_ends_at_its_last_bar():
    store_closes(SPOT, MONDAY, [24000, 24000, 24010, 24020])

    result = run(time_based(future_leg("BUY"), exit="15:15"))

    assert [(trade.exit_at, trade.exit_price, trade.exit_reason) for trade in result.trades] == [
        (at(MONDAY, "09:18"), Decimal("24020.00"), "end")
    ]


def test_the_lot_size_comes_from_the_instrument_master_when_it_lists_the_underlying():
    Instrument.objects.create(
        symbol="NFO:NIFTY26MARFUT",
        exchange="NFO",
        segment="NFO-FUT",
        tradingsymbol="NIFTY26MARFUT",
        underlying="NIFTY",
        instrument_type=InstrumentType.FUT,
        expiry=date(2026, 3, 30),
        lot_size=65,
    )
    store_closes(SPOT, MONDAY, [24000, 24000, 24010, 24020, 24000, 24004])

    result = run(time_based(replace(future_leg("BUY"), lots=2)))

    assert result.trades[0].quantity == 130
    assert result.trades[0].pnl == Decimal(4 * 130)


def option_leg(**options) -> LegDefinition:
    return LegDefinition(
        underlying="NIFTY", instrument=LegInstrument.OPTION, side="SELL", lots=1, option_type="CE", **options
    )


def black_scholes_at(*, spot: float, strike: float, moment: datetime, expiry: date) -> float:
    years = (expiry_moment(expiry=expiry) - moment).total_seconds() / (365 * 86400)
    return float(
        black_scholes_price(spot=spot, strike=strike, years=years, volatility=0.15, rate=risk_free_rate(), is_call=True)
    )


def test_options_without_their_own_candles_are_priced_by_black_scholes_on_the_underlying():
    # Spot 24010 at the 09:16 close -> ATM strike 24000 (step 50); the weekly expiry is Tuesday 10 March.
    store_closes(SPOT, PLAIN_MONDAY, [24000, 24010, 24030, 24040, 24020, 24050])

    result = run(time_based(option_leg()), start=PLAIN_MONDAY)

    (trade,) = result.trades
    assert trade.symbol == "NFO:NIFTY2631024000CE" and trade.priced_by == "black_scholes"
    # A close is priced at its bar's end: 09:17 for the 09:16 bar, 09:21 for the 09:20 bar.
    expiry = date(2026, 3, 10)
    entry = black_scholes_at(spot=24010, strike=24000, moment=at(PLAIN_MONDAY, "09:17"), expiry=expiry)
    exit = black_scholes_at(spot=24050, strike=24000, moment=at(PLAIN_MONDAY, "09:21"), expiry=expiry)
    assert trade.entry_price == Decimal(str(round(entry, 2)))
    assert trade.exit_price == Decimal(str(round(exit, 2)))
    assert trade.pnl == (trade.entry_price - trade.exit_price) * NIFTY_LOT
    assert trade.exit_price > trade.entry_price  # a short call loses as the spot rises


def test_an_option_with_stored_candles_that_day_is_priced_from_them_stop_loss_included():
    store_closes(SPOT, PLAIN_MONDAY, [24000, 24010, 24030, 24040, 24020, 24050])
    # Short the call at 100; a 25% stop sits at 125, which the contract's own 09:18 high of 126 reaches.
    store(
        "NFO:NIFTY2631024000CE",
        PLAIN_MONDAY,
        [
            ("09:15", 98, 101, 97, 99),
            ("09:16", 99, 101, 98, 100),
            ("09:17", 100, 118, 100, 115),
            ("09:18", 115, 126, 112, 120),
            ("09:20", 120, 121, 110, 111),
        ],
    )
    definition = time_based(option_leg(stop_loss=ExitLevel(ExitUnit.PERCENT, Decimal(25))))

    (trade,) = run(definition, start=PLAIN_MONDAY).trades

    assert trade.priced_by == "candles"
    assert (trade.entry_price, trade.exit_at, trade.exit_price, trade.exit_reason) == (
        Decimal("100.00"),
        at(PLAIN_MONDAY, "09:18"),
        Decimal("125.00"),
        "stop_loss",
    )
    assert trade.pnl == Decimal(-25 * NIFTY_LOT)


def test_the_portable_contract_query_returns_what_the_postgresql_one_does():
    # Embedded mode runs on SQLite, which has no unnest: both ways of fetching contracts' days must agree.
    from marketdata.selectors import _candle_days_portable, _candle_days_postgresql

    store_closes("NFO:NIFTY2631024000CE", PLAIN_MONDAY, [100, 101, 102])
    store_closes("NFO:NIFTY2631024000CE", PLAIN_MONDAY + timedelta(days=1), [90, 91])
    store_closes("NFO:NIFTY2631024000PE", PLAIN_MONDAY, [80, 79])
    pairs = [
        ("NFO:NIFTY2631024000CE", PLAIN_MONDAY),
        ("NFO:NIFTY2631024000PE", PLAIN_MONDAY),
        ("NFO:NIFTY2631024050CE", PLAIN_MONDAY),
    ]

    rows = list(_candle_days_postgresql(pairs))

    assert rows == [tuple(row) for row in _candle_days_portable(pairs)]
    assert [(symbol, start, closing) for symbol, start, _, _, _, closing, _ in rows] == [
        ("NFO:NIFTY2631024000CE", at(PLAIN_MONDAY, "09:15").timestamp(), 100.0),
        ("NFO:NIFTY2631024000CE", at(PLAIN_MONDAY, "09:16").timestamp(), 101.0),
        ("NFO:NIFTY2631024000CE", at(PLAIN_MONDAY, "09:17").timestamp(), 102.0),
        ("NFO:NIFTY2631024000PE", at(PLAIN_MONDAY, "09:15").timestamp(), 80.0),
        ("NFO:NIFTY2631024000PE", at(PLAIN_MONDAY, "09:16").timestamp(), 79.0),
    ]


def test_closest_premium_picks_the_strike_whose_modelled_premium_is_nearest():
    store_closes(SPOT, PLAIN_MONDAY, [24000, 24010, 24030, 24040, 24020, 24050])
    moment = at(PLAIN_MONDAY, "09:17")
    strikes = leg_choice.strike_grid(underlying="NIFTY", spot=Decimal("24010.00"))
    premiums = {
        strike: black_scholes_at(spot=24010, strike=float(strike), moment=moment, expiry=date(2026, 3, 10))
        for strike in strikes
    }
    nearest = min(premiums, key=lambda strike: (abs(round(premiums[strike], 2) - 40), strike))
    assert nearest > Decimal(24000)  # a call priced near 40 is out of the money

    leg = option_leg(strike=StrikeChoice.CLOSEST_PREMIUM, premium=Decimal(40), expiry=ExpiryChoice.CURRENT_WEEK)
    (trade,) = run(time_based(leg), start=PLAIN_MONDAY).trades

    assert trade.symbol == f"NFO:NIFTY26310{nearest.normalize():f}CE"
    assert trade.entry_price == Decimal(str(round(premiums[nearest], 2)))


def test_closest_premium_reads_a_strike_s_own_candle_at_the_entry_before_the_model():
    # Black-Scholes puts the 24500 call near 3 at 09:17; its stored candles say 40 at the 09:16 close (and 90 later
    # and on another day, which must not count), so it is the strike closest to a premium of 40, priced by candles.
    store_closes(SPOT, PLAIN_MONDAY, [24000, 24010, 24030, 24040, 24020, 24050])
    far_call = "NFO:NIFTY2631024500CE"
    store(far_call, PLAIN_MONDAY, [("09:15", 38, 41, 37, 39), ("09:16", 39, 41, 38, 40), ("09:17", 90, 92, 88, 90)])
    store(far_call, PLAIN_MONDAY - timedelta(days=3), [("09:16", 40, 41, 39, 40.05)])
    modelled = black_scholes_at(spot=24010, strike=24500, moment=at(PLAIN_MONDAY, "09:17"), expiry=date(2026, 3, 10))
    assert modelled < 10

    leg = option_leg(strike=StrikeChoice.CLOSEST_PREMIUM, premium=Decimal(40))
    (trade,) = run(time_based(leg), start=PLAIN_MONDAY).trades

    assert (trade.symbol, trade.entry_price, trade.priced_by) == (far_call, Decimal("40.00"), "candles")


def test_webhook_signals_replay_at_the_next_open_netting_per_symbol_until_the_exit_time():
    store_closes("NSE:RELIANCE", MONDAY, [1300, 1301, 1302, 1303, 1304, 1305, 1306, 1307])
    signals = [
        # BUY 10 at 09:16:30 -> the 09:17 bar's open, 1301 (the 09:16 close)
        BacktestSignal(
            at=at(MONDAY, "09:16") + timedelta(seconds=30), action="BUY", symbol="NSE:RELIANCE", quantity=10
        ),
        # SELL 4 of them at 09:19's open, 1303: (1303 - 1301) * 4 = 8
        BacktestSignal(at=at(MONDAY, "09:18") + timedelta(seconds=5), action="SELL", symbol="NSE:RELIANCE", quantity=4),
        # COVER with nothing short: nothing happens
        BacktestSignal(at=at(MONDAY, "09:19"), action="COVER", symbol="NSE:RELIANCE", quantity=0),
        # after the exit time: ignored
        BacktestSignal(at=at(MONDAY, "09:21"), action="SHORT", symbol="NSE:RELIANCE", quantity=50),
    ]
    # The 6 left are closed at the 09:20 bar's close, 1305: (1305 - 1301) * 6 = 24.
    definition = StrategyDefinition(kind=Kind.WEBHOOK, legs=(), exit_time=time(9, 20))

    result = run(definition, signals=signals)

    assert [
        (trade.side, trade.quantity, trade.entry_at, trade.entry_price, trade.exit_price, trade.exit_reason, trade.pnl)
        for trade in result.trades
    ] == [
        ("BUY", 4, at(MONDAY, "09:17"), Decimal("1301.00"), Decimal("1303.00"), "signal", Decimal("8.00")),
        ("BUY", 6, at(MONDAY, "09:17"), Decimal("1301.00"), Decimal("1305.00"), "exit_time", Decimal("24.00")),
    ]
    assert result.total_pnl == Decimal("32.00") and result.days == 1 and result.bars == 8


def test_a_webhook_strategy_s_mtm_stop_closes_everything_and_later_signals_are_ignored():
    # Long 100 RELIANCE at the 09:17 open (1301); closes 1300 (-100), 1299 (-200), then 1298.50 at 09:19: -250,
    # the MTM stop. The BUY at 09:19:30 comes after it and is not replayed.
    store_closes("NSE:RELIANCE", MONDAY, [1300, 1301, 1300, 1299, 1298.5, 1310, 1320])
    signals = [
        BacktestSignal(
            at=at(MONDAY, "09:16") + timedelta(seconds=30), action="BUY", symbol="NSE:RELIANCE", quantity=100
        ),
        BacktestSignal(
            at=at(MONDAY, "09:19") + timedelta(seconds=30), action="BUY", symbol="NSE:RELIANCE", quantity=50
        ),
    ]
    definition = StrategyDefinition(kind=Kind.WEBHOOK, legs=(), exit_time=time(15, 15), mtm_stop_loss=Decimal(250))

    result = run(definition, signals=signals)

    assert [
        (trade.quantity, trade.exit_at, trade.exit_price, trade.exit_reason, trade.pnl) for trade in result.trades
    ] == [(100, at(MONDAY, "09:19"), Decimal("1298.50"), "mtm_stop_loss", Decimal("-250.00"))]


def test_a_rule_strategy_enters_after_its_rule_bar_closes_and_exits_on_its_exit_rule():
    # Rules on the 1-minute spot: in when close > 24005 (and volume, 1000 a bar here, is read), out when close < 23995.
    #   09:16 closes 24010: the rule bar ends 09:17 -> long at the 09:17 open (24010)
    #   09:18 closes 23990: out at the 09:19 open (23990): (23990 - 24010) * 75 = -1500
    #   09:19 closes 24010 (flat again) -> long at the 09:20 open (24010); the 09:21 exit time closes it at 24020.
    store_closes(SPOT, MONDAY, [24000, 24010, 24000, 23990, 24010, 24015, 24020, 24030])
    definition = StrategyDefinition(
        kind=Kind.RULE,
        legs=(future_leg("BUY"),),
        exit_time=time(9, 21),
        rule_symbol=SPOT,
        entry_rule="close > 24005 and volume >= 1000",
        exit_rule="close < 23995",
    )

    result = run(definition)

    assert [
        (trade.entry_at, trade.entry_price, trade.exit_at, trade.exit_price, trade.exit_reason)
        for trade in result.trades
    ] == [
        (at(MONDAY, "09:17"), Decimal("24010.00"), at(MONDAY, "09:19"), Decimal("23990.00"), "rule"),
        (at(MONDAY, "09:20"), Decimal("24010.00"), at(MONDAY, "09:21"), Decimal("24020.00"), "exit_time"),
    ]
    assert result.total_pnl == Decimal(-1500 + 750)


def test_a_rule_on_five_minute_bars_waits_for_the_bar_to_close():
    # The 09:15-09:19 bar closes at 24010 (its last minute's close) > 24005; it ends at 09:20, so the long enters at
    # the 09:20 open (24010), although the 09:17 minute already closed above 24005.
    store_closes(SPOT, MONDAY, [24000, 24001, 24008, 24002, 24010, 24012, 24014])
    definition = StrategyDefinition(
        kind=Kind.RULE,
        legs=(future_leg("BUY"),),
        exit_time=time(15, 15),
        rule_symbol=SPOT,
        entry_rule="close > 24005",
        timeframe_minutes=5,
    )

    (trade,) = run(definition).trades

    assert (trade.entry_at, trade.entry_price, trade.exit_at, trade.exit_reason) == (
        at(MONDAY, "09:20"),
        Decimal("24010.00"),
        at(MONDAY, "09:21"),
        "end",
    )


def test_no_candles_is_an_error_the_user_can_read():
    with pytest.raises(BacktestError, match=r"no candles for NSE:NIFTY 50 between 2026-03-02 and 2026-03-06"):
        run(time_based(future_leg()), start=MONDAY, end=FRIDAY)


def test_candles_only_on_days_the_strategy_does_not_trade_is_an_error():
    store_closes(SPOT, FRIDAY, [24000, 24000, 24010, 24020, 24000, 24004])
    with pytest.raises(BacktestError, match="none on a trading day the strategy trades"):
        run(time_based(future_leg(), weekdays=(0,)), start=MONDAY, end=FRIDAY)


def test_progress_is_reported_once_a_day_and_the_result_stores_as_json():
    for day in (MONDAY, WEDNESDAY):
        store_closes(SPOT, day, [24000, 24000, 24010, 24020, 24000, 24004])
    calls = []

    result = run(time_based(future_leg()), start=MONDAY, end=WEDNESDAY, progress=lambda *done: calls.append(done))

    assert calls == [(1, 2), (2, 2)]
    stored = json.loads(json.dumps(result.as_json()))
    assert stored["total_pnl"] == "-600.00" and stored["days"] == 2 and stored["sharpe"] is None
    assert stored["trades"][0] == {
        "leg": 0,
        "symbol": "NFO:NIFTY26MARFUT",
        "side": "SELL",
        "quantity": NIFTY_LOT,
        "entry_at": "2026-03-02T09:16:00+05:30",
        "entry_price": "24000.00",
        "exit_at": "2026-03-02T09:20:00+05:30",
        "exit_price": "24004.00",
        "exit_reason": "exit_time",
        "pnl": "-300.00",
        "priced_by": "candles",
    }
    assert stored["equity_curve"][-1] == ["2026-03-04T09:21:00+05:30", "99400.00"]


def test_the_equity_chart_is_a_png_that_decodes():
    store_closes(SPOT, MONDAY, [24000, 24000, 24005, 23990, 23998, 23996])
    store_closes(SPOT, WEDNESDAY, [24000, 24000, 24005, 24010, 24012, 24006])
    result = run(time_based(future_leg()), start=MONDAY, end=WEDNESDAY)

    png = equity_chart_png(result, title="Short NIFTY future: 2 to 4 March 2026")

    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape[0] == 500 and image.shape[1] == 1000  # 10 x 5 inches at 100 dpi
    assert np.ptp(image[..., :3]) > 0  # something was drawn
