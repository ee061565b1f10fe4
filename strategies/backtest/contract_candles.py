"""Option contracts' own stored candles: whole days fetched in batches, and premiums at an entry bar."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import numpy as np

from marketdata.selectors import minute_candle_day_rows, minute_candle_last_prices

from ..candles import _EPOCH_DAY, _IST_OFFSET_SECONDS, _SECONDS_PER_DAY, _Minutes

_Item = TypeVar("_Item")


def _batches(items: Sequence[_Item], size: int) -> Iterable[Sequence[_Item]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


class _ContractCandles:
    """Option contracts' candles per (symbol, day), fetched in batches and remembered (None: the contract has none
    that day)."""

    # Pairs per query: three parameters each on SQLite, well inside its limit on parameters.
    BATCH = 300

    def __init__(self) -> None:
        self._days: dict[tuple[str, date], _Minutes | None] = {}

    def prefetch(self, wanted: Iterable[tuple[str, date]]) -> None:
        missing = sorted({key for key in wanted if key not in self._days})
        for batch in _batches(missing, self.BATCH):
            by_symbol: dict[str, list[tuple[float, ...]]] = {}
            for symbol, *values in minute_candle_day_rows(days=batch):
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
        latest = minute_candle_last_prices(
            asks=[
                (
                    questions[index].symbols,
                    questions[index].day,
                    datetime.fromtimestamp(questions[index].bar_start, tz=UTC),
                )
                for index in indices
            ]
        )
        index_of_day = {questions[index].day: index for index in indices}
        for symbol, start, opening, closing in latest:
            index = index_of_day[_EPOCH_DAY + timedelta(days=(int(start) + _IST_OFFSET_SECONDS) // _SECONDS_PER_DAY)]
            question = questions[index]
            prices[(index, symbol)] = opening if question.at_open and int(start) == question.bar_start else closing
    return prices
