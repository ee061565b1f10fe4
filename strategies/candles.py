"""Stored 1-minute candles as numpy arrays: one symbol's days in one query, and the 09:15-aligned bars of a longer
timeframe built from them. Backtests and rule history (live and backtested) read candles this one way."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np

from marketdata.calendar import IST
from marketdata.selectors import minute_candle_rows

_IST_OFFSET_SECONDS = 5 * 3600 + 30 * 60  # IST keeps one offset all year
_SECONDS_PER_DAY = 86_400
_BAR_SECONDS = 60
_SESSION_OPEN_MINUTE = 9 * 60 + 15
_EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class _Minutes:
    """One symbol's 1-minute bars, oldest first; `starts` in epoch seconds."""

    symbol: str
    starts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    day_slices: dict[date, slice] = field(default_factory=dict)

    @classmethod
    def from_table(cls, symbol: str, table: np.ndarray) -> _Minutes:
        """From rows of (start epoch, open, high, low, close[, volume]), sorted by start; volume 0 if left out."""
        if table.size == 0:
            table = table.reshape(0, 6)
        if table.shape[1] == 5:
            table = np.column_stack((table, np.zeros(len(table))))
        starts = table[:, 0].astype(np.int64)
        day_numbers = (starts + _IST_OFFSET_SECONDS) // _SECONDS_PER_DAY
        numbers, firsts = np.unique(day_numbers, return_index=True)
        ends = [*firsts[1:].tolist(), len(starts)]
        day_slices = {
            _EPOCH_DAY + timedelta(days=int(number)): slice(int(first), int(end))
            for number, first, end in zip(numbers, firsts, ends)
        }
        columns = [np.ascontiguousarray(table[:, index]) for index in range(1, 6)]
        return cls(symbol, starts, *columns, day_slices=day_slices)

    def day(self, day: date) -> _Minutes | None:
        part = self.day_slices.get(day)
        if part is None:
            return None
        return _Minutes(
            self.symbol,
            self.starts[part],
            self.open[part],
            self.high[part],
            self.low[part],
            self.close[part],
            self.volume[part],
            {day: slice(0, part.stop - part.start)},
        )


def _ist_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=IST)


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(int(epoch), tz=IST)


def _minutes_load(symbol: str, *, since: date, until: date, volume: bool = False) -> _Minutes:
    """The symbol's 1-minute candles of the IST days since..until: one query, straight into numpy. Only rules read
    volume, so it is left out (as 0) unless asked for."""
    rows = minute_candle_rows(symbol=symbol, since=since, until=until, volume=volume)
    table = np.array(rows, dtype=np.float64)
    return _Minutes.from_table(symbol, table.reshape(-1, 6 if volume else 5))


def _aggregated(minutes: _Minutes, timeframe: int) -> _Minutes:
    """`timeframe`-minute bars from 1-minute ones, in buckets aligned to 09:15 IST each day like stored candles."""
    if timeframe <= 1:
        return minutes
    local = minutes.starts + _IST_OFFSET_SECONDS
    day_numbers = local // _SECONDS_PER_DAY
    minute_of_day = (local % _SECONDS_PER_DAY) // 60
    buckets = (minute_of_day - _SESSION_OPEN_MINUTE) // timeframe  # floor: minutes before 09:15 fall earlier
    keys = day_numbers * 10_000 + buckets
    firsts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    lasts = np.concatenate((firsts[1:], [len(keys)])) - 1
    bucket_starts = (
        day_numbers[firsts] * _SECONDS_PER_DAY
        + (_SESSION_OPEN_MINUTE + buckets[firsts] * timeframe) * _BAR_SECONDS
        - _IST_OFFSET_SECONDS
    )
    table = np.column_stack(
        (
            bucket_starts,
            minutes.open[firsts],
            np.maximum.reduceat(minutes.high, firsts),
            np.minimum.reduceat(minutes.low, firsts),
            minutes.close[lasts],
            np.add.reduceat(minutes.volume, firsts),
        )
    ).astype(np.float64)
    return _Minutes.from_table(minutes.symbol, table)
