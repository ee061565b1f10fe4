"""Prices lined up on the clock: one day's bars of the clock symbol, other symbols' bars aligned to them, options
modelled by Black-Scholes, and the contracts the legs resolve to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from marketdata.options import DAYS_PER_YEAR, black_scholes_price

from ..candles import _BAR_SECONDS, _IST_OFFSET_SECONDS, _SECONDS_PER_DAY, _Minutes, _moment
from ..definitions import LegInstrument
from .results import _PAISE

_SECONDS_PER_YEAR = DAYS_PER_YEAR * _SECONDS_PER_DAY


# --- one day's bars on the clock -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clock:
    """The day's bars of the clock symbol: every leg's prices are lined up on them."""

    day: date
    starts: np.ndarray  # epoch seconds
    seconds_of_day: np.ndarray  # IST

    @property
    def close_moment(self) -> datetime:
        return _moment(self.starts[-1] + _BAR_SECONDS)

    def first_bar_from(self, moment: time) -> int:
        """Index of the first bar starting at or after `moment` (IST); len(starts) when none does."""
        seconds = moment.hour * 3600 + moment.minute * 60 + moment.second
        return int(np.searchsorted(self.seconds_of_day, seconds, side="left"))


def _clock_of(minutes: _Minutes, day: date) -> _Clock:
    starts = minutes.starts[minutes.day_slices[day]]
    return _Clock(day=day, starts=starts, seconds_of_day=(starts + _IST_OFFSET_SECONDS) % _SECONDS_PER_DAY)


@dataclass(frozen=True)
class _Bars:
    """A price per clock bar: open, the high and low, close. For an option these are the contract's own high and
    low (a put's high comes from the underlying's low)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray


_BAR_PRICES = ("open", "high", "low", "close")


def _bars_aligned(source: _Minutes, clock_starts: np.ndarray) -> _Bars:
    """`source`'s bars (one day's) on the clock: each clock bar takes the last source bar starting at or before it.
    A source bar carried over to later clock bars, or the first source bar before it starts, stands still there
    (its close, or the first open), so its high and low are not counted twice."""
    if len(source.starts) == len(clock_starts) and np.array_equal(source.starts, clock_starts):
        return _Bars(source.open, source.high, source.low, source.close)
    position = np.searchsorted(source.starts, clock_starts, side="right") - 1
    before_first = position < 0
    position = np.maximum(position, 0)
    fresh = ~before_first & np.concatenate(([True], position[1:] != position[:-1]))
    still = np.where(before_first, source.open[0], source.close[position])
    return _Bars(
        open=np.where(fresh, source.open[position], still),
        high=np.where(fresh, source.high[position], still),
        low=np.where(fresh, source.low[position], still),
        close=np.where(fresh, source.close[position], still),
    )


def _black_scholes_bars(
    underlying: _Bars,
    starts: np.ndarray,
    *,
    strike: np.ndarray | float,
    expiry_epoch: np.ndarray | float,
    is_call: np.ndarray | bool,
    volatility: float,
    rate: float,
) -> _Bars:
    """Options' bars from the underlying's, all four prices in one vectorised call; the arguments may hold many
    contracts' days end to end (a strike, expiry and call flag per bar)."""
    years_at_start = np.maximum(expiry_epoch - starts, 0) / _SECONDS_PER_YEAR
    years_at_end = np.maximum(expiry_epoch - starts - _BAR_SECONDS, 0) / _SECONDS_PER_YEAR
    at_open, at_high, at_low, at_close = black_scholes_price(
        spot=np.stack([underlying.open, underlying.high, underlying.low, underlying.close]),
        strike=strike,
        years=np.stack([years_at_start, years_at_end, years_at_end, years_at_end]),
        volatility=volatility,
        rate=rate,
        is_call=is_call,
    )
    # A put is dearest at the underlying's low.
    return _Bars(at_open, np.where(is_call, at_high, at_low), np.where(is_call, at_low, at_high), at_close)


# --- contracts ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Contract:
    leg: int
    symbol: str
    instrument: LegInstrument
    underlying: str
    side: str  # BUY | SELL
    quantity: int
    expiry: date | None = None
    strike: float | None = None
    is_call: bool = False

    @property
    def sign(self) -> int:
        return 1 if self.side == "BUY" else -1


@dataclass(frozen=True)
class _EntryPoint:
    clock: _Clock
    bar: int
    at_open: bool  # the entry fills at the bar's open (rules, re-entries) or its close (time-based)

    @property
    def price_epoch(self) -> int:
        return int(self.clock.starts[self.bar]) + (0 if self.at_open else _BAR_SECONDS)


def _price_at(bars: _Bars, point: _EntryPoint) -> float:
    return float(bars.open[point.bar] if point.at_open else bars.close[point.bar])


def _paise(value: float) -> Decimal:
    return Decimal(repr(round(value, 2))).quantize(_PAISE, rounding=ROUND_HALF_UP)
