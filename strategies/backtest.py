"""Backtests of a StrategyDefinition over stored 1-minute candles.

The clock is the first leg's underlying (its spot candles, `strategies.legs.spot_symbol`); the days are the IST
trading days between `start` and `end` on which it has candles and whose weekday the strategy trades. A webhook
strategy's clock is every signal symbol's candles (and the first leg's underlying, if it has legs) taken together.
Each day is worked on with numpy over the day's bars; Python only steps from one event (an entry, a stop, a re-entry)
to the next.

How fills are priced, so results can be checked by hand:

- Every fill is stamped with the start of the minute candle it came from, in IST.
- A time-based entry fills at the close of the first bar starting at or after `entry_time`; the forced exit at the
  close of the first bar starting at or after `exit_time` ("exit_time"), or of the day's last bar if it has none
  ("end"). The strike is chosen with the spot at the entry price's moment.
- A leg's stop-loss and target are measured from its entry price (`ExitLevel.distance`). They are checked against
  each later bar's high and low and fill at the level, or at the bar's open when it opens beyond it; a bar that
  reaches both fills the stop (nothing tells which came first). The trailing stop (points) follows the best price
  of the bars before the current one; while it is tighter than the fixed stop its exits are "trailing_stop".
- A leg stopped out re-enters the same contract at the next bar's open, up to `reentries` times a day.
- The strategy's MTM (today's closed plus open PnL of its legs) is checked at each bar's close against
  `mtm_stop_loss` and `mtm_target`; a breach closes every open leg at that close and ends the strategy's day.
- Rule strategies evaluate `entry_rule`/`exit_rule` (strategies.rules) on `rule_symbol`'s bars of
  `timeframe_minutes`, aligned to 09:15 like stored candles, over the whole range so indicators carry across days;
  `rules.rule_history` reads them, as it does for live evaluation, from enough trading sessions before `start` for
  the rules' indicators to be known on its first bar.
  A rule bar counts once it has closed: when flat, the legs enter at the open of the first 1-minute bar starting at
  or after its end (the strike from the spot there); when holding, the exit rule closes everything at that open.
- Webhook strategies replay the recorded signals as the live engine reads them: BUY and SHORT open or add at the open
  of the symbol's first bar starting at or after the signal; SELL and COVER close the long or short they name, never
  more than held; EXIT closes the signal's symbol, or everything without one. Positions net per symbol.
  The MTM limits and `exit_time` apply; the legs' stop-losses and targets do not (signals name symbols, not legs).
- Options are priced from the contract's own stored candles when it has some that day ("candles"); otherwise by
  Black-Scholes on the underlying's bars ("black_scholes") with the given volatility, `chain.risk_free_rate()` and
  time to `chain.expiry_moment`: the open priced at the bar's start, high, low and close at its end, a call's high
  at the underlying's high and a put's at its low. Futures are priced at the underlying (no basis), equity at its own
  candles. Prices are rounded to the paisa and PnL computed from the rounded prices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
from django.db import connection
from django.db.models import F, FloatField, Func, Q, QuerySet, Window
from django.db.models.functions import Cast, RowNumber, TruncDate

from marketdata.calendar import IST, is_trading_day
from marketdata.chain import expiry_moment, risk_free_rate
from marketdata.instruments import DEMO_INDICES, DEMO_STOCKS, kite_future_tradingsymbol, kite_option_tradingsymbol
from marketdata.models import Candle, Instrument, InstrumentType
from marketdata.options import DAYS_PER_YEAR, black_scholes_price

from . import legs as leg_choice
from .definitions import ExitLevel, ExpiryChoice, Kind, LegDefinition, LegInstrument, StrategyDefinition, StrikeChoice

MINUTE_INTERVAL = "1m"
TRADING_DAYS_PER_YEAR = 252
WEBHOOK_ACTIONS = ("BUY", "SELL", "SHORT", "COVER", "EXIT")

_IST_OFFSET_SECONDS = 5 * 3600 + 30 * 60  # IST keeps one offset all year
_SECONDS_PER_DAY = 86_400
_BAR_SECONDS = 60
_SESSION_OPEN_MINUTE = 9 * 60 + 15
_SECONDS_PER_YEAR = DAYS_PER_YEAR * _SECONDS_PER_DAY
_EPOCH_DAY = date(1970, 1, 1)
_PAISE = Decimal("0.01")
# A price that reaches a level exactly touches it, whatever the binary rounding of the two floats.
_TOUCH = 1e-7


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


_STOPS = (ExitReason.STOP_LOSS, ExitReason.TRAILING_STOP)


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


# --- candles as arrays ----------------------------------------------------------------------------------------------


class _EpochSeconds(Func):
    """A datetime column as Unix seconds, computed by the database, so no datetime objects are built per row."""

    # date_part gives float8 directly; EXTRACT gives numeric (PostgreSQL 14+), slower to compute and convert.
    template = "date_part('epoch', %(expressions)s)"
    output_field = FloatField()

    def as_sqlite(self, compiler, connection, **extra_context):
        # SQLite (embedded mode) keeps UTC datetimes as text, which julianday reads; the Unix epoch is day 2440587.5.
        return self.as_sql(
            compiler,
            connection,
            template="ROUND((julianday(%(expressions)s) - 2440587.5) * 86400.0)",
            **extra_context,
        )


def _float(name: str) -> Cast:
    return Cast(name, FloatField())


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


_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
_Item = TypeVar("_Item")


def _candle_rows(candles: QuerySet[Candle], *leading: Any, volume: bool = True) -> QuerySet:
    """Rows of `leading` columns, then start (epoch seconds), open, high, low, close and volume, all floats."""
    prices = _PRICE_COLUMNS if volume else _PRICE_COLUMNS[:-1]
    return candles.values_list(*leading, _EpochSeconds("start"), *(_float(name) for name in prices))


def _minutes_load(symbol: str, *, since: date, until: date, volume: bool = False) -> _Minutes:
    """The symbol's 1-minute candles of the IST days since..until: one query, straight into numpy. Only rules read
    volume, so it is left out (as 0) unless asked for."""
    rows = _candle_rows(
        Candle.objects.filter(
            symbol=symbol,
            interval=MINUTE_INTERVAL,
            start__gte=_ist_midnight(since),
            start__lt=_ist_midnight(until + timedelta(days=1)),
        ).order_by("start"),
        volume=volume,
    )
    # Every column already arrives as a float, so the rows are fetched as the driver returns them, without
    # Django's per-value converters: a year of minutes is ~0.5 million values.
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        table = np.array(cursor.fetchall(), dtype=np.float64)
    return _Minutes.from_table(symbol, table.reshape(-1, 6 if volume else 5))


def _batches(items: Sequence[_Item], size: int) -> Iterable[Sequence[_Item]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


def _day_candles_portable(pairs: Sequence[tuple[str, date]]) -> Iterable[tuple[Any, ...]]:
    """(symbol, start epoch, open, high, low, close, volume) of each (symbol, IST day), by symbol and start."""
    days_of_symbols = Q(
        *(
            Q(symbol=symbol, start__gte=_ist_midnight(day), start__lt=_ist_midnight(day + timedelta(days=1)))
            for symbol, day in pairs
        ),
        _connector=Q.OR,
    )
    return _candle_rows(
        Candle.objects.filter(days_of_symbols, interval=MINUTE_INTERVAL).order_by("symbol", "start"), "symbol"
    )


def _day_candles_postgresql(pairs: Sequence[tuple[str, date]]) -> Iterable[tuple[Any, ...]]:
    """The same rows as `_day_candles_portable`, joined against the pairs as arrays: one short statement whatever
    their number, where Django would compile hundreds of OR-ed lookups."""
    sql = (
        "SELECT candle.symbol, date_part('epoch', candle.start), candle.open::float8, candle.high::float8, "
        "candle.low::float8, candle.close::float8, candle.volume::float8 "
        "FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS wanted(symbol, since, until) "
        f"JOIN {connection.ops.quote_name(Candle._meta.db_table)} AS candle ON candle.symbol = wanted.symbol "
        "AND candle.interval = %s AND candle.start >= wanted.since AND candle.start < wanted.until "
        "ORDER BY candle.symbol, candle.start"
    )
    params = [
        [symbol for symbol, _ in pairs],
        [_ist_midnight(day) for _, day in pairs],
        [_ist_midnight(day + timedelta(days=1)) for _, day in pairs],
        MINUTE_INTERVAL,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


class _ContractCandles:
    """Option contracts' candles per (symbol, day), fetched in batches and remembered (None: the contract has none
    that day)."""

    # Pairs per query: three parameters each on SQLite, well inside its limit on parameters.
    BATCH = 300

    def __init__(self) -> None:
        self._days: dict[tuple[str, date], _Minutes | None] = {}

    def prefetch(self, wanted: Iterable[tuple[str, date]]) -> None:
        missing = sorted({key for key in wanted if key not in self._days})
        fetch = _day_candles_postgresql if connection.vendor == "postgresql" else _day_candles_portable
        for batch in _batches(missing, self.BATCH):
            by_symbol: dict[str, list[tuple[float, ...]]] = {}
            for symbol, *values in fetch(batch):
                by_symbol.setdefault(symbol, []).append(values)
            found: dict[tuple[str, date], _Minutes | None] = {}
            for symbol, values in by_symbol.items():
                minutes = _Minutes.from_table(symbol, np.array(values, dtype=np.float64))
                found |= {(symbol, day): minutes.day(day) for day in minutes.day_slices}
            for key in batch:
                self._days[key] = found.get(key)

    def day(self, symbol: str, day: date) -> _Minutes | None:
        if (symbol, day) not in self._days:
            self.prefetch([(symbol, day)])
        return self._days[(symbol, day)]


@dataclass(frozen=True)
class _PremiumQuestion:
    """Which of `symbols` had a candle at or before the bar starting at `bar_start` on `day`, and its price then."""

    day: date
    bar_start: int  # epoch seconds
    at_open: bool
    symbols: tuple[str, ...]


def _stored_premiums(questions: Sequence[_PremiumQuestion]) -> dict[tuple[int, str], float]:
    """Each question's contracts' prices at its bar from their own candles: the last candle of the day starting at or
    before the bar (its open if it is the bar and the entry fills at the open, else its close). Keyed by (question
    index, symbol); absent where the contract has no candle yet that day."""
    prices: dict[tuple[int, str], float] = {}
    # A query ranks candles per symbol and day, so questions sharing a day go to different queries.
    rounds: list[list[int]] = []
    for index, question in enumerate(questions):
        for indices in rounds:
            if len(indices) < 100 and all(questions[other].day != question.day for other in indices):
                indices.append(index)
                break
        else:
            rounds.append([index])
    for indices in rounds:
        asked = Q(
            *(
                Q(
                    symbol__in=questions[index].symbols,
                    start__gte=_ist_midnight(questions[index].day),
                    start__lte=datetime.fromtimestamp(questions[index].bar_start, tz=UTC),
                )
                for index in indices
            ),
            _connector=Q.OR,
        )
        latest = (
            Candle.objects.filter(asked, interval=MINUTE_INTERVAL)
            .annotate(
                recency=Window(
                    RowNumber(),
                    partition_by=[F("symbol"), TruncDate("start", tzinfo=IST)],
                    order_by=F("start").desc(),
                )
            )
            .filter(recency=1)
            .values_list("symbol", _EpochSeconds("start"), _float("open"), _float("close"))
        )
        index_of_day = {questions[index].day: index for index in indices}
        for symbol, start, opening, closing in latest:
            index = index_of_day[_EPOCH_DAY + timedelta(days=(int(start) + _IST_OFFSET_SECONDS) // _SECONDS_PER_DAY)]
            question = questions[index]
            prices[(index, symbol)] = opening if question.at_open and int(start) == question.bar_start else closing
    return prices


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


# --- one leg's day: vectorised search for its exits -----------------------------------------------------------------


@dataclass(frozen=True)
class _LegExits:
    stop_loss: ExitLevel | None
    target: ExitLevel | None
    trail: float | None
    reentries: int


@dataclass
class _Segment:
    """One stay of a contract in the market: from its entry fill to its exit fill, bars counted on the clock."""

    contract: int  # index into the cycle's contracts
    entry_bar: int
    entry_price: float
    exit_bar: int
    exit_price: float
    reason: str

    def pnl_per_unit(self, sign: int) -> float:
        return sign * (self.exit_price - self.entry_price)


@dataclass(frozen=True)
class _ForcedExit:
    bar: int
    at_open: bool
    reason: str


def _first_exit(
    bars: _Bars, *, sign: int, entry_price: float, first: int, last: int, exits: _LegExits
) -> tuple[int, float, str] | None:
    """The first of bars first..last where the leg's stop or target fills: (bar, price, reason), or None."""
    if exits.stop_loss is None and exits.target is None and exits.trail is None:
        return None
    window = slice(first, last + 1)
    adverse, favourable = (bars.low[window], bars.high[window]) if sign > 0 else (bars.high[window], bars.low[window])
    # Everything in PnL per unit, so one code path serves long and short legs.
    adverse_pnl = sign * (adverse - entry_price)
    favourable_pnl = sign * (favourable - entry_price)
    entry_decimal = Decimal(repr(entry_price))
    fixed_stop = -float(exits.stop_loss.distance(entry_decimal)) if exits.stop_loss is not None else None
    stop: np.ndarray | float | None = fixed_stop
    if exits.trail is not None:
        best_before = np.maximum.accumulate(np.concatenate(([0.0], favourable_pnl[:-1])))
        trailing = best_before - exits.trail
        stop = trailing if fixed_stop is None else np.maximum(trailing, fixed_stop)
    target = float(exits.target.distance(entry_decimal)) if exits.target is not None else None
    hit = np.zeros(len(adverse_pnl), dtype=bool)
    if stop is not None:
        hit |= adverse_pnl <= stop + _TOUCH
    if target is not None:
        hit |= favourable_pnl >= target - _TOUCH
    if not hit.any():
        return None
    index = int(np.argmax(hit))
    bar = first + index
    open_pnl = sign * (float(bars.open[bar]) - entry_price)
    stop_here = None if stop is None else float(stop[index] if isinstance(stop, np.ndarray) else stop)
    if target is not None and open_pnl >= target - _TOUCH:
        return bar, round(entry_price + sign * open_pnl, 2), ExitReason.TARGET
    if stop_here is not None and adverse_pnl[index] <= stop_here + _TOUCH:
        trailed = exits.trail is not None and (fixed_stop is None or stop_here > fixed_stop + _TOUCH)
        reason = ExitReason.TRAILING_STOP if trailed else ExitReason.STOP_LOSS
        filled_pnl = min(stop_here, open_pnl)
        return bar, round(entry_price + sign * filled_pnl, 2), reason
    assert target is not None
    return bar, round(entry_price + sign * target, 2), ExitReason.TARGET


def _leg_segments(
    bars: _Bars, *, contract: int, sign: int, entry: _EntryPoint, forced: _ForcedExit, exits: _LegExits
) -> list[_Segment]:
    """The leg's stays from `entry` to `forced`, re-entering after stops while re-entries last."""
    segments: list[_Segment] = []
    reentries_left = exits.reentries
    bar, at_open = entry.bar, entry.at_open
    last_check = forced.bar - 1 if forced.at_open else forced.bar
    while True:
        entry_price = round(float(bars.open[bar] if at_open else bars.close[bar]), 2)
        first_check = bar if at_open else bar + 1
        hit = None
        if first_check <= last_check:
            hit = _first_exit(bars, sign=sign, entry_price=entry_price, first=first_check, last=last_check, exits=exits)
        if hit is None:
            exit_price = round(float(bars.open[forced.bar] if forced.at_open else bars.close[forced.bar]), 2)
            segments.append(_Segment(contract, bar, entry_price, forced.bar, exit_price, forced.reason))
            return segments
        exit_bar, exit_price, reason = hit
        segments.append(_Segment(contract, bar, entry_price, exit_bar, exit_price, reason))
        if reason not in _STOPS or reentries_left == 0 or exit_bar + 1 >= forced.bar:
            return segments
        reentries_left -= 1
        bar, at_open = exit_bar + 1, True


def _mtm_breach(
    segments: list[_Segment],
    *,
    closes: Sequence[np.ndarray],
    signed_quantities: Sequence[int],
    first: int,
    last: int,
    realized_before: float,
    stop_loss: Decimal | None,
    target: Decimal | None,
) -> tuple[int, str] | None:
    """The first bar in first..last at whose close the day's PnL breaches the strategy's MTM stop or target."""
    if (stop_loss is None and target is None) or last < first:
        return None
    mtm = np.full(last - first + 1, realized_before)
    for segment in segments:
        quantity = signed_quantities[segment.contract]
        held_from, held_until = max(segment.entry_bar, first), min(segment.exit_bar, last + 1)
        if held_from < held_until:
            unrealized = closes[segment.contract][held_from:held_until] - segment.entry_price
            mtm[held_from - first : held_until - first] += quantity * unrealized
        closed_from = max(segment.exit_bar, first)
        if closed_from <= last:
            mtm[closed_from - first :] += quantity * (segment.exit_price - segment.entry_price)
    hit = _mtm_limits_hit(mtm, stop_loss=stop_loss, target=target)
    return None if hit is None else (first + hit[0], hit[1])


def _mtm_limits_hit(mtm: np.ndarray, *, stop_loss: Decimal | None, target: Decimal | None) -> tuple[int, str] | None:
    """The first position in `mtm` (PnL at bar closes) at or beyond the MTM stop-loss or target, and which."""
    hit = np.zeros(len(mtm), dtype=bool)
    if stop_loss is not None:
        hit |= mtm <= -float(stop_loss) + _TOUCH
    if target is not None:
        hit |= mtm >= float(target) - _TOUCH
    if not hit.any():
        return None
    index = int(np.argmax(hit))
    lost = stop_loss is not None and mtm[index] <= -float(stop_loss) + _TOUCH
    return index, ExitReason.MTM_STOP_LOSS if lost else ExitReason.MTM_TARGET


def _segments_cut(segments: list[_Segment], *, bar: int, reason: str, closes: Sequence[np.ndarray]) -> list[_Segment]:
    """The stays as they are once everything still open is closed at `bar`'s close."""
    kept = []
    for segment in segments:
        if segment.entry_bar > bar:
            continue
        if segment.exit_bar > bar:
            segment = _Segment(
                segment.contract,
                segment.entry_bar,
                segment.entry_price,
                bar,
                round(float(closes[segment.contract][bar]), 2),
                reason,
            )
        kept.append(segment)
    return kept


# --- the engine -----------------------------------------------------------------------------------------------------


@dataclass
class _Priced:
    contract: _Contract
    bars: _Bars
    priced_by: str


class _Backtest:
    def __init__(
        self,
        *,
        definition: StrategyDefinition,
        start: date,
        end: date,
        volatility: float,
        signals: Sequence[BacktestSignal],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.definition = definition
        self.start, self.end = start, end
        self.volatility = volatility
        self.rate = risk_free_rate()
        self.signals = signals
        self.progress = progress
        self.contract_candles = _ContractCandles()
        self._series: dict[str, _Minutes] = {}
        self._lot_sizes: dict[tuple[str, LegInstrument], int] = {}
        self._expiries: dict[tuple[str, date], tuple[list[date], list[date]]] = {}
        self._underlying_bars: dict[tuple[str, date], _Bars] = {}
        self._modelled: dict[tuple[str, date], _Bars] = {}
        self.leg_exits = [
            _LegExits(
                stop_loss=leg.stop_loss,
                target=leg.target,
                trail=float(definition.trailing_stop) if definition.trailing_stop is not None else None,
                reentries=max(definition.reentries, 0),
            )
            for leg in definition.legs
        ]

    # data

    def minutes(self, symbol: str) -> _Minutes:
        if symbol not in self._series:
            self._series[symbol] = _minutes_load(symbol, since=self.start, until=self.end)
        return self._series[symbol]

    def no_candles(self, symbol: str) -> BacktestError:
        return BacktestError(f"no candles for {symbol} between {self.start} and {self.end}")

    def selected_days(self, minutes: Iterable[_Minutes]) -> list[date]:
        days = set()
        for series in minutes:
            days.update(series.day_slices)
        return sorted(
            day
            for day in days
            if self.start <= day <= self.end and is_trading_day(day) and day.weekday() in self.definition.weekdays
        )

    def underlying_bars(self, underlying: str, clock: _Clock) -> _Bars:
        key = (underlying, clock.day)
        if key not in self._underlying_bars:
            symbol = leg_choice.spot_symbol(underlying)
            day = self.minutes(symbol).day(clock.day)
            if day is None:
                raise BacktestError(f"no candles for {symbol} on {clock.day}")
            if len(self._underlying_bars) > 64:  # only the current day's are needed again
                self._underlying_bars.clear()
            self._underlying_bars[key] = _bars_aligned(day, clock.starts)
        return self._underlying_bars[key]

    def lot_size(self, leg: LegDefinition) -> int:
        key = (leg.underlying, leg.instrument)
        if key in self._lot_sizes:
            return self._lot_sizes[key]
        if leg.instrument == LegInstrument.EQUITY:
            size = 1
        else:
            size = (
                Instrument.objects.filter(
                    underlying=leg.underlying,
                    instrument_type__in=(InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE),
                )
                .order_by("-is_active", "-expiry")
                .values_list("lot_size", flat=True)
                .first()
            )
            if size is None:
                known = {index.underlying: index.lot_size for index in DEMO_INDICES} | {
                    stock.tradingsymbol: stock.lot_size for stock in DEMO_STOCKS
                }
                size = known.get(leg.underlying)
            if not size:
                raise BacktestError(f"no lot size is known for {leg.underlying}: load the instrument master")
        self._lot_sizes[key] = size
        return size

    # contracts

    def calendar_expiries(self, underlying: str, day: date) -> tuple[list[date], list[date]]:
        key = (underlying, day)
        if key not in self._expiries:
            self._expiries[key] = leg_choice.calendar_expiries(underlying=underlying, day=day)
        return self._expiries[key]

    def resolve(self, points: Sequence[_EntryPoint]) -> list[list[_Contract]]:
        """Each entry point's contracts, one per leg. Strikes chosen by premium are priced in one batch."""
        resolved: list[list[_Contract | None]] = []
        by_premium: list[tuple[int, int, Decimal, list[Decimal], _Contract]] = []  # point, leg, spot, strikes, draft
        for point_index, point in enumerate(points):
            contracts: list[_Contract | None] = []
            for leg_index, leg in enumerate(self.definition.legs):
                try:
                    contract, strikes, spot = self._contract_draft(leg_index, leg, point)
                except leg_choice.LegUnresolvable as error:
                    raise BacktestError(f"{point.clock.day}: leg {leg_index + 1}: {error}") from error
                if strikes is not None:
                    by_premium.append((point_index, leg_index, spot, strikes, contract))
                contracts.append(contract if strikes is None else None)
            resolved.append(contracts)
        if by_premium:
            self._strikes_by_premium(points, by_premium, resolved)
        return [[contract for contract in contracts if contract is not None] for contracts in resolved]

    def _contract_draft(
        self, leg_index: int, leg: LegDefinition, point: _EntryPoint
    ) -> tuple[_Contract, list[Decimal] | None, Decimal]:
        """The leg's contract at `point`; for a strike chosen by premium, a draft without it and the strikes."""
        day = point.clock.day
        quantity = leg.lots * self.lot_size(leg)
        spot = _paise(_price_at(self.underlying_bars(leg.underlying, point.clock), point))
        base = {"leg": leg_index, "instrument": leg.instrument, "underlying": leg.underlying, "side": leg.side}
        if leg.instrument == LegInstrument.EQUITY:
            return _Contract(symbol=leg_choice.spot_symbol(leg.underlying), quantity=quantity, **base), None, spot
        every, monthly = self.calendar_expiries(leg.underlying, day)
        exchange = leg_choice.derivatives_exchange(leg.underlying)
        if leg.instrument == LegInstrument.FUTURE:
            # Futures are monthly: a week choice means the month it falls in, as the live engine reads it.
            choice = {
                ExpiryChoice.CURRENT_WEEK: ExpiryChoice.CURRENT_MONTH,
                ExpiryChoice.NEXT_WEEK: ExpiryChoice.NEXT_MONTH,
            }.get(leg.expiry, leg.expiry)
            expiry = leg_choice.expiry_pick(
                choice=choice, day=day, offered=monthly, monthly=monthly, fixed=leg.expiry_date
            )
            symbol = f"{exchange}:{kite_future_tradingsymbol(underlying=leg.underlying, expiry=expiry)}"
            return _Contract(symbol=symbol, quantity=quantity, expiry=expiry, **base), None, spot
        expiry = leg_choice.expiry_pick(
            choice=leg.expiry, day=day, offered=every, monthly=monthly, fixed=leg.expiry_date
        )
        strikes = leg_choice.strike_grid(underlying=leg.underlying, spot=spot)
        if leg.strike == StrikeChoice.FIXED and leg.strike_price is not None and leg.strike_price > 0:
            strikes.append(leg.strike_price)  # any strike can be asked for by price, not only those near the money
        draft = _Contract(symbol="", quantity=quantity, expiry=expiry, is_call=leg.option_type == "CE", **base)
        if leg.strike == StrikeChoice.CLOSEST_PREMIUM:
            return draft, strikes, spot
        strike = leg_choice.strike_pick(
            choice=leg.strike, spot=spot, strikes=strikes, offset=leg.strike_offset, fixed=leg.strike_price
        )
        return self._with_strike(draft, strike, monthly), None, spot

    def _with_strike(self, draft: _Contract, strike: Decimal, monthly: list[date]) -> _Contract:
        leg = self.definition.legs[draft.leg]
        assert draft.expiry is not None
        tradingsymbol = kite_option_tradingsymbol(
            underlying=leg.underlying,
            expiry=draft.expiry,
            strike=strike,
            option_type=leg.option_type,
            monthly=draft.expiry in monthly,
        )
        symbol = f"{leg_choice.derivatives_exchange(leg.underlying)}:{tradingsymbol}"
        return _Contract(
            leg=draft.leg,
            symbol=symbol,
            instrument=draft.instrument,
            underlying=draft.underlying,
            side=draft.side,
            quantity=draft.quantity,
            expiry=draft.expiry,
            strike=float(strike),
            is_call=draft.is_call,
        )

    def _strikes_by_premium(
        self,
        points: Sequence[_EntryPoint],
        by_premium: list[tuple[int, int, Decimal, list[Decimal], _Contract]],
        resolved: list[list[_Contract | None]],
    ) -> None:
        """Premiums of every candidate strike priced like the legs: stored candles where the contract has them at
        the entry, Black-Scholes otherwise; then the strike closest to the leg's premium."""
        candidates: list[list[_Contract]] = []
        questions: list[_PremiumQuestion] = []
        for point_index, _, _, strikes, draft in by_premium:
            point = points[point_index]
            _, monthly = self.calendar_expiries(draft.underlying, point.clock.day)
            options = [self._with_strike(draft, strike, monthly) for strike in strikes]
            candidates.append(options)
            questions.append(
                _PremiumQuestion(
                    day=point.clock.day,
                    bar_start=int(point.clock.starts[point.bar]),
                    at_open=point.at_open,
                    symbols=tuple(option.symbol for option in options),
                )
            )
        stored = _stored_premiums(questions)
        for question_index, ((point_index, leg_index, spot, strikes, draft), options) in enumerate(
            zip(by_premium, candidates)
        ):
            point = points[point_index]
            assert draft.expiry is not None
            years = max(expiry_moment(expiry=draft.expiry).timestamp() - point.price_epoch, 0) / _SECONDS_PER_YEAR
            modelled = black_scholes_price(
                spot=float(spot),
                strike=np.array([float(strike) for strike in strikes]),
                years=years,
                volatility=self.volatility,
                rate=self.rate,
                is_call=draft.is_call,
            )
            premiums = {
                strike: _paise(stored.get((question_index, option.symbol), float(price)))
                for strike, option, price in zip(strikes, options, modelled)
            }
            leg = self.definition.legs[leg_index]
            try:
                strike = leg_choice.strike_pick(
                    choice=leg.strike, spot=spot, strikes=strikes, premium=leg.premium, premiums=premiums
                )
            except leg_choice.LegUnresolvable as error:
                raise BacktestError(f"{point.clock.day}: leg {leg_index + 1}: {error}") from error
            resolved[point_index][leg_index] = options[strikes.index(strike)]

    def priced(self, contract: _Contract, clock: _Clock) -> _Priced:
        if contract.instrument != LegInstrument.OPTION:
            return _Priced(contract, self.underlying_bars(contract.underlying, clock), PricedBy.CANDLES)
        stored = self.contract_candles.day(contract.symbol, clock.day)
        if stored is not None:
            return _Priced(contract, _bars_aligned(stored, clock.starts), PricedBy.CANDLES)
        self.options_model([(contract, clock)])
        return _Priced(contract, self._modelled[(contract.symbol, clock.day)], PricedBy.BLACK_SCHOLES)

    def options_model(self, wanted: Sequence[tuple[_Contract, _Clock]]) -> None:
        """Black-Scholes bars of every (option, day) in `wanted` that has no candles of its own, in one vectorised
        call over all their days end to end; `priced` reads them from here."""
        todo = {
            (contract.symbol, clock.day): (contract, clock)
            for contract, clock in wanted
            if contract.instrument == LegInstrument.OPTION
            and (contract.symbol, clock.day) not in self._modelled
            and self.contract_candles.day(contract.symbol, clock.day) is None
        }
        if not todo:
            return
        underlyings = [self.underlying_bars(contract.underlying, clock) for contract, clock in todo.values()]
        lengths = [len(clock.starts) for _, clock in todo.values()]
        strikes, expiries, calls = [], [], []
        for contract, _ in todo.values():
            assert contract.expiry is not None and contract.strike is not None
            strikes.append(contract.strike)
            expiries.append(expiry_moment(expiry=contract.expiry).timestamp())
            calls.append(contract.is_call)
        modelled = _black_scholes_bars(
            _Bars(*(np.concatenate([getattr(bars, name) for bars in underlyings]) for name in _BAR_PRICES)),
            np.concatenate([clock.starts for _, clock in todo.values()]),
            strike=np.repeat(strikes, lengths),
            expiry_epoch=np.repeat(expiries, lengths),
            is_call=np.repeat(calls, lengths),
            volatility=self.volatility,
            rate=self.rate,
        )
        ends = np.cumsum(lengths)
        for key, first, end in zip(todo, ends - lengths, ends):
            self._modelled[key] = _Bars(*(getattr(modelled, name)[first:end] for name in _BAR_PRICES))

    # a cycle: the legs entered together until all are out

    def cycle(
        self, contracts: list[_Contract], *, entry: _EntryPoint, forced: _ForcedExit, realized_before: float
    ) -> tuple[list[_Segment], list[_Priced], str | None]:
        """The legs' stays from `entry` until `forced`, cut short by the strategy's MTM limits (whose reason is
        returned when they end the day)."""
        priced = [self.priced(contract, entry.clock) for contract in contracts]
        segments: list[_Segment] = []
        for index, leg in enumerate(priced):
            segments += _leg_segments(
                leg.bars,
                contract=index,
                sign=leg.contract.sign,
                entry=entry,
                forced=forced,
                exits=self.leg_exits[leg.contract.leg],
            )
        closes = [leg.bars.close for leg in priced]
        breach = _mtm_breach(
            segments,
            closes=closes,
            signed_quantities=[leg.contract.sign * leg.contract.quantity for leg in priced],
            first=entry.bar if entry.at_open else entry.bar + 1,
            last=forced.bar - 1 if forced.at_open else forced.bar,
            realized_before=realized_before,
            stop_loss=self.definition.mtm_stop_loss,
            target=self.definition.mtm_target,
        )
        if breach is None:
            return segments, priced, None
        bar, reason = breach
        return _segments_cut(segments, bar=bar, reason=reason, closes=closes), priced, reason

    def forced_exit(self, clock: _Clock) -> _ForcedExit:
        bar = clock.first_bar_from(self.definition.exit_time)
        if bar < len(clock.starts):
            return _ForcedExit(bar, False, ExitReason.EXIT_TIME)
        return _ForcedExit(len(clock.starts) - 1, False, ExitReason.END)

    # the kinds

    def time_based(self, clocks: list[_Clock]) -> list[list[BacktestTrade]]:
        assert self.definition.entry_time is not None
        plans: list[tuple[_EntryPoint, _ForcedExit] | None] = []
        for clock in clocks:
            entry_bar = clock.first_bar_from(self.definition.entry_time)
            forced = self.forced_exit(clock)
            tradable = entry_bar < len(clock.starts) and entry_bar < forced.bar
            plans.append((_EntryPoint(clock, entry_bar, at_open=False), forced) if tradable else None)
        resolved = iter(self.resolve([plan[0] for plan in plans if plan is not None]))
        contracts_by_day = [next(resolved) if plan is not None else [] for plan in plans]
        # Every option contract's candles of its day in one query, before the days are worked through.
        self.contract_candles.prefetch(
            (contract.symbol, clock.day)
            for clock, contracts in zip(clocks, contracts_by_day)
            for contract in contracts
            if contract.instrument == LegInstrument.OPTION
        )
        self.options_model(
            [(contract, clock) for clock, contracts in zip(clocks, contracts_by_day) for contract in contracts]
        )
        days: list[list[BacktestTrade]] = []
        for index, (plan, contracts) in enumerate(zip(plans, contracts_by_day)):
            trades: list[BacktestTrade] = []
            if plan is not None:
                entry, forced = plan
                segments, priced, _ = self.cycle(contracts, entry=entry, forced=forced, realized_before=0.0)
                trades = _trades_of(segments, priced, entry.clock)
            days.append(trades)
            self.report(index + 1, len(plans))
        return days

    def rule_based(self, clocks: list[_Clock]) -> list[list[BacktestTrade]]:
        entries, exits = self.rule_moments()
        days: list[list[BacktestTrade]] = []
        for index, clock in enumerate(clocks):
            days.append(self.rule_day(clock, entries, exits))
            self.report(index + 1, len(clocks))
        return days

    def rule_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Epoch seconds at which the entry and the exit rule hold on a closed rule bar (the bar's end)."""
        from .rules import RuleError, rule_evaluate, rule_history, rule_parse

        definition = self.definition
        try:
            entry_rule = rule_parse(definition.entry_rule)
            exit_rule = rule_parse(definition.exit_rule) if definition.exit_rule.strip() else None
        except RuleError as error:
            raise BacktestError(f"the rule cannot be read: {error}") from error
        history = rule_history(
            symbol=definition.rule_symbol,
            timeframe_minutes=definition.timeframe_minutes,
            rules=[rule for rule in (entry_rule, exit_rule) if rule is not None],
            first_day=self.start,
            end=_ist_midnight(self.end + timedelta(days=1)),
        )
        if not len(history.series):
            raise self.no_candles(definition.rule_symbol)
        ends = history.ends
        entry_at = ends[rule_evaluate(entry_rule, history.series)]
        exit_at = ends[rule_evaluate(exit_rule, history.series)] if exit_rule is not None else ends[:0]
        return entry_at, exit_at

    def rule_day(self, clock: _Clock, entry_moments: np.ndarray, exit_moments: np.ndarray) -> list[BacktestTrade]:
        forced = self.forced_exit(clock)
        day_start = int(_ist_midnight(clock.day).timestamp())

        def bars_of(moments: np.ndarray) -> np.ndarray:
            today = moments[(moments >= day_start) & (moments < day_start + _SECONDS_PER_DAY)]
            bars = np.unique(np.searchsorted(clock.starts, today, side="left"))
            return bars[bars < len(clock.starts)]

        entry_bars, exit_bars = bars_of(entry_moments), bars_of(exit_moments)
        trades: list[BacktestTrade] = []
        realized = 0.0
        flat_from = 0
        while True:
            waiting = entry_bars[(entry_bars >= flat_from) & (entry_bars < forced.bar)]
            if not len(waiting):
                return trades
            entry = _EntryPoint(clock, int(waiting[0]), at_open=True)
            later_exits = exit_bars[(exit_bars > entry.bar) & (exit_bars <= forced.bar)]
            exit_here = _ForcedExit(int(later_exits[0]), True, ExitReason.RULE) if len(later_exits) else forced
            contracts = self.resolve([entry])[0]
            segments, priced, ended = self.cycle(contracts, entry=entry, forced=exit_here, realized_before=realized)
            trades += _trades_of(segments, priced, clock)
            if ended is not None:
                return trades
            contracts_held = [leg.contract for leg in priced]
            realized += sum(
                segment.pnl_per_unit(contracts_held[segment.contract].sign) * contracts_held[segment.contract].quantity
                for segment in segments
            )
            flat_from = max(segment.exit_bar for segment in segments) + 1

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


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


def _trades_of(segments: list[_Segment], priced: list[_Priced], clock: _Clock) -> list[BacktestTrade]:
    trades = []
    for segment in segments:
        contract = priced[segment.contract].contract
        entry_price, exit_price = _paise(segment.entry_price), _paise(segment.exit_price)
        trades.append(
            BacktestTrade(
                leg=contract.leg,
                symbol=contract.symbol,
                side=contract.side,
                quantity=contract.quantity,
                entry_at=_moment(clock.starts[segment.entry_bar]),
                entry_price=entry_price,
                exit_at=_moment(clock.starts[segment.exit_bar]),
                exit_price=exit_price,
                exit_reason=segment.reason,
                pnl=(exit_price - entry_price) * contract.sign * contract.quantity,
                priced_by=priced[segment.contract].priced_by,
            )
        )
    return sorted(trades, key=lambda trade: (trade.entry_at, trade.leg, trade.exit_at))


# --- webhook replay -------------------------------------------------------------------------------------------------


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
