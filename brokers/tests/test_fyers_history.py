"""Fyers historical candles through the SDK's `history` against the Fyers simulator: our intervals, [start, end)
bounds, Fyers' per-request range limits, and the failures."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.fyers import FyersSimulator
from brokers.adapters.fyers import FyersAdapter
from brokers.protocol import (
    BrokerRateLimited,
    BrokerUnavailable,
    HistoricalCandle,
    InvalidInput,
    SessionExpired,
)
from marketdata.calendar import is_trading_day

from .conftest import serving
from .test_fyers import APP_ID, REDIRECT_URI, SECRET, logged_in

pytestmark = pytest.mark.django_db(transaction=True)

IST = ZoneInfo("Asia/Kolkata")
DAY = date(2025, 6, 3)  # a Tuesday


def ist(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=IST)


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    app = FyersSimulator()
    app.register_app(APP_ID, SECRET, redirect_uri=REDIRECT_URI)
    with serving(app) as running:
        yield running


@pytest.fixture
def adapter(server) -> FyersAdapter:
    return logged_in(server)


def test_the_importer_chunks_by_fyers_limits():
    assert FyersAdapter.historical_max_span_days == {"1m": 100, "1d": 366}


def test_minute_candles_cover_start_to_end_exclusive(adapter):
    assert is_trading_day(DAY)
    candles = adapter.historical_candles(symbol="NSE:SBIN", interval="1m", start=ist(DAY, 9, 15), end=ist(DAY, 9, 20))
    assert [candle.start for candle in candles] == [ist(DAY, 9, 15 + minute) for minute in range(5)]
    for candle in candles:
        assert isinstance(candle, HistoricalCandle)
        assert candle.start.utcoffset() == timedelta(hours=5, minutes=30)
        assert all(isinstance(price, Decimal) for price in (candle.open, candle.high, candle.low, candle.close))
        assert candle.low <= min(candle.open, candle.close) <= max(candle.open, candle.close) <= candle.high
        assert candle.volume > 0
    # Deterministic: the same range gives the same candles, and a range in UTC the same ones.
    again = adapter.historical_candles(
        symbol="NSE:SBIN",
        interval="1m",
        start=ist(DAY, 9, 15).astimezone(ZoneInfo("UTC")),
        end=ist(DAY, 9, 20).astimezone(ZoneInfo("UTC")),
    )
    assert again == candles


def test_daily_candles_start_at_midnight_ist_on_trading_days(adapter):
    start, end = date(2025, 6, 2), date(2025, 6, 16)
    candles = adapter.historical_candles(symbol="NSE:NIFTY 50", interval="1d", start=ist(start), end=ist(end))
    trading_days = [
        start + timedelta(days=n) for n in range((end - start).days) if is_trading_day(start + timedelta(days=n))
    ]
    assert [candle.start for candle in candles] == [ist(day) for day in trading_days]
    assert len(candles) >= 9
    minutes = adapter.historical_candles(
        symbol="NSE:NIFTY 50", interval="1m", start=ist(start, 9, 15), end=ist(start, 15, 30)
    )
    assert len(minutes) == 375
    assert candles[0].open == minutes[0].open  # a day opens with its first minute
    assert candles[0].volume == sum(minute.volume for minute in minutes)


def test_a_full_span_of_daily_candles_in_one_request(adapter):
    start = ist(date(2024, 6, 1))
    candles = adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=start, end=start + timedelta(days=366))
    assert 230 <= len(candles) <= 260
    assert candles == sorted(candles, key=lambda candle: candle.start)


def test_a_range_without_trading_is_empty(adapter):
    sunday = date(2025, 6, 8)
    assert adapter.historical_candles(symbol="NSE:SBIN", interval="1m", start=ist(sunday), end=ist(sunday, 23)) == []
    assert adapter.historical_candles(symbol="NSE:SBIN", interval="1d", start=ist(sunday), end=ist(sunday, 23)) == []
    assert adapter.historical_candles(symbol="NSE:SBIN", interval="1m", start=ist(DAY, 10), end=ist(DAY, 10)) == []


def test_ranges_beyond_fyers_limits_are_refused(adapter):
    start = ist(date(2025, 1, 1))
    with pytest.raises(InvalidInput, match="at most 100 days"):
        adapter.historical_candles(symbol="NSE:SBIN", interval="1m", start=start, end=start + timedelta(days=101))
    with pytest.raises(InvalidInput, match="at most 366 days"):
        adapter.historical_candles(symbol="NSE:SBIN", interval="1d", start=start, end=start + timedelta(days=368))


def test_unknown_symbols_and_intervals_are_invalid_input(adapter):
    with pytest.raises(InvalidInput, match="Invalid symbol"):
        adapter.historical_candles(symbol="NSE:NOSUCHSTOCK", interval="1d", start=ist(DAY), end=ist(DAY, 23))
    with pytest.raises(InvalidInput, match="not '5m'"):
        adapter.historical_candles(symbol="NSE:SBIN", interval="5m", start=ist(DAY), end=ist(DAY, 23))
    with pytest.raises(InvalidInput, match="timezone-aware"):
        adapter.historical_candles(
            symbol="NSE:SBIN", interval="1d", start=datetime(2025, 6, 3), end=datetime(2025, 6, 4)
        )


def test_failures(server, adapter):
    one_minute = {"symbol": "NSE:SBIN", "interval": "1m", "start": ist(DAY, 9, 15), "end": ist(DAY, 9, 16)}
    server.app.inject_fault("error", status=500)
    with pytest.raises(BrokerUnavailable, match="HTTP 500"):
        adapter.historical_candles(**one_minute)
    server.app.inject_fault("garbage")
    with pytest.raises(BrokerUnavailable, match="unreadable"):
        adapter.historical_candles(**one_minute)
    with pytest.raises(BrokerRateLimited):  # Fyers' 10 requests a second per app and user
        for _ in range(12):
            adapter.historical_candles(**one_minute)
    server.app.expire_sessions()
    with pytest.raises(SessionExpired):
        adapter.historical_candles(**one_minute)
