"""The closed bars a rule is evaluated over, as read-only numpy arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

IST = ZoneInfo("Asia/Kolkata")


@dataclass(frozen=True, eq=False)
class CandleSeries:
    """Closed bars, oldest first, one array element per bar."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    minute_of_day: np.ndarray  # IST minutes since midnight of the bar's close (start + timeframe)
    day: np.ndarray  # ordinal of the bar's IST trading date, for vwap's daily reset

    def __post_init__(self) -> None:
        lengths = {len(getattr(self, name)) for name in self.__dataclass_fields__}
        if len(lengths) > 1:
            raise ValueError(f"candle arrays differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.close)


def _frozen_array(values: Iterable[object] | np.ndarray, dtype: type) -> np.ndarray:
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


def candle_series(
    *,
    starts: Sequence[datetime],
    opens: Sequence[float] | np.ndarray,
    highs: Sequence[float] | np.ndarray,
    lows: Sequence[float] | np.ndarray,
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    timeframe_minutes: int = 1,
) -> CandleSeries:
    """Bars from their aware (UTC) open times and prices; times of day and trading dates are taken in IST."""
    if timeframe_minutes < 1:
        raise ValueError("timeframe_minutes must be at least 1")
    local_starts = []
    for start in starts:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"bar start {start} has no time zone")
        local_starts.append(start.astimezone(IST))
    # IST keeps one offset all year, so the close's time of day is the start's plus the timeframe, wrapped.
    minute_of_day = [(moment.hour * 60 + moment.minute + timeframe_minutes) % 1440 for moment in local_starts]
    return CandleSeries(
        open=_frozen_array(opens, np.float64),
        high=_frozen_array(highs, np.float64),
        low=_frozen_array(lows, np.float64),
        close=_frozen_array(closes, np.float64),
        volume=_frozen_array(volumes, np.float64),
        minute_of_day=_frozen_array(minute_of_day, np.int64),
        day=_frozen_array([moment.date().toordinal() for moment in local_starts], np.int64),
    )
