from datetime import UTC, date, datetime, time

import pytest

from marketdata import calendar
from marketdata.calendar import IST


def ist(year, month, day, hour=0, minute=0):
    return datetime(year, month, day, hour, minute, tzinfo=IST)


def test_weekends_and_holidays_are_closed():
    assert calendar.is_trading_day(date(2026, 11, 23))  # Monday
    assert not calendar.is_trading_day(date(2026, 11, 21))  # Saturday
    assert not calendar.is_trading_day(date(2026, 11, 22))  # Sunday
    assert not calendar.is_trading_day(date(2026, 11, 24))  # Guru Nanak Jayanti
    assert not calendar.is_trading_day(date(2026, 1, 26))
    assert calendar.holiday_name(date(2026, 12, 25)) == "Christmas"


def test_the_2026_list_has_only_weekdays():
    assert len(calendar.NSE_TRADING_HOLIDAYS) == 16
    assert all(day.weekday() < 5 and day.year == 2026 for day in calendar.NSE_TRADING_HOLIDAYS)


def test_next_and_previous_trading_day_skip_weekends_and_holidays():
    assert calendar.next_trading_day(date(2026, 11, 23)) == date(2026, 11, 25)  # over the Tuesday holiday
    assert calendar.next_trading_day(date(2026, 4, 2)) == date(2026, 4, 6)  # Good Friday, then the weekend
    assert calendar.previous_trading_day(date(2026, 4, 6)) == date(2026, 4, 2)
    assert calendar.previous_trading_day(date(2026, 1, 27)) == date(2026, 1, 23)  # Republic Day Monday
    assert calendar.trading_day_on_or_before(date(2026, 11, 24)) == date(2026, 11, 23)
    assert calendar.trading_day_on_or_before(date(2026, 11, 25)) == date(2026, 11, 25)


def test_session_bounds_are_aware_ist_times():
    bounds = calendar.session_bounds(date(2026, 11, 23))
    assert bounds.pre_open_start == ist(2026, 11, 23, 9, 0)
    assert bounds.pre_open_end == ist(2026, 11, 23, 9, 8)
    assert bounds.open == ist(2026, 11, 23, 9, 15)
    assert bounds.close == ist(2026, 11, 23, 15, 30)
    assert bounds.open.utcoffset().total_seconds() == 5.5 * 3600
    assert calendar.session_bounds(date(2026, 11, 24)) is None


@pytest.mark.parametrize(
    ("at", "open_"),
    [
        (ist(2026, 11, 23, 9, 14), False),
        (ist(2026, 11, 23, 9, 15), True),
        (ist(2026, 11, 23, 15, 29), True),
        (ist(2026, 11, 23, 15, 30), False),
        (ist(2026, 11, 24, 11, 0), False),  # holiday
        (ist(2026, 11, 21, 11, 0), False),  # Saturday
        (datetime(2026, 11, 23, 4, 0, tzinfo=UTC), True),  # 09:30 IST
        (datetime(2026, 11, 23, 3, 40, tzinfo=UTC), False),  # 09:10 IST
    ],
)
def test_is_open_follows_the_normal_session(at, open_):
    assert calendar.is_open(at) is open_


def test_pre_open_window():
    assert calendar.is_pre_open(ist(2026, 11, 23, 9, 0))
    assert calendar.is_pre_open(ist(2026, 11, 23, 9, 7))
    assert not calendar.is_pre_open(ist(2026, 11, 23, 9, 8))
    assert not calendar.is_open(ist(2026, 11, 23, 9, 5))


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError):
        calendar.is_open(datetime.combine(date(2026, 11, 23), time(10, 0)))


def test_market_always_open_applies_only_to_the_simulated_market(settings):
    saturday_night = ist(2026, 11, 21, 23, 0)
    settings.MARKET_ALWAYS_OPEN = True
    assert calendar.is_open(saturday_night, simulated=True)
    assert not calendar.is_open(saturday_night)
    settings.MARKET_ALWAYS_OPEN = False
    assert not calendar.is_open(saturday_night, simulated=True)


def test_next_open():
    assert calendar.next_open(ist(2026, 11, 23, 8, 0)) == ist(2026, 11, 23, 9, 15)
    assert calendar.next_open(ist(2026, 11, 23, 10, 0)) == ist(2026, 11, 23, 10, 0)
    assert calendar.next_open(ist(2026, 11, 23, 16, 0)) == ist(2026, 11, 25, 9, 15)
