"""A backtest run: the definition checked, then the days of its kind worked through into a result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal

from .. import legs as leg_choice
from ..candles import _moment
from ..definitions import Kind, LegInstrument, StrategyDefinition
from .engine import _Backtest
from .pricing import _clock_of
from .results import BacktestError, BacktestResult, BacktestSignal, _result, _Run
from .webhook import _webhook


def _definition_check(
    definition: StrategyDefinition, *, start: date, end: date, capital: Decimal, volatility: float
) -> None:
    if start > end:
        raise BacktestError("the start date is after the end date")
    if capital <= 0:
        raise BacktestError("the capital must be above 0")
    if definition.kind != Kind.WEBHOOK and not definition.legs:
        raise BacktestError("the strategy has no legs")
    if definition.kind == Kind.TIME_BASED:
        if definition.entry_time is None:
            raise BacktestError("a time-based strategy needs an entry time")
        if definition.exit_time <= definition.entry_time:
            raise BacktestError("the exit time must be after the entry time")
    if definition.kind == Kind.RULE:
        if not definition.rule_symbol:
            raise BacktestError("a rule strategy needs the symbol its rules read")
        if not definition.entry_rule.strip():
            raise BacktestError("a rule strategy needs an entry rule")
        if definition.timeframe_minutes < 1:
            raise BacktestError("the rule timeframe must be at least 1 minute")
    for number, leg in enumerate(definition.legs, start=1):
        if leg.lots < 1:
            raise BacktestError(f"leg {number} needs at least one lot")
        if leg.side not in ("BUY", "SELL"):
            raise BacktestError(f"leg {number}'s side must be BUY or SELL")
        if leg.instrument == LegInstrument.OPTION and leg.option_type not in ("CE", "PE"):
            raise BacktestError(f"leg {number}'s option type must be CE or PE")
    if any(leg.instrument == LegInstrument.OPTION for leg in definition.legs) and not volatility > 0:
        raise BacktestError("the volatility must be above 0")


def backtest_execute(
    *,
    definition: StrategyDefinition,
    start: date,
    end: date,
    capital: Decimal,
    volatility: float = 0.15,
    signals: Sequence[BacktestSignal] = (),
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """The strategy run over the stored 1-minute candles of the IST days start..end (see the module docstring for
    how it trades). `progress(done_days, total_days)` is called after every day. BacktestError says what is missing
    or wrong, in words for the user."""
    capital = Decimal(capital)
    _definition_check(definition, start=start, end=end, capital=capital, volatility=volatility)
    engine = _Backtest(
        definition=definition, start=start, end=end, volatility=float(volatility), signals=signals, progress=progress
    )
    if definition.kind == Kind.WEBHOOK:
        return _result(_webhook(engine), capital=capital)

    clock_symbol = leg_choice.spot_symbol(definition.legs[0].underlying)
    minutes = engine.minutes(clock_symbol)
    if not minutes.day_slices:
        raise engine.no_candles(clock_symbol)
    days = engine.selected_days([minutes])
    if not days:
        raise BacktestError(
            f"{clock_symbol} has candles between {start} and {end}, but none on a trading day the strategy trades"
        )
    clocks = [_clock_of(minutes, day) for day in days]
    trades_by_day = engine.rule_based(clocks) if definition.kind == Kind.RULE else engine.time_based(clocks)
    run = _Run(
        first_open=_moment(clocks[0].starts[0]),
        trades_by_day=trades_by_day,
        closes=[clock.close_moment for clock in clocks],
        bars=sum(len(clock.starts) for clock in clocks),
    )
    return _result(run, capital=capital)
