"""The NSE market calendar: trading days, holidays and session times in Asia/Kolkata.

Holidays are data, per year. The 2026 list is NSE's annual trading-holiday circular for the equity and equity
derivatives segments (published December 2025), plus 15 January 2026, declared a trading holiday later for the
Maharashtra municipal elections. Exchanges add and move holidays during the year, so the list must be checked
against https://www.nseindia.com/resources/exchange-communication-holidays when a year starts and whenever NSE
issues a circular. Years without a list here know only weekends.

Operators may replace the holiday list and the session times at runtime (`algoterm.config` sections `holidays` and
`market_hours`); the constants here are the built-ins used until they do, or whenever the store cannot be read.

`MARKET_ALWAYS_OPEN` (a setting, off unless configured) lets the simulated market trade around the clock for demos;
real brokers always follow the calendar, so callers say which market they ask about (`simulated=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings

IST = ZoneInfo("Asia/Kolkata")

PRE_OPEN_START = time(9, 0)
PRE_OPEN_END = time(9, 8)  # order entry closes here; 09:08-09:15 is the order matching and buffer period
NORMAL_OPEN = time(9, 15)
NORMAL_CLOSE = time(15, 30)

# Holidays that fall on a weekend are left out: the market is closed then anyway.
NSE_TRADING_HOLIDAYS: dict[date, str] = {
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
}
HOLIDAY_YEARS: frozenset[int] = frozenset(day.year for day in NSE_TRADING_HOLIDAYS)

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
    from algoterm.config import HOLIDAYS, config_stored_or_builtin

    stored = config_stored_or_builtin(name=HOLIDAYS)
    if stored is None:
        return NSE_TRADING_HOLIDAYS
    return {date.fromisoformat(entry["date"]): entry["name"] for entry in stored["NSE"]}


def _session_times() -> tuple[time, time, time, time]:
    """Pre-open start and end, open, close."""
    from algoterm.config import MARKET_HOURS, PRE_OPEN_ENTRY, config_stored_or_builtin

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
