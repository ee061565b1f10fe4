"""What a backtest is given and gives back: signals, trades, the result and its statistics, and the error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

import numpy as np

TRADING_DAYS_PER_YEAR = 252

_PAISE = Decimal("0.01")


class ExitReason(StrEnum):
    EXIT_TIME = "exit_time"
    STOP_LOSS = "stop_loss"
    TARGET = "target"
    MTM_STOP_LOSS = "mtm_stop_loss"
    MTM_TARGET = "mtm_target"
    TRAILING_STOP = "trailing_stop"
    RULE = "rule"
    SIGNAL = "signal"
    END = "end"


class PricedBy(StrEnum):
    CANDLES = "candles"
    BLACK_SCHOLES = "black_scholes"


class BacktestError(Exception):
    """The backtest cannot run on what is stored or asked; the message is meant for the user."""


@dataclass(frozen=True)
class BacktestSignal:
    """A recorded webhook signal, replayed by webhook strategies. `at` is aware (a naive one is read as IST)."""

    at: datetime
    action: str  # BUY | SELL | SHORT | COVER | EXIT
    symbol: str  # EXCHANGE:TRADINGSYMBOL; "" with EXIT closes everything
    quantity: int  # 0 with SELL/COVER closes all of it


@dataclass(frozen=True)
class BacktestTrade:
    leg: int  # index into definition.legs; webhook trades: the symbol's order of first appearance in the signals
    symbol: str
    side: str  # BUY (long) | SELL (short): the entry's side
    quantity: int
    entry_at: datetime
    entry_price: Decimal
    exit_at: datetime
    exit_price: Decimal
    exit_reason: str
    pnl: Decimal
    priced_by: str

    def as_json(self) -> dict[str, Any]:
        return {
            "leg": self.leg,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": self.quantity,
            "entry_at": self.entry_at.isoformat(),
            "entry_price": str(self.entry_price),
            "exit_at": self.exit_at.isoformat(),
            "exit_price": str(self.exit_price),
            "exit_reason": str(self.exit_reason),
            "pnl": str(self.pnl),
            "priced_by": str(self.priced_by),
        }


@dataclass(frozen=True)
class BacktestResult:
    trades: list[BacktestTrade]
    # The capital at the first session's open, then capital + cumulative PnL at every day's last bar's end.
    equity_curve: list[tuple[datetime, Decimal]]
    total_pnl: Decimal
    win_rate: Decimal  # percent of trades with PnL above 0
    max_drawdown: Decimal  # rupees, peak to trough of the equity curve
    max_drawdown_pct: Decimal  # the largest fall as a percent of the peak it fell from
    sharpe: Decimal | None  # daily PnL / capital, annualised over 252 days; None under 2 days or without variation
    days: int
    bars: int

    def as_json(self) -> dict[str, Any]:
        return {
            "trades": [trade.as_json() for trade in self.trades],
            "equity_curve": [[moment.isoformat(), str(value)] for moment, value in self.equity_curve],
            "total_pnl": str(self.total_pnl),
            "win_rate": str(self.win_rate),
            "max_drawdown": str(self.max_drawdown),
            "max_drawdown_pct": str(self.max_drawdown_pct),
            "sharpe": None if self.sharpe is None else str(self.sharpe),
            "days": self.days,
            "bars": self.bars,
        }


# --- the result -----------------------------------------------------------------------------------------------------


def _percent(part: Decimal, whole: Decimal) -> Decimal:
    return (part * 100 / whole).quantize(_PAISE, rounding=ROUND_HALF_UP) if whole else Decimal("0.00")


@dataclass
class _Run:
    """What the days produced, before the statistics."""

    first_open: datetime
    trades_by_day: list[list[BacktestTrade]] = field(default_factory=list)
    closes: list[datetime] = field(default_factory=list)  # each day's last bar's end
    bars: int = 0


def _result(run: _Run, *, capital: Decimal) -> BacktestResult:
    trades = [trade for day in run.trades_by_day for trade in day]
    day_pnls = [sum((trade.pnl for trade in day), Decimal("0.00")) for day in run.trades_by_day]
    equity_curve = [(run.first_open, capital)]
    equity = capital
    for moment, pnl in zip(run.closes, day_pnls):
        equity += pnl
        equity_curve.append((moment, equity))
    peak = capital
    max_drawdown = Decimal("0.00")
    max_drawdown_pct = Decimal("0.00")
    for _, value in equity_curve:
        peak = max(peak, value)
        max_drawdown = max(max_drawdown, peak - value)
        if peak > 0:
            max_drawdown_pct = max(max_drawdown_pct, _percent(peak - value, peak))
    wins = sum(1 for trade in trades if trade.pnl > 0)
    sharpe = None
    if len(day_pnls) >= 2:
        returns = np.array([float(pnl) for pnl in day_pnls]) / float(capital)
        deviation = float(np.std(returns, ddof=1))
        if deviation > 0:
            ratio = float(np.mean(returns)) / deviation * math.sqrt(TRADING_DAYS_PER_YEAR)
            sharpe = Decimal(repr(ratio)).quantize(_PAISE, rounding=ROUND_HALF_UP)
    return BacktestResult(
        trades=trades,
        equity_curve=equity_curve,
        total_pnl=sum(day_pnls, Decimal("0.00")),
        win_rate=_percent(Decimal(wins), Decimal(len(trades))),
        max_drawdown=max_drawdown.quantize(_PAISE),
        max_drawdown_pct=max_drawdown_pct,
        sharpe=sharpe,
        days=len(run.closes),
        bars=run.bars,
    )
