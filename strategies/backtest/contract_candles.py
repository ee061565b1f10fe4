"""Option contracts' own stored candles: whole days fetched in batches, and premiums at an entry bar."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from django.db import connection
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber, TruncDate

from marketdata.calendar import IST
from marketdata.models import Candle

from ..candles import (
    _EPOCH_DAY,
    _IST_OFFSET_SECONDS,
    _SECONDS_PER_DAY,
    MINUTE_INTERVAL,
    _candle_rows,
    _EpochSeconds,
    _float,
    _ist_midnight,
    _Minutes,
)

_Item = TypeVar("_Item")


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
