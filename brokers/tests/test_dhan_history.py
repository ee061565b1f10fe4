"""Dhan historical candles through the real `dhanhq` SDK against the Dhan simulator: intraday (1-minute) and daily
charts, Dhan's span limit and errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import requests

from algoterm.sandbox.simulators.dhan import DhanSimulator
from algoterm.sandbox.simulators.kite import synthetic_candle
from brokers.adapters.dhan import DhanAdapter, chart_instrument, parse_candles
from brokers.protocol import (
    AdapterConfig,
    BrokerRateLimited,
    BrokerSession,
    BrokerUnavailable,
    HistoricalCandle,
    InvalidInput,
    SessionExpired,
)
from brokers.tests.conftest import serving
from marketdata.instruments import instruments_load_demo
from marketdata.models import Candle, Instrument

IST = ZoneInfo("Asia/Kolkata")
CLIENT_ID = "1100000001"
TOKEN = "dhan-access-token-7f3a9c1e5b"
RELAXED_LIMITS = {"orders": [(1000, 1.0)], "quotes": [(1000, 1.0)], "data": [(1000, 1.0)]}
NOW = datetime(2025, 3, 4, 11, 59, 30, tzinfo=IST)  # a Tuesday, mid-session
TUESDAY = datetime(2025, 3, 4, tzinfo=IST)
MONDAY = datetime(2025, 3, 3, tzinfo=IST)  # a trading day
WEEK = datetime(2025, 2, 17, tzinfo=IST)  # Monday of a week without holidays

sdk_test = pytest.mark.django_db(transaction=True)


def at(day: datetime, hour: int, minute: int) -> datetime:
    return day.replace(hour=hour, minute=minute)


def make_adapter(server) -> DhanAdapter:
    return DhanAdapter(
        credentials={"client_id": CLIENT_ID},
        session=BrokerSession(access_token=TOKEN, broker_user_id=CLIENT_ID),
        config=AdapterConfig(base_url=f"{server.url}/v2", timeout=5.0),
        account_ref="acc_dhan_test",
    )


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(NOW, tick=True)
    return NOW


@pytest.fixture
def simulator(clock):
    app = DhanSimulator(rate_limits=RELAXED_LIMITS)
    app.register_client(CLIENT_ID, TOKEN)
    with serving(app) as server:
        yield app, server


@pytest.fixture
def adapter(simulator):
    return make_adapter(simulator[1])


def expected_minute(symbol: str, opening: datetime) -> HistoricalCandle:
    """What the shared synthetic price path says the minute opening at `opening` was."""
    _, open_, high, low, close, volume = synthetic_candle(symbol, opening=opening, seconds=60, interval="minute")
    return HistoricalCandle(
        start=opening,
        open=Decimal(str(open_)).quantize(Decimal("0.01")),
        high=Decimal(str(high)).quantize(Decimal("0.01")),
        low=Decimal(str(low)).quantize(Decimal("0.01")),
        close=Decimal(str(close)).quantize(Decimal("0.01")),
        volume=volume,
    )


def test_dhans_span_limits_are_what_the_importer_chunks_by():
    assert DhanAdapter.historical_max_span_days == {"1m": 90, "1d": 3650}
    assert DhanAdapter.renews_sessions is True


@pytest.mark.parametrize(
    ("symbol", "instrument"),
    [
        ("NSE:INFY", "EQUITY"),
        ("BSE:RELIANCE", "EQUITY"),
        ("NSE:NIFTY 50", "INDEX"),
        ("NFO:NIFTY26MARFUT", "FUTIDX"),
        ("NFO:BANKNIFTY2632452000CE", "OPTIDX"),
        ("NFO:NIFTYNXT5026MARFUT", "FUTIDX"),
        ("NFO:RELIANCE26MAR1300PE", "OPTSTK"),
        ("NFO:INFY26MARFUT", "FUTSTK"),
        ("BFO:SENSEX26MAR80000CE", "OPTIDX"),
        ("MCX:GOLD26APRFUT", "FUTCOM"),
        ("CDS:USDINR26MARFUT", "FUTCUR"),
    ],
)
def test_chart_instruments(symbol, instrument):
    assert chart_instrument(symbol) == instrument


# --- minute candles ----------------------------------------------------------------------------------------------


@sdk_test
def test_minute_candles_are_the_markets_minutes_in_the_range(adapter):
    start, end = at(MONDAY, 9, 15), at(MONDAY, 9, 25)
    candles = adapter.historical_candles(symbol="NSE:INFY", interval="1m", start=start, end=end)
    assert [candle.start for candle in candles] == [start + timedelta(minutes=m) for m in range(10)]
    assert candles == [expected_minute("NSE:INFY", candle.start) for candle in candles]
    first = candles[0]
    assert first.start.tzinfo is not None and isinstance(first.open, Decimal)
    assert first.low <= min(first.open, first.close) <= max(first.open, first.close) <= first.high
    assert first.oi is None and first.volume > 0


@sdk_test
def test_minute_candles_across_days_skip_nights_weekends_and_holidays(adapter):
    # Friday 28 Feb 15:20 to Monday 3 Mar 09:20 (a weekend between); Mahashivratri (26 Feb) was a holiday.
    friday = datetime(2025, 2, 28, tzinfo=IST)
    candles = adapter.historical_candles(
        symbol="NSE:TCS", interval="1m", start=at(friday, 15, 20), end=at(MONDAY, 9, 20)
    )
    starts = [candle.start for candle in candles]
    assert starts == [at(friday, 15, 20 + m) for m in range(10)] + [at(MONDAY, 9, 15 + m) for m in range(5)]
    holiday = datetime(2025, 2, 26, tzinfo=IST)
    assert adapter.historical_candles(symbol="NSE:TCS", interval="1m", start=holiday, end=holiday + timedelta(1)) == []


@sdk_test
def test_a_range_without_candles_is_empty(adapter):
    saturday = datetime(2025, 3, 1, tzinfo=IST)
    assert adapter.historical_candles(symbol="NSE:INFY", interval="1m", start=saturday, end=MONDAY) == []
    assert adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=saturday, end=MONDAY) == []
    assert adapter.historical_candles(symbol="NSE:INFY", interval="1m", start=MONDAY, end=MONDAY) == []


@sdk_test
def test_no_candles_from_the_future(adapter, clock):
    candles = adapter.historical_candles(
        symbol="NSE:INFY", interval="1m", start=at(TUESDAY, 9, 15), end=at(TUESDAY, 15, 30)
    )
    assert len(candles) == 165  # 09:15 to 11:59, the minute now in progress
    assert candles[-1].start == at(TUESDAY, 11, 59)


@sdk_test
def test_minute_candles_come_from_the_candle_table_when_it_has_them(adapter):
    opening = at(MONDAY, 10, 0)
    Candle.objects.create(
        symbol="NSE:ITC",
        interval="1m",
        start=opening,
        open=Decimal("410.05"),
        high=Decimal("411.00"),
        low=Decimal("409.50"),
        close=Decimal("410.75"),
        volume=12345,
    )
    [candle] = adapter.historical_candles(
        symbol="NSE:ITC", interval="1m", start=at(MONDAY, 9, 58), end=at(MONDAY, 11, 0)
    )
    assert candle == HistoricalCandle(
        start=opening,
        open=Decimal("410.05"),
        high=Decimal("411.00"),
        low=Decimal("409.50"),
        close=Decimal("410.75"),
        volume=12345,
    )


@sdk_test
def test_index_candles(adapter):
    candles = adapter.historical_candles(
        symbol="NSE:NIFTY 50", interval="1m", start=at(MONDAY, 9, 15), end=at(MONDAY, 9, 17)
    )
    assert [candle.start for candle in candles] == [at(MONDAY, 9, 15), at(MONDAY, 9, 16)]
    assert candles[0].close > 10000


@sdk_test
def test_contract_candles_ask_for_open_interest(adapter):
    instruments_load_demo(today=MONDAY.date(), strikes_each_side=1)
    future = Instrument.objects.filter(underlying="NIFTY", instrument_type="FUT").order_by("expiry").first()
    candles = adapter.historical_candles(
        symbol=future.symbol, interval="1m", start=at(MONDAY, 9, 15), end=at(MONDAY, 9, 18)
    )
    assert len(candles) == 3 and all(candle.oi is None for candle in candles)  # the simulator has no OI


# --- daily candles -----------------------------------------------------------------------------------------------


@sdk_test
def test_daily_candles_start_at_midnight_ist(adapter):
    candles = adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=WEEK, end=WEEK + timedelta(7))
    assert [candle.start for candle in candles] == [WEEK + timedelta(days) for days in range(5)]
    assert [candle.start.tzinfo for candle in candles] == [IST] * 5
    # The day's volume is its minutes' total; its range covers each minute's.
    minutes = adapter.historical_candles(symbol="NSE:INFY", interval="1m", start=WEEK, end=WEEK + timedelta(1))
    assert len(minutes) == 375
    monday = candles[0]
    assert monday.volume == sum(minute.volume for minute in minutes)
    assert monday.low <= min(minute.low for minute in minutes) + Decimal("0.05")
    assert monday.high >= max(minute.high for minute in minutes) - Decimal("0.05")
    assert monday.open == minutes[0].open


@sdk_test
def test_todays_daily_candle_is_there_from_midnight(adapter):
    candles = adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=MONDAY, end=MONDAY + timedelta(7))
    assert [candle.start for candle in candles] == [MONDAY, TUESDAY]


@sdk_test
def test_a_daily_range_ending_mid_day_includes_that_day(adapter):
    candles = adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=MONDAY, end=at(MONDAY, 10, 0))
    assert [candle.start for candle in candles] == [MONDAY]
    candles = adapter.historical_candles(
        symbol="NSE:INFY", interval="1d", start=at(MONDAY, 10, 0), end=MONDAY + timedelta(2)
    )
    assert [candle.start for candle in candles] == [MONDAY + timedelta(1)]  # Monday's candle started before 10:00


@sdk_test
def test_daily_candles_come_from_the_candle_table_when_it_has_them(adapter):
    Candle.objects.create(
        symbol="NSE:SBIN",
        interval="1d",
        start=MONDAY,
        open=Decimal("700"),
        high=Decimal("720"),
        low=Decimal("690"),
        close=Decimal("715.5"),
        volume=9_000_000,
    )
    [candle] = adapter.historical_candles(symbol="NSE:SBIN", interval="1d", start=MONDAY, end=MONDAY + timedelta(1))
    assert (candle.start, candle.close, candle.volume) == (MONDAY, Decimal("715.50"), 9_000_000)


@sdk_test
def test_a_year_of_daily_candles_is_one_request(adapter, simulator):
    candles = adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=MONDAY - timedelta(365), end=MONDAY)
    assert 240 < len(candles) < 260  # the trading days of a year
    assert simulator[0].requests_served == 1


# --- refusals and failures ---------------------------------------------------------------------------------------


@sdk_test
def test_a_minute_range_longer_than_90_days_is_refused(adapter, simulator):
    with pytest.raises(InvalidInput, match="at most 90 days") as raised:
        adapter.historical_candles(symbol="NSE:INFY", interval="1m", start=MONDAY - timedelta(91), end=MONDAY)
    assert "DH-905" in raised.value.detail
    # Exactly 90 days is allowed (asked at 60-minute candles to keep the answer small).
    _, server = simulator
    body = {
        "securityId": "1594",
        "exchangeSegment": "NSE_EQ",
        "instrument": "EQUITY",
        "interval": 60,
        "fromDate": (MONDAY - timedelta(90)).strftime("%Y-%m-%d %H:%M:%S"),
        "toDate": MONDAY.strftime("%Y-%m-%d %H:%M:%S"),
    }
    headers = {"access-token": TOKEN, "client-id": CLIENT_ID}
    response = requests.post(f"{server.url}/v2/charts/intraday", json=body, headers=headers, timeout=10)
    assert response.status_code == 200
    answer = response.json()
    assert len(answer["timestamp"]) == len(answer["close"]) > 300
    assert datetime.fromtimestamp(answer["timestamp"][0], tz=IST).time().strftime("%H:%M") == "09:15"


@sdk_test
def test_a_bad_security_id_gets_dhans_error(adapter, simulator):
    _, server = simulator
    body = {
        "securityId": "999999",
        "exchangeSegment": "NSE_EQ",
        "instrument": "EQUITY",
        "expiryCode": 0,
        "fromDate": "2025-03-03",
        "toDate": "2025-03-04",
    }
    headers = {"access-token": TOKEN, "client-id": CLIENT_ID}
    response = requests.post(f"{server.url}/v2/charts/historical", json=body, headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.json() == {
        "errorType": "Input_Exception",
        "errorCode": "DH-905",
        "errorMessage": "Missing required fields, bad values for parameters etc.",
    }
    sdk = adapter._sdk()
    with pytest.raises(InvalidInput, match="bad values for parameters"):
        adapter._call(
            "historical candles",
            lambda: sdk.historical_daily_data("999999", "NSE_EQ", "EQUITY", "2025-03-03", "2025-03-04"),
        )
    with pytest.raises(InvalidInput, match="bad values for parameters"):  # the right id as the wrong instrument
        adapter._call(
            "historical candles",
            lambda: sdk.historical_daily_data("1594", "NSE_EQ", "INDEX", "2025-03-03", "2025-03-04"),
        )


@sdk_test
def test_what_we_cannot_ask_dhan_for(adapter, simulator):
    with pytest.raises(InvalidInput, match="instrument table"):
        adapter.historical_candles(symbol="NSE:NOSUCHCO", interval="1m", start=MONDAY, end=NOW)
    with pytest.raises(InvalidInput, match="1m, 1d"):
        adapter.historical_candles(symbol="NSE:INFY", interval="5m", start=MONDAY, end=NOW)
    assert simulator[0].requests_served == 0


@sdk_test
def test_an_expired_session_needs_a_login(adapter, simulator):
    simulator[0].expire_sessions()
    with pytest.raises(SessionExpired):
        adapter.historical_candles(symbol="NSE:INFY", interval="1d", start=MONDAY, end=NOW)


@sdk_test
def test_server_errors_and_garbage_are_unavailable(adapter, simulator):
    app, _ = simulator
    for fault in ("error", "garbage"):
        app.inject_fault(fault)
        with pytest.raises(BrokerUnavailable):
            adapter.historical_candles(symbol="NSE:INFY", interval="1m", start=MONDAY, end=NOW)


@sdk_test
def test_charts_are_rate_limited_like_dhans_other_data(clock):
    app = DhanSimulator()  # Dhan's own limits: 5 data requests a second
    app.register_client(CLIENT_ID, TOKEN)
    with serving(app) as server:
        adapter = make_adapter(server)
        with pytest.raises(BrokerRateLimited) as raised:
            for _ in range(8):
                adapter.historical_candles(
                    symbol="NSE:INFY", interval="1m", start=at(MONDAY, 9, 15), end=at(MONDAY, 9, 16)
                )
        assert "DH-904" in raised.value.detail


def test_dhans_parallel_arrays_are_read_oldest_first_as_instants():
    """Dhan's epoch seconds are instants (the same moment in any zone); arrays of different lengths are garbage."""
    stamp = int(at(MONDAY, 9, 15).timestamp())
    data = {"open": [1], "high": [2], "low": [0.5], "close": [1.5], "volume": [10], "timestamp": [stamp + 60, stamp]}
    with pytest.raises(ValueError, match="differ in length"):
        parse_candles(data, start=MONDAY, end=NOW)
    data = {key: values * 2 for key, values in data.items() if key != "timestamp"} | {"timestamp": [stamp + 60, stamp]}
    candles = parse_candles(data, start=MONDAY, end=NOW)
    assert [candle.start.astimezone(UTC) for candle in candles] == [
        datetime(2025, 3, 3, 3, 45, tzinfo=UTC),
        datetime(2025, 3, 3, 3, 46, tzinfo=UTC),
    ]
