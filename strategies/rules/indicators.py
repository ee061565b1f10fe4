"""The indicators rules can call, over whole arrays; NaN where a value is not yet known."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

from .series import CandleSeries


def _rolling(values: np.ndarray, period: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    result = np.full(len(values), np.nan)
    if period <= len(values):
        # Each window reduced on its own (not a running sum) keeps equal prices exactly equal to their mean.
        result[period - 1 :] = reduce(sliding_window_view(values, period), axis=1)
    return result


def _finite_runs(values: np.ndarray) -> list[tuple[int, int]]:
    finite = np.isfinite(values)
    if finite.all():
        return [(0, len(values))] if len(values) else []
    edges = np.flatnonzero(np.diff(np.concatenate(([False], finite, [False])).astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _smoothed(values: np.ndarray, period: int, alpha: float) -> np.ndarray:
    """avg[i] = (1 - alpha) * avg[i-1] + alpha * values[i], seeded with the mean of the first `period` values;
    an unknown value interrupts it and it seeds afresh after the next `period` known ones."""
    result = np.full(len(values), np.nan)
    for start, stop in _finite_runs(values):
        seeded_at = start + period - 1
        if seeded_at >= stop:
            continue
        seed = values[start : seeded_at + 1].mean()
        result[seeded_at] = seed
        if seeded_at + 1 < stop:
            result[seeded_at + 1 : stop], _ = lfilter(
                [alpha], [1.0, alpha - 1.0], values[seeded_at + 1 : stop], zi=[(1.0 - alpha) * seed]
            )
    return result


def _sma(values: np.ndarray, period: int) -> np.ndarray:
    return _rolling(values, period, np.mean)


def _ema(values: np.ndarray, period: int) -> np.ndarray:
    return _smoothed(values, period, 2.0 / (period + 1))


def _rsi(values: np.ndarray, period: int) -> np.ndarray:
    changes = np.diff(values, prepend=np.nan)
    average_gain = _smoothed(np.maximum(changes, 0.0), period, 1.0 / period)
    average_loss = _smoothed(np.maximum(-changes, 0.0), period, 1.0 / period)
    rsi = 100.0 - 100.0 / (1.0 + average_gain / average_loss)
    return np.where(average_loss == 0.0, 100.0, rsi)


def _vwap(series: CandleSeries) -> np.ndarray:
    typical_volume = (series.high + series.low + series.close) / 3.0 * series.volume
    traded_value = np.cumsum(typical_volume)
    traded_volume = np.cumsum(series.volume)
    if len(series):
        first_bars = np.flatnonzero(np.concatenate(([True], series.day[1:] != series.day[:-1])))
        bars_per_day = np.diff(np.append(first_bars, len(series)))
        # The running totals up to each day's first bar, subtracted from every bar of that day.
        before_value = np.repeat(traded_value[first_bars] - typical_volume[first_bars], bars_per_day)
        before_volume = np.repeat(traded_volume[first_bars] - series.volume[first_bars], bars_per_day)
        traded_value = traded_value - before_value
        traded_volume = traded_volume - before_volume
    return _known_quotient(traded_value, traded_volume)


def _known_quotient(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return _unknown_if_infinite(numerator / denominator)


def _unknown_if_infinite(values: np.ndarray) -> np.ndarray:
    # x/0 and overflow carry no usable value; NaN makes every comparison on them unknown.
    values[np.isinf(values)] = np.nan
    return values


_INDICATORS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "sma": _sma,
    "ema": _ema,
    "rsi": _rsi,
    "highest": lambda values, period: _rolling(values, period, np.max),
    "lowest": lambda values, period: _rolling(values, period, np.min),
}
