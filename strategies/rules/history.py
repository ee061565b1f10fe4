"""The bars a rule reads, the one way both live evaluation and backtests read them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from marketdata import calendar

from ..candles import _aggregated, _minutes_load
from .language import Rule
from .series import IST, CandleSeries, candle_series


@dataclass(frozen=True, eq=False)
class RuleHistory:
    """A symbol's closed bars for rules, oldest first: the series and, per bar, when it closed (epoch seconds)."""

    series: CandleSeries
    ends: np.ndarray

    @property
    def last_close(self) -> datetime | None:
        """When the newest bar closed, in IST; None without bars."""
        return datetime.fromtimestamp(int(self.ends[-1]), tz=IST) if len(self.ends) else None


def rule_warm_up_start(*, bars: int, timeframe_minutes: int, before: date) -> date:
    """The first IST day whose bars, with those of the trading sessions up to `before`, give at least `bars` bars of
    `timeframe_minutes`: counted in trading sessions of the market calendar, so weekends and holidays in between
    never shorten the history."""
    # Only whole bars are counted (a session holds six 60-minute bars and a short seventh), which errs long.
    per_session = max(calendar.session_minutes() // timeframe_minutes, 1)
    sessions = math.ceil(bars / per_session)
    # Spare sessions for days with fewer bars than counted: a shortened session, minutes the feed missed, or a
    # holiday the list did not know about.
    sessions += 1 + sessions // 10
    return calendar.trading_days_back(before, sessions=sessions)


def rule_history(
    *, symbol: str, timeframe_minutes: int, rules: Sequence[Rule], first_day: date, end: datetime
) -> RuleHistory:
    """`symbol`'s bars of `timeframe_minutes` (built from stored 1-minute candles, aligned to 09:15 IST like stored
    candles) that have closed by `end`, from far enough before `first_day` that every rule's value is known on
    `first_day`'s first bar (Rule.lookback bars, see `rule_warm_up_start`). Live evaluation asks with today and now,
    backtests with their first day and the end of their last, so both read the same bars the same way."""
    needed = max((rule.lookback for rule in rules), default=1)
    since = rule_warm_up_start(bars=needed, timeframe_minutes=timeframe_minutes, before=first_day)
    until = (end - timedelta(microseconds=1)).astimezone(IST).date()
    # The backtests' loader: one query straight into numpy arrays, and the same 09:15-aligned buckets.
    bars = _aggregated(_minutes_load(symbol, since=since, until=until, volume=True), timeframe_minutes)
    ends = bars.starts + timeframe_minutes * 60
    closed = ends <= end.timestamp()
    series = candle_series(
        starts=[datetime.fromtimestamp(int(start), tz=UTC) for start in bars.starts[closed]],
        opens=bars.open[closed],
        highs=bars.high[closed],
        lows=bars.low[closed],
        closes=bars.close[closed],
        volumes=bars.volume[closed],
        timeframe_minutes=timeframe_minutes,
    )
    return RuleHistory(series=series, ends=ends[closed])
