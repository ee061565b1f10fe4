"""Webhook strategies: the recorded signals replayed day by day, positions netted per symbol."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from marketdata.calendar import IST

from .. import legs as leg_choice
from ..candles import _BAR_SECONDS, _IST_OFFSET_SECONDS, _SECONDS_PER_DAY, _ist_midnight, _Minutes, _moment
from ..definitions import WEBHOOK_ACTIONS, StrategyDefinition
from .engine import _Backtest
from .exits import _mtm_limits_hit
from .pricing import _paise
from .results import _PAISE, BacktestError, BacktestSignal, BacktestTrade, ExitReason, PricedBy, _Run


@dataclass
class _Holding:
    quantity: int = 0  # signed: long above 0
    average_price: Decimal = Decimal(0)
    opened_at: datetime | None = None


@dataclass(frozen=True)
class _Fill:
    grid_bar: int
    symbol: str
    quantity: int  # signed
    price: Decimal
    at: datetime
    reason: str


class _WebhookDay:
    """One day's replay: the day's signals become fills at their symbols' next opens, positions net per symbol, and
    everything left is closed at the MTM breach, exit_time or the day's end. Bars are counted on the union of the
    day's bars of every symbol involved."""

    def __init__(self, *, day: date, series: dict[str, _Minutes], definition: StrategyDefinition) -> None:
        self.day = day
        self.definition = definition
        self.bars = {symbol: bars for symbol, minutes in series.items() if (bars := minutes.day(day)) is not None}
        self.grid = np.unique(np.concatenate([bars.starts for bars in self.bars.values()]))
        seconds_of_day = (self.grid + _IST_OFFSET_SECONDS) % _SECONDS_PER_DAY
        exit_time = definition.exit_time
        exit_seconds = exit_time.hour * 3600 + exit_time.minute * 60 + exit_time.second
        exit_bar = int(np.searchsorted(seconds_of_day, exit_seconds, side="left"))
        self.exit_moment = _ist_midnight(day) + timedelta(seconds=exit_seconds)
        if exit_bar < len(self.grid):
            self.last_bar, self.last_reason = exit_bar, ExitReason.EXIT_TIME
        else:
            self.last_bar, self.last_reason = len(self.grid) - 1, ExitReason.END
        self.closes = {symbol: self._closes_on_grid(bars) for symbol, bars in self.bars.items()}

    def _closes_on_grid(self, bars: _Minutes) -> np.ndarray:
        position = np.searchsorted(bars.starts, self.grid, side="right") - 1
        return np.where(position >= 0, bars.close[np.maximum(position, 0)], np.nan)

    @property
    def close_moment(self) -> datetime:
        return _moment(self.grid[-1] + _BAR_SECONDS)

    def replay(self, signals: Sequence[BacktestSignal], legs: dict[str, int]) -> list[BacktestTrade]:
        trades, holdings, fills = self._book(signals, legs, until_bar=self.last_bar)
        breach = self._mtm_breach(fills)
        if breach is not None:
            bar, reason = breach
            trades, holdings, _ = self._book(signals, legs, until_bar=bar)
            return trades + self._close_all(holdings, legs, bar=bar, reason=reason)
        return trades + self._close_all(holdings, legs, bar=self.last_bar, reason=self.last_reason)

    def _next_open(self, symbol: str, at: datetime) -> tuple[int, Decimal, datetime] | None:
        bars = self.bars.get(symbol)
        if bars is None:
            return None
        index = int(np.searchsorted(bars.starts, math.ceil(at.timestamp()), side="left"))
        if index >= len(bars.starts):
            return None
        start = int(bars.starts[index])
        return int(np.searchsorted(self.grid, start)), _paise(float(bars.open[index])), _moment(start)

    def _book(
        self, signals: Sequence[BacktestSignal], legs: dict[str, int], *, until_bar: int
    ) -> tuple[list[BacktestTrade], dict[str, _Holding], list[_Fill]]:
        holdings: dict[str, _Holding] = {}
        trades: list[BacktestTrade] = []
        fills: list[_Fill] = []
        for signal in signals:
            if signal.at >= self.exit_moment:
                continue
            action = signal.action.upper()
            if action == "EXIT":
                symbols = [signal.symbol] if signal.symbol else sorted(holdings)
            else:
                symbols = [signal.symbol]
            for symbol in symbols:
                fill_at = self._next_open(symbol, signal.at)
                if fill_at is None or fill_at[0] > until_bar:
                    continue
                held = holdings.get(symbol, _Holding()).quantity
                quantity = _signal_quantity(action, wanted=signal.quantity, held=held)
                if quantity == 0:
                    continue
                fill = _Fill(fill_at[0], symbol, quantity, fill_at[1], fill_at[2], ExitReason.SIGNAL)
                fills.append(fill)
                trades += _apply_fill(holdings, fill, legs)
        return trades, holdings, fills

    def _close_all(
        self, holdings: dict[str, _Holding], legs: dict[str, int], *, bar: int, reason: str
    ) -> list[BacktestTrade]:
        trades = []
        for symbol, holding in sorted(holdings.items()):
            if holding.quantity == 0:
                continue
            price = _paise(float(self.closes[symbol][bar]))
            fill = _Fill(bar, symbol, -holding.quantity, price, _moment(self.grid[bar]), reason)
            trades += _apply_fill(holdings, fill, legs)
        return trades

    def _mtm_breach(self, fills: list[_Fill]) -> tuple[int, str] | None:
        definition = self.definition
        if not fills or (definition.mtm_stop_loss is None and definition.mtm_target is None):
            return None
        # Marked to market, a symbol's PnL is its cash flow so far plus what it holds at the close.
        mtm = np.zeros(len(self.grid))
        for symbol in {fill.symbol for fill in fills}:
            held = np.zeros(len(self.grid))
            cash = np.zeros(len(self.grid))
            for fill in fills:
                if fill.symbol == symbol:
                    held[fill.grid_bar :] += fill.quantity
                    cash[fill.grid_bar :] -= fill.quantity * float(fill.price)
            mtm += cash + held * np.nan_to_num(self.closes[symbol])
        first = min(fill.grid_bar for fill in fills)
        hit = _mtm_limits_hit(
            mtm[first : self.last_bar + 1], stop_loss=definition.mtm_stop_loss, target=definition.mtm_target
        )
        return None if hit is None else (first + hit[0], hit[1])


def _signal_quantity(action: str, *, wanted: int, held: int) -> int:
    """The signed quantity a signal trades: BUY and SHORT open or add; SELL and COVER (and EXIT) close the long or
    short held, never more than that and never flipping it; 0 means all of it."""
    if action == "BUY":
        return max(wanted, 0)
    if action == "SHORT":
        return -max(wanted, 0)
    if action == "EXIT":
        return -held
    if action == "SELL":
        return -min(held, wanted) if wanted > 0 and held > 0 else -max(held, 0)
    if action == "COVER":
        return min(-held, wanted) if wanted > 0 and held < 0 else max(-held, 0)
    return 0


def _apply_fill(holdings: dict[str, _Holding], fill: _Fill, legs: dict[str, int]) -> list[BacktestTrade]:
    """Nets `fill` into the symbol's holding; the part that reduces it is a closed trade."""
    holding = holdings.setdefault(fill.symbol, _Holding())
    trades = []
    if holding.quantity and (holding.quantity > 0) != (fill.quantity > 0):
        closing = min(abs(fill.quantity), abs(holding.quantity))
        sign = 1 if holding.quantity > 0 else -1
        assert holding.opened_at is not None
        entry_price = holding.average_price.quantize(_PAISE, rounding=ROUND_HALF_UP)
        trades.append(
            BacktestTrade(
                leg=legs[fill.symbol],
                symbol=fill.symbol,
                side="BUY" if sign > 0 else "SELL",
                quantity=closing,
                entry_at=holding.opened_at,
                entry_price=entry_price,
                exit_at=fill.at,
                exit_price=fill.price,
                exit_reason=fill.reason,
                pnl=((fill.price - holding.average_price) * sign * closing).quantize(_PAISE, rounding=ROUND_HALF_UP),
                priced_by=PricedBy.CANDLES,
            )
        )
        holding.quantity -= sign * closing
        remainder = fill.quantity + sign * closing
        if holding.quantity == 0:
            holding.opened_at = None
        if remainder:
            holding.quantity, holding.average_price, holding.opened_at = remainder, fill.price, fill.at
        return trades
    held, adding = abs(holding.quantity), abs(fill.quantity)
    holding.average_price = (holding.average_price * held + fill.price * adding) / (held + adding)
    holding.quantity += fill.quantity
    holding.opened_at = holding.opened_at or fill.at
    return trades


def _aware(signal: BacktestSignal) -> BacktestSignal:
    if signal.at.tzinfo is None or signal.at.utcoffset() is None:
        return BacktestSignal(
            at=signal.at.replace(tzinfo=IST), action=signal.action, symbol=signal.symbol, quantity=signal.quantity
        )
    return signal


def _webhook(engine: _Backtest) -> _Run:
    definition = engine.definition
    signals = sorted(
        (
            _aware(signal)
            for signal in engine.signals
            if signal.action.upper() in WEBHOOK_ACTIONS and (signal.symbol or signal.action.upper() == "EXIT")
        ),
        key=lambda signal: signal.at,
    )
    legs: dict[str, int] = {}
    for signal in signals:
        if signal.symbol and signal.symbol not in legs:
            legs[signal.symbol] = len(legs)
    # The days are those on which any symbol involved (or the legs' underlying) has candles.
    symbols = list(legs)
    if definition.legs:
        symbols.insert(0, leg_choice.spot_symbol(definition.legs[0].underlying))
    if not symbols:
        raise BacktestError("there are no recorded signals to replay")
    series = {}
    for symbol in dict.fromkeys(symbols):
        series[symbol] = engine.minutes(symbol)
        if not series[symbol].day_slices:
            raise engine.no_candles(symbol)
    days = engine.selected_days(series.values())
    if not days:
        raise BacktestError(f"no candles on a trading day the strategy trades between {engine.start} and {engine.end}")
    by_day: dict[date, list[BacktestSignal]] = {}
    for signal in signals:
        by_day.setdefault(signal.at.astimezone(IST).date(), []).append(signal)
    run = _Run(first_open=_moment(0))
    for index, day in enumerate(days):
        replay = _WebhookDay(day=day, series=series, definition=definition)
        if index == 0:
            run.first_open = _moment(replay.grid[0])
        trades = replay.replay(by_day.get(day, []), legs)
        run.trades_by_day.append(sorted(trades, key=lambda trade: (trade.exit_at, trade.leg, trade.entry_at)))
        run.closes.append(replay.close_moment)
        run.bars += len(replay.grid)
        engine.report(index + 1, len(days))
    return run
