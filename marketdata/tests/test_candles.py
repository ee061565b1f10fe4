"""1-minute candles from ticks, intervals derived in the database, CSV import."""

import io
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command

from algoterm.api.errors import ValidationFailed
from brokers.protocol import Quote
from marketdata.candles import CandleBar, MinuteCandleBuilder, candles_get, candles_import_csv, candles_upsert
from marketdata.models import Candle

pytestmark = pytest.mark.django_db

IST = ZoneInfo("Asia/Kolkata")
DAY_START = datetime(2026, 3, 2, tzinfo=IST)


def at(hour: int, minute: int, second: int = 0, day: datetime = DAY_START) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second)


def tick(symbol: str, price: str, moment: datetime, volume: int, oi: int = 0) -> Quote:
    return Quote(symbol=symbol, last_price=Decimal(price), volume=volume, timestamp=moment, oi=oi)


def test_ticks_fold_into_minute_candles_stored_when_the_minute_closes():
    builder = MinuteCandleBuilder()
    assert builder.ticks_add([tick("NSE:INFY", "1890.00", at(9, 15, 1), 10_000)]) == 0
    builder.ticks_add([tick("NSE:INFY", "1892.50", at(9, 15, 20), 10_400), tick("NSE:TCS", "4150", at(9, 15, 21), 5)])
    builder.ticks_add([tick("NSE:INFY", "1888.10", at(9, 15, 40), 10_500)])
    builder.ticks_add([tick("NSE:INFY", "1889.00", at(9, 15, 59), 10_550)])
    assert not Candle.objects.exists()

    stored = builder.ticks_add([tick("NSE:INFY", "1891.00", at(9, 16, 2), 10_600)])

    assert stored == 2  # INFY's 09:15 and, as the clock moved on, TCS's too
    infy = Candle.objects.get(symbol="NSE:INFY")
    assert (infy.interval, infy.start) == ("1m", at(9, 15))
    assert (infy.open, infy.high, infy.low, infy.close) == (
        Decimal("1890.00"),
        Decimal("1892.50"),
        Decimal("1888.10"),
        Decimal("1889.00"),
    )
    assert infy.volume == 550  # growth of the day volume after the first tick seen
    assert builder.open_candle("NSE:INFY").open == Decimal("1891.00")


def test_quiet_symbols_close_on_the_timer_and_a_volume_drop_is_a_new_session():
    builder = MinuteCandleBuilder()
    builder.ticks_add([tick("NFO:X", "100", at(15, 29, 10), 900, oi=750)])
    builder.ticks_add([tick("NFO:X", "101", at(15, 29, 50), 1000, oi=825)])
    assert builder.minutes_close(now=at(15, 29, 59)) == 0
    assert builder.minutes_close(now=at(15, 30, 1)) == 1
    candle = Candle.objects.get(symbol="NFO:X")
    assert candle.volume == 100 and candle.oi == 825

    next_day = DAY_START + timedelta(days=1)
    builder.ticks_add([tick("NFO:X", "99", at(9, 15, 3, day=next_day), 75)])
    assert builder.open_candle("NFO:X").volume == 75


def test_restoring_a_minute_overwrites_it_and_flush_stores_open_minutes():
    builder = MinuteCandleBuilder()
    builder.ticks_add([tick("NSE:SBIN", "820", at(10, 0, 5), 1)])
    assert builder.flush() == 1 and builder.open_candle("NSE:SBIN") is not None
    builder.ticks_add([tick("NSE:SBIN", "825", at(10, 0, 30), 3)])
    builder.flush()
    candle = Candle.objects.get(symbol="NSE:SBIN")
    assert candle.high == Decimal("825") and candle.volume == 2


def minute_candles(symbol: str, start: datetime, count: int) -> list[CandleBar]:
    """Minute i opens at 100+i, goes 2 up and 1 down, closes at 100.5+i, trades 10+i."""
    return [
        CandleBar(
            symbol,
            "1m",
            start + timedelta(minutes=i),
            Decimal(100 + i),
            Decimal(102 + i),
            Decimal(99 + i),
            Decimal("100.5") + i,
            10 + i,
            1000 + i,
        )
        for i in range(count)
    ]


def test_intervals_are_grouped_in_ist_from_the_0915_open():
    candles_upsert(candles=minute_candles("NSE:INFY", at(9, 15), 75))  # 09:15 to 10:29
    start, end = DAY_START, DAY_START + timedelta(days=1)

    five = candles_get(symbol="NSE:INFY", interval="5m", start=start, end=end)
    assert len(five) == 15
    assert five[0] == CandleBar(
        "NSE:INFY", "5m", at(9, 15), Decimal(100), Decimal(106), Decimal(99), Decimal("104.5"), 60, 1004
    )
    assert five[-1].start == at(10, 25)

    hourly = candles_get(symbol="NSE:INFY", interval="1h", start=start, end=end)
    assert [candle.start for candle in hourly] == [at(9, 15), at(10, 15)]
    assert (
        hourly[1].open == Decimal(160)
        and hourly[1].close == Decimal("174.5")
        and hourly[1].volume == sum(range(70, 85))
    )

    minutes = candles_get(symbol="NSE:INFY", interval="1m", start=at(9, 20), end=at(9, 23))
    assert [candle.start for candle in minutes] == [at(9, 20), at(9, 21), at(9, 22)]


def test_buckets_before_the_open_align_backwards_and_other_symbols_stay_out():
    candles_upsert(candles=minute_candles("NSE:TCS", at(9, 13), 4))  # 09:13 to 09:16
    candles_upsert(candles=minute_candles("NSE:SBIN", at(9, 13), 4))
    three = candles_get(symbol="NSE:TCS", interval="3m", start=DAY_START, end=DAY_START + timedelta(days=1))
    assert [(candle.start, candle.volume) for candle in three] == [(at(9, 12), 10 + 11), (at(9, 15), 12 + 13)]


def test_daily_candles_group_ist_days_and_stored_days_win():
    candles_upsert(candles=minute_candles("NSE:INFY", at(9, 15), 10))
    tomorrow = DAY_START + timedelta(days=1)
    candles_upsert(candles=minute_candles("NSE:INFY", at(9, 15, day=tomorrow), 5))
    stored = CandleBar("NSE:INFY", "1d", tomorrow, Decimal(1), Decimal(2), Decimal(1), Decimal(2), 7, None)
    candles_upsert(candles=[stored])

    daily = candles_get(symbol="NSE:INFY", interval="1d", start=DAY_START, end=DAY_START + timedelta(days=3))

    assert daily[0] == CandleBar(
        "NSE:INFY", "1d", DAY_START, Decimal(100), Decimal(111), Decimal(99), Decimal("109.5"), sum(range(10, 20)), 1009
    )
    assert daily[1] == stored and len(daily) == 2


CSV = """symbol,timestamp,open,high,low,close,volume,oi
NSE:INFY,2026-03-02T09:15:00+05:30,1890,1895.5,1889,1894,1200,
NSE:INFY,2026-03-02 09:16:00,1894,1896,1893.25,1895,800,
NFO:NIFTY26MARFUT,2026-03-02T03:45:00Z,24400,24410,24390,24405,7500,1500000
"""


def test_csv_import_is_idempotent():
    first = candles_import_csv(lines=io.StringIO(CSV))
    again = candles_import_csv(lines=io.StringIO(CSV.replace("1895,800", "1895.5,900")))

    assert (first.rows, first.created, first.updated) == (3, 3, 0)
    assert (again.rows, again.created, again.updated) == (3, 0, 3)
    assert Candle.objects.count() == 3
    second_minute = Candle.objects.get(symbol="NSE:INFY", start=at(9, 16))
    assert second_minute.close == Decimal("1895.5") and second_minute.volume == 900 and second_minute.oi is None
    assert Candle.objects.get(symbol="NFO:NIFTY26MARFUT").start == at(9, 15)


@pytest.mark.parametrize(
    "row, message",
    [
        ("NSE:INFY,2026-03-02T09:17:00,1890,1880,1889,1885,10,", "high must be"),
        ("INFY,2026-03-02T09:17:00,1890,1895,1889,1890,10,", "Symbols look like"),
        ("NSE:INFY,yesterday,1890,1895,1889,1890,10,", "ISO 8601"),
        ("NSE:INFY,2026-03-02T09:17:30,1890,1895,1889,1890,10,", "whole minute"),
        ("NSE:INFY,2026-03-02T09:17:00,abc,1895,1889,1890,10,", "not a number"),
        ("NSE:INFY,2026-03-02T09:17:00,1890,1895,1889,1890,-5,", "whole number"),
        ("NSE:INFY,2026-03-02T09:17:00,1890,1895,1889,1890,1.5,", "whole number"),
        ("NSE:INFY,2026-03-02T09:17:00,1890", "Wrong number"),
    ],
)
def test_an_invalid_row_refuses_the_whole_file(row, message):
    with pytest.raises(ValidationFailed) as raised:
        candles_import_csv(lines=io.StringIO(CSV + row + "\n"))

    assert list(raised.value.errors) == ["line 5"]
    assert message in raised.value.errors["line 5"][0]
    assert not Candle.objects.exists()


def test_a_header_without_the_columns_is_refused():
    with pytest.raises(ValidationFailed) as raised:
        candles_import_csv(lines=io.StringIO("symbol,time,open,high,low,close\n"))
    assert set(raised.value.errors) == {"header"}


def test_daily_import_stores_at_ist_midnight():
    candles_import_csv(
        lines=io.StringIO("symbol,timestamp,open,high,low,close,volume\nNSE:SBIN,2026-03-02,1,2,1,2,5\n"), interval="1d"
    )
    assert Candle.objects.get(symbol="NSE:SBIN", interval="1d").start == DAY_START


def test_import_candles_command(tmp_path):
    path = tmp_path / "candles.csv"
    path.write_text(CSV)
    out = io.StringIO()
    call_command("import_candles", str(path), verbosity=0, stdout=out)
    call_command("import_candles", str(path), verbosity=0, stdout=out)

    assert "3 rows, 3 new, 0 updated" in out.getvalue() and "3 rows, 0 new, 3 updated" in out.getvalue()
    path.write_text(CSV + "NSE:INFY,nope,1,1,1,1,1,\n")
    with pytest.raises(CommandError, match="line 5"):
        call_command("import_candles", str(path), verbosity=0)
    assert Candle.objects.count() == 3


def test_a_late_tick_never_rewrites_a_stored_minute():
    from datetime import UTC, datetime
    from decimal import Decimal

    from brokers.protocol import Quote
    from marketdata.candles import MinuteCandleBuilder

    stored = []
    builder = MinuteCandleBuilder(persist=lambda *, candles, **_: stored.extend(candles) or len(candles))

    def tick(minute: int, second: int, price: str, volume: int) -> Quote:
        at = datetime(2026, 11, 23, 4, minute, second, tzinfo=UTC)
        return Quote(symbol="NSE:INFY", last_price=Decimal(price), volume=volume, timestamp=at)

    builder.ticks_add([tick(0, 1, "100", 10), tick(0, 30, "110", 20)])
    builder.ticks_add([tick(1, 5, "111", 25)])  # closes 04:00
    builder.ticks_add([tick(0, 59, "105", 30)])  # late: stamped in the closed minute
    builder.ticks_add([tick(2, 0, "112", 31)])  # closes 04:01

    first, second = stored
    assert (first.open, first.high, first.low, first.close) == (
        Decimal("100"),
        Decimal("110"),
        Decimal("100"),
        Decimal("110"),
    )
    assert second.start.minute == 1 and second.volume == 5 + 5  # the late tick's trades land in the open minute
