"""The NSE market calendar: trading days, holidays and session times in Asia/Kolkata.

Holidays are data, per year, from NSE's annual trading-holiday circulars for the equity and equity derivatives
segments, plus the closures NSE declared later in the year (elections, public holidays declared under the
Negotiable Instruments Act). Holidays that fall on a weekend are left out: the market is closed then anyway.

- 2024: NSE's circular of December 2023, plus 22 January (public holiday declared in Maharashtra for the
  Ayodhya consecration; NSE traded on Saturday 20 January instead, a session this calendar does not model),
  20 May (Lok Sabha elections in Mumbai) and 20 November (Maharashtra Assembly elections).
- 2025: circular NSE/CMTR/65587 (13 December 2024).
- 2026: NSE's circular of December 2025, plus 15 January 2026 (Maharashtra municipal corporation elections).
- 2027: PROVISIONAL, built here before NSE's circular (due around mid-December 2026): the fixed-date national
  holidays that fall on weekdays, and festivals whose dates were worked out from the lunar calendar and checked
  against published almanacs. Holi (22 March), Ram Navami (15 April) and Diwali Laxmi Pujan (29 October) are
  firm; Id-ul-Fitr (10 March), Bakri Id (17 May) and Muharram (16 June) are estimates that depend on moon
  sighting (India's Islamic dates have fallen a day after Saudi Arabia's Umm al-Qura calendar in NSE's 2024-2026
  lists). Mahashivratri (6 March), Maharashtra Day, Ganesh Chaturthi (4 September), Gandhi Jayanti, Dussehra
  (9 October), Diwali Balipratipada (30 October), Guru Nanak Jayanti (14 November), Independence Day and Christmas
  fall on weekends. Mahavir Jayanti is left out: Mumbai almanacs give Sunday 18 April, others Monday 19 April.
  Replace the whole 2027 list with NSE's circular when it is out (the `holidays` configuration section does it at
  runtime; then update this module and drop 2027 from PROVISIONAL_HOLIDAY_YEARS).

Exchanges add and move holidays during the year, so the lists must be checked against
https://www.nseindia.com/resources/exchange-communication-holidays when a year starts and whenever NSE issues a
circular. A year without a list here or in the configuration knows only weekends: from 1 December the health
check warns that next year's list is missing (and the daily `algoterm.tasks.check_holiday_lists` alerts the
admins once per missing year); a missing list for the current year warns at once.

Operators may replace the holiday list and the session times at runtime (`algoterm.config` sections `holidays` and
`market_hours`, defined in `marketdata.config_sections`); the constants here are the built-ins used until they do,
or whenever the store cannot be read.
A stored `holidays` section replaces the built-in list year by year: a year with at least one stored holiday uses
the stored list, any other year the built-in one, so a deploy that adds a year still applies after an operator
has edited an earlier one.

`MARKET_ALWAYS_OPEN` (a setting, off unless configured) lets the simulated market trade around the clock for demos;
real brokers always follow the calendar, so callers say which market they ask about (`simulated=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

from algoterm.config import HOLIDAYS, MARKET_HOURS, config_stored_or_builtin

IST = ZoneInfo("Asia/Kolkata")

PRE_OPEN_START = time(9, 0)
PRE_OPEN_END = time(9, 8)  # order entry closes here; 09:08-09:15 is the order matching and buffer period
PRE_OPEN_ENTRY = timedelta(minutes=8)  # NSE's pre-open order entry window, from the pre-open start
NORMAL_OPEN = time(9, 15)
NORMAL_CLOSE = time(15, 30)

NSE_TRADING_HOLIDAYS: dict[date, str] = {
    date(2024, 1, 22): "Public holiday in Maharashtra (Ayodhya consecration)",
    date(2024, 1, 26): "Republic Day",
    date(2024, 3, 8): "Mahashivratri",
    date(2024, 3, 25): "Holi",
    date(2024, 3, 29): "Good Friday",
    date(2024, 4, 11): "Id-Ul-Fitr (Ramadan Eid)",
    date(2024, 4, 17): "Shri Ram Navami",
    date(2024, 5, 1): "Maharashtra Day",
    date(2024, 5, 20): "Lok Sabha elections in Mumbai",
    date(2024, 6, 17): "Bakri Id",
    date(2024, 7, 17): "Muharram",
    date(2024, 8, 15): "Independence Day",
    date(2024, 10, 2): "Mahatma Gandhi Jayanti",
    date(2024, 11, 1): "Diwali Laxmi Pujan",
    date(2024, 11, 15): "Prakash Gurpurb Sri Guru Nanak Dev",
    date(2024, 11, 20): "Maharashtra Assembly elections",
    date(2024, 12, 25): "Christmas",
    date(2025, 2, 26): "Mahashivratri",
    date(2025, 3, 14): "Holi",
    date(2025, 3, 31): "Id-Ul-Fitr (Ramadan Eid)",
    date(2025, 4, 10): "Shri Mahavir Jayanti",
    date(2025, 4, 14): "Dr. Baba Saheb Ambedkar Jayanti",
    date(2025, 4, 18): "Good Friday",
    date(2025, 5, 1): "Maharashtra Day",
    date(2025, 8, 15): "Independence Day",
    date(2025, 8, 27): "Ganesh Chaturthi",
    date(2025, 10, 2): "Mahatma Gandhi Jayanti / Dussehra",
    date(2025, 10, 21): "Diwali Laxmi Pujan",
    date(2025, 10, 22): "Diwali Balipratipada",
    date(2025, 11, 5): "Prakash Gurpurb Sri Guru Nanak Dev",
    date(2025, 12, 25): "Christmas",
    date(2026, 1, 15): "Municipal Corporation elections in Maharashtra",
    date(2026, 1, 26): "Republic Day",
    date(2026, 3, 3): "Holi",
    date(2026, 3, 26): "Shri Ram Navami",
    date(2026, 3, 31): "Shri Mahavir Jayanti",
    date(2026, 4, 3): "Good Friday",
    date(2026, 4, 14): "Dr. Baba Saheb Ambedkar Jayanti",
    date(2026, 5, 1): "Maharashtra Day",
    date(2026, 5, 28): "Bakri Id",
    date(2026, 6, 26): "Muharram",
    date(2026, 9, 14): "Ganesh Chaturthi",
    date(2026, 10, 2): "Mahatma Gandhi Jayanti",
    date(2026, 10, 20): "Dussehra",
    date(2026, 11, 10): "Diwali Balipratipada",
    date(2026, 11, 24): "Prakash Gurpurb Sri Guru Nanak Dev",
    date(2026, 12, 25): "Christmas",
    # 2027 is provisional until NSE's circular (see the module docstring for how each date was found).
    date(2027, 1, 26): "Republic Day",
    date(2027, 3, 10): "Id-Ul-Fitr (Ramadan Eid)",  # estimate: moon sighting
    date(2027, 3, 22): "Holi",
    date(2027, 3, 26): "Good Friday",
    date(2027, 4, 14): "Dr. Baba Saheb Ambedkar Jayanti",
    date(2027, 4, 15): "Shri Ram Navami",
    date(2027, 5, 17): "Bakri Id",  # estimate: moon sighting
    date(2027, 6, 16): "Muharram",  # estimate: moon sighting
    date(2027, 10, 29): "Diwali Laxmi Pujan",
}
HOLIDAY_YEARS: frozenset[int] = frozenset(day.year for day in NSE_TRADING_HOLIDAYS)
# Built-in years that are an estimate, not NSE's circular: shown by the health check until replaced.
PROVISIONAL_HOLIDAY_YEARS: frozenset[int] = frozenset({2027})
# NSE publishes next year's list around mid-December; from this day of the year its absence is worth a warning.
NEXT_YEAR_HOLIDAYS_EXPECTED_FROM = (12, 1)  # (month, day)

# Enough to cross any real run of closed days; a longer one means the data is wrong.
MAX_CLOSED_RUN = 31


@dataclass(frozen=True)
class SessionBounds:
    """One trading day's sessions as aware datetimes in Asia/Kolkata."""

    day: date
    pre_open_start: datetime
    pre_open_end: datetime
    open: datetime
    close: datetime


def market_always_open() -> bool:
    return bool(getattr(settings, "MARKET_ALWAYS_OPEN", False))


def _holidays() -> dict[date, str]:
    """The built-in holidays with every year the operator stored replaced by the stored list of that year."""
    stored = config_stored_or_builtin(name=HOLIDAYS)
    if stored is None:
        return NSE_TRADING_HOLIDAYS
    configured = {date.fromisoformat(entry["date"]): entry["name"] for entry in stored["NSE"]}
    configured_years = {day.year for day in configured}
    # A year the operator never stored keeps its built-in list: a section saved before a deploy added next year's
    # list must not hide that list.
    built_in = {day: name for day, name in NSE_TRADING_HOLIDAYS.items() if day.year not in configured_years}
    return built_in | configured


def holiday_years() -> frozenset[int]:
    """The years the calendar has a holiday list for, built in or configured."""
    return frozenset(day.year for day in _holidays())


def holiday_years_missing(*, today: date) -> list[int]:
    """The years that should have a holiday list by `today` and have none: the current year always, and from
    NEXT_YEAR_HOLIDAYS_EXPECTED_FROM on the next one too. Without a list the calendar treats every weekday as a
    trading day."""
    month, day = NEXT_YEAR_HOLIDAYS_EXPECTED_FROM
    wanted = [today.year]
    if today >= date(today.year, month, day):
        wanted.append(today.year + 1)
    known = holiday_years()
    return [year for year in wanted if year not in known]


def _session_times() -> tuple[time, time, time, time]:
    """Pre-open start and end, open, close."""
    stored = config_stored_or_builtin(name=MARKET_HOURS)
    if stored is None:
        return PRE_OPEN_START, PRE_OPEN_END, NORMAL_OPEN, NORMAL_CLOSE
    pre_open = time.fromisoformat(stored["pre_open"])
    pre_open_end = (datetime.combine(date.min, pre_open) + PRE_OPEN_ENTRY).time()
    return pre_open, pre_open_end, time.fromisoformat(stored["open"]), time.fromisoformat(stored["close"])


def holiday_name(day: date) -> str | None:
    return _holidays().get(day)


def is_trading_day(day: date) -> bool:
    return day.weekday() < 5 and day not in _holidays()


def next_trading_day(day: date) -> date:
    """The first trading day strictly after `day`."""
    return _step_to_trading_day(day, step=1)


def previous_trading_day(day: date) -> date:
    """The last trading day strictly before `day`."""
    return _step_to_trading_day(day, step=-1)


def trading_day_on_or_before(day: date) -> date:
    """`day` if the market trades then, else the trading day before it (how exchanges move an expiry off a
    holiday)."""
    return day if is_trading_day(day) else previous_trading_day(day)


def trading_days_back(day: date, *, sessions: int) -> date:
    """The first of the `sessions` trading days that end just before `day` (`day` itself never counts): where a
    history of that many whole sessions starts."""
    if sessions < 1:
        return day
    holidays = _holidays()  # read once: this walks many days
    candidate, counted, closed_run = day, 0, 0
    while counted < sessions:
        candidate -= timedelta(days=1)
        if candidate.weekday() < 5 and candidate not in holidays:
            counted, closed_run = counted + 1, 0
        else:
            closed_run += 1
            if closed_run >= MAX_CLOSED_RUN:
                raise ValueError(f"No trading day within {MAX_CLOSED_RUN} days before {candidate}; check the holidays.")
    return candidate


def session_minutes() -> int:
    """The length of a normal session in minutes (375 unless the session times are configured otherwise)."""
    _, _, opens, closes = _session_times()
    return (datetime.combine(date.min, closes) - datetime.combine(date.min, opens)) // timedelta(minutes=1)


def _step_to_trading_day(day: date, *, step: int) -> date:
    candidate = day
    for _ in range(MAX_CLOSED_RUN):
        candidate += timedelta(days=step)
        if is_trading_day(candidate):
            return candidate
    raise ValueError(f"No trading day within {MAX_CLOSED_RUN} days of {day}; check the holiday list.")


def session_bounds(day: date) -> SessionBounds | None:
    """The day's pre-open and normal session, or None when the market is closed that day."""
    if not is_trading_day(day):
        return None

    def at(moment: time) -> datetime:
        return datetime.combine(day, moment, tzinfo=IST)

    pre_open_start, pre_open_end, opens, closes = _session_times()
    return SessionBounds(
        day=day,
        pre_open_start=at(pre_open_start),
        pre_open_end=at(pre_open_end),
        open=at(opens),
        close=at(closes),
    )


def _local(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("Market hours need an aware datetime.")
    return at.astimezone(IST)


def is_open(at: datetime, *, simulated: bool = False) -> bool:
    """Whether the normal session (09:15 to 15:30 IST unless configured, close exclusive) is on at `at`. With
    `simulated=True` the simulated market also answers True whenever MARKET_ALWAYS_OPEN is set."""
    local = _local(at)
    if simulated and market_always_open():
        return True
    bounds = session_bounds(local.date())
    return bounds is not None and bounds.open <= local < bounds.close


def is_pre_open(at: datetime) -> bool:
    """Whether the pre-open order entry window (09:00 to 09:08 IST unless configured) is on at `at`."""
    local = _local(at)
    bounds = session_bounds(local.date())
    return bounds is not None and bounds.pre_open_start <= local < bounds.pre_open_end


def next_open(at: datetime) -> datetime:
    """When the normal session next opens at or after `at` (`at` itself when a session is on)."""
    local = _local(at)
    bounds = session_bounds(local.date())
    if bounds is not None and local < bounds.close:
        return max(local, bounds.open)
    following = session_bounds(next_trading_day(local.date()))
    assert following is not None
    return following.open
