from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

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


def test_the_built_in_lists_have_only_weekdays_for_2024_to_2027():
    per_year = Counter(day.year for day in calendar.NSE_TRADING_HOLIDAYS)
    assert per_year == {2024: 17, 2025: 14, 2026: 16, 2027: 9}
    assert all(day.weekday() < 5 for day in calendar.NSE_TRADING_HOLIDAYS)
    assert calendar.HOLIDAY_YEARS == {2024, 2025, 2026, 2027}


def test_republic_day_2027_is_closed():
    assert not calendar.is_trading_day(date(2027, 1, 26))  # a Tuesday
    assert calendar.holiday_name(date(2027, 1, 26)) == "Republic Day"
    assert calendar.next_trading_day(date(2027, 1, 25)) == date(2027, 1, 27)
    assert calendar.is_open(ist(2027, 1, 26, 11, 0)) is False


def test_2027_is_provisional_and_says_so():
    assert calendar.PROVISIONAL_HOLIDAY_YEARS == {2027}
    assert "2027: PROVISIONAL" in calendar.__doc__
    # Its fixed-date holidays on weekdays, and the festivals that are firm.
    for day in (date(2027, 3, 22), date(2027, 3, 26), date(2027, 4, 14), date(2027, 4, 15), date(2027, 10, 29)):
        assert not calendar.is_trading_day(day), day


def test_past_years_are_known():
    # 2025: NSE's circular of December 2024, Diwali Laxmi Pujan and Balipratipada on consecutive days.
    assert calendar.holiday_name(date(2025, 3, 14)) == "Holi"
    assert calendar.holiday_name(date(2025, 10, 21)) == "Diwali Laxmi Pujan"
    assert calendar.previous_trading_day(date(2025, 10, 23)) == date(2025, 10, 20)
    assert calendar.next_trading_day(date(2025, 4, 17)) == date(2025, 4, 21)  # Good Friday, then the weekend
    assert calendar.is_trading_day(date(2025, 1, 27))
    # 2024: the circular plus the closures declared during the year.
    for day in (date(2024, 1, 22), date(2024, 5, 20), date(2024, 11, 20), date(2024, 11, 1)):
        assert not calendar.is_trading_day(day), day


def test_sessions_are_counted_back_over_weekends_and_holidays():
    # Before Thursday 16 April 2026: Wednesday 15, (Ambedkar Jayanti 14), Monday 13, Friday 10, Thursday 9.
    assert calendar.trading_days_back(date(2026, 4, 16), sessions=4) == date(2026, 4, 9)
    assert calendar.trading_days_back(date(2026, 4, 16), sessions=0) == date(2026, 4, 16)
    assert calendar.session_minutes() == 375


def test_which_years_lack_a_list_depends_on_the_date_asked_about():
    assert calendar.holiday_years_missing(today=date(2026, 12, 5)) == []  # 2027 is built in
    assert calendar.holiday_years_missing(today=date(2027, 11, 30)) == []  # next year's list is not due yet
    assert calendar.holiday_years_missing(today=date(2027, 12, 1)) == [2028]
    assert calendar.holiday_years_missing(today=date(2028, 3, 1)) == [2028]  # the current year, whatever the date
    assert calendar.holiday_years_missing(today=date(2028, 12, 24)) == [2028, 2029]


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


# --- configured lists, the health warning and the admins' alert -----------------------------------------------------

DECEMBER_2027 = datetime(2027, 12, 5, 9, 0, tzinfo=IST)  # a clock on which next year's (2028) list is due


def store_holidays(entries: list[tuple[date, str]]) -> None:
    from algoterm import config

    config.config_put(
        actor=None,
        name=config.HOLIDAYS,
        data={"NSE": [{"date": day.isoformat(), "name": name} for day, name in entries]},
    )


@pytest.mark.django_db
def test_a_configured_year_replaces_that_years_list_and_leaves_the_other_years_built_in():
    # An operator's section that was saved with only 2026 in it (an extra closure, Christmas removed).
    list_2026 = [(day, name) for day, name in calendar.NSE_TRADING_HOLIDAYS.items() if day.year == 2026]
    assert list_2026[-1] == (date(2026, 12, 25), "Christmas")
    store_holidays([*list_2026[:-1], (date(2026, 12, 28), "Exchange outage")])

    assert calendar.is_trading_day(date(2026, 12, 25))  # the stored 2026 list rules 2026
    assert not calendar.is_trading_day(date(2026, 12, 28))
    assert not calendar.is_trading_day(date(2027, 1, 26))  # 2027, never stored, keeps its built-in list
    assert not calendar.is_trading_day(date(2025, 10, 21))


@pytest.mark.django_db
def test_a_missing_next_year_list_warns_in_health_and_alerts_each_admin_once(admin_user):
    from accounts.models import AuditEvent, Notification
    from accounts.tests.factories import AdminFactory, UserFactory
    from algoterm.health import check_holidays, platform_health
    from algoterm.tasks import check_holiday_lists

    other_admin, trader = AdminFactory(), UserFactory()

    warning = check_holidays(today=DECEMBER_2027.date())
    assert (warning.status, warning.required) == ("down", False)  # a warning: health stays 200 on required parts
    assert warning.info["missing"] == [2028] and "2028" in warning.detail
    assert platform_health()["holidays"].required is False

    first = check_holiday_lists.apply(kwargs={"now": DECEMBER_2027.isoformat()}).get()
    second = check_holiday_lists.apply(kwargs={"now": (DECEMBER_2027 + timedelta(days=1)).isoformat()}).get()

    assert (first, second) == ([2028], [])
    alerts = Notification.objects.filter(kind="system.holidays_missing")
    assert sorted(alerts.values_list("user_id", flat=True)) == sorted([admin_user.pk, other_admin.pk])
    assert not alerts.filter(user=trader).exists()
    assert all(alert.level == "warning" and alert.data == {"year": 2028} for alert in alerts)
    [event] = AuditEvent.objects.filter(action="system.holidays_missing")
    assert (event.kind, event.target_id) == ("system", "2028")


@pytest.mark.django_db
def test_no_warning_and_no_alert_once_the_operator_adds_next_years_list(admin_user):
    from accounts.models import Notification
    from algoterm.console.system import holiday_lists_alert
    from algoterm.health import check_holidays

    store_holidays([*calendar.NSE_TRADING_HOLIDAYS.items(), (date(2028, 1, 26), "Republic Day")])

    assert check_holidays(today=DECEMBER_2027.date()).status == "up"
    assert holiday_lists_alert(now=DECEMBER_2027) == []
    assert not Notification.objects.filter(kind="system.holidays_missing").exists()


@pytest.mark.django_db
def test_before_december_next_years_missing_list_is_no_warning(admin_user):
    from algoterm.console.system import holiday_lists_alert
    from algoterm.health import check_holidays

    november = datetime(2027, 11, 30, 9, 0, tzinfo=IST)

    health = check_holidays(today=november.date())
    assert health.status == "up" and health.info["provisional"] == [2027]
    assert holiday_lists_alert(now=november) == []


@pytest.mark.django_db
def test_a_run_that_finds_another_one_alerting_leaves_it_to_that_run(admin_user):
    from django.core.cache import cache

    from accounts.models import Notification
    from algoterm.console.system import holiday_lists_alert

    cache.add("system:holidays_alert:2028", "2027-12-05", timeout=60)  # a concurrent delivery is at work

    assert holiday_lists_alert(now=DECEMBER_2027) == []
    assert not Notification.objects.filter(kind="system.holidays_missing").exists()
