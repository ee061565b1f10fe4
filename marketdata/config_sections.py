"""The runtime configuration sections market data owns: NSE's session times (`market_hours`), the trading holidays
(`holidays`) and the market feed `serve` runs (`feed`). Each is registered with the store (`algoterm.config`) from
`MarketDataConfig.ready()`; the calendar and `serve` read them back from there."""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings

from algoterm.config import (
    FEED,
    HOLIDAYS,
    MARKET_HOURS,
    Errors,
    Section,
    clock_parse,
    error_add,
    keys_check,
    section_register,
)
from marketdata import calendar as market_calendar
from marketdata.feeds.runner import BROKER_SOURCE, FEED_SOURCES

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MAX_HOLIDAYS = 500
_MAX_HOLIDAY_NAME = 120
_HOLIDAY_YEARS = (2000, 2100)
_MAX_FEED_INTERVAL = 60.0


# --- market_hours -------------------------------------------------------------------------------------------------


def _market_hours_default() -> dict:
    return {
        "open": f"{market_calendar.NORMAL_OPEN:%H:%M}",
        "close": f"{market_calendar.NORMAL_CLOSE:%H:%M}",
        "pre_open": f"{market_calendar.PRE_OPEN_START:%H:%M}",
    }


def _market_hours_validate(data: Any) -> Errors:
    errors: Errors = {}
    if not keys_check(data, known=("open", "close", "pre_open"), errors=errors):
        return errors
    clocks = {}
    for key in ("open", "close", "pre_open"):
        if key in data:
            clocks[key] = clock_parse(data[key])
            if clocks[key] is None:
                error_add(errors, key, "Must be a time as HH:MM (24-hour, IST).")
    opens, closes, pre_open = clocks.get("open"), clocks.get("close"), clocks.get("pre_open")
    if opens is not None and closes is not None and closes <= opens:
        error_add(errors, "close", "Must be after open.")
    if (
        opens is not None
        and pre_open is not None
        and datetime.combine(date.min, pre_open) + market_calendar.PRE_OPEN_ENTRY > datetime.combine(date.min, opens)
    ):
        error_add(errors, "pre_open", "Must be at least 8 minutes before open (the pre-open order entry window).")
    return errors


# --- holidays -----------------------------------------------------------------------------------------------------


def _holidays_default() -> dict:
    return {
        "NSE": [
            {"date": day.isoformat(), "name": name}
            for day, name in sorted(market_calendar.NSE_TRADING_HOLIDAYS.items())
        ]
    }


def _holidays_validate(data: Any) -> Errors:
    errors: Errors = {}
    if not keys_check(data, known=("NSE",), errors=errors):
        return errors
    entries = data.get("NSE")
    if "NSE" not in data:
        return errors
    if not isinstance(entries, list):
        error_add(errors, "NSE", "Must be a list of {date, name}.")
        return errors
    if len(entries) > _MAX_HOLIDAYS:
        error_add(errors, "NSE", f"At most {_MAX_HOLIDAYS} holidays.")
        return errors
    seen: dict[date, int] = {}
    for index, entry in enumerate(entries):
        prefix = f"NSE.{index}."
        if not keys_check(entry, known=("date", "name"), errors=errors, prefix=prefix):
            continue
        raw, name = entry.get("date"), entry.get("name")
        day = None
        if "date" in entry:
            try:
                day = date.fromisoformat(raw) if isinstance(raw, str) and _DAY.match(raw) else None
            except ValueError:
                day = None
            if day is None:
                error_add(errors, f"{prefix}date", "Must be a valid date as YYYY-MM-DD.")
            elif not _HOLIDAY_YEARS[0] <= day.year <= _HOLIDAY_YEARS[1]:
                error_add(
                    errors, f"{prefix}date", f"Must fall in the years {_HOLIDAY_YEARS[0]} to {_HOLIDAY_YEARS[1]}."
                )
            elif day.weekday() >= 5:
                error_add(errors, f"{prefix}date", f"{raw} is a {day:%A}; the market is closed then anyway.")
            elif day in seen:
                error_add(errors, f"{prefix}date", f"{raw} is listed twice (also NSE.{seen[day]}).")
            else:
                seen[day] = index
        if "name" in entry and (not isinstance(name, str) or not name.strip() or len(name) > _MAX_HOLIDAY_NAME):
            error_add(errors, f"{prefix}name", f"Must be a non-empty name of at most {_MAX_HOLIDAY_NAME} characters.")
    if not errors:
        run = _longest_closed_run(set(seen))
        if run >= market_calendar.MAX_CLOSED_RUN:
            error_add(
                errors,
                "NSE",
                f"Closes the market {run} days in a row; the calendar allows fewer than "
                f"{market_calendar.MAX_CLOSED_RUN}.",
            )
    return errors


def _longest_closed_run(holidays: set[date]) -> int:
    """The most consecutive days (weekends included) the market would be closed around any holiday."""

    def closed(day: date) -> bool:
        return day.weekday() >= 5 or day in holidays

    longest, one = 0, timedelta(days=1)
    for day in holidays:
        start, end = day, day
        while closed(start - one) and day - start < timedelta(days=market_calendar.MAX_CLOSED_RUN):
            start -= one
        while closed(end + one) and end - day < timedelta(days=market_calendar.MAX_CLOSED_RUN):
            end += one
        longest = max(longest, (end - start).days + 1)
    return longest


def _holidays_changes(before: dict, after: dict) -> dict:
    """A holiday change as the dates added, removed and renamed, for the audit log."""
    old = {entry["date"]: entry["name"] for entry in before.get("NSE", [])}
    new = {entry["date"]: entry["name"] for entry in after.get("NSE", [])}
    summary = {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "renamed": sorted(day for day in set(old) & set(new) if old[day] != new[day]),
    }
    return {key: value for key, value in summary.items() if value}


# --- feed ---------------------------------------------------------------------------------------------------------


def _feed_default() -> dict:
    return {"source": settings.MARKET_FEED, "interval_seconds": float(settings.MARKET_FEED_INTERVAL_SECONDS)}


def feed_sources() -> list[str]:
    """ "" runs none; "broker" the designated market-data accounts (with failover); a feed's own name runs it
    ("kite", "dhan", "fyers": the designated accounts of that broker only)."""
    return ["", BROKER_SOURCE, *sorted(FEED_SOURCES)]


def _feed_validate(data: Any) -> Errors:
    errors: Errors = {}
    if not keys_check(data, known=("source", "interval_seconds"), errors=errors):
        return errors
    sources = feed_sources()
    if "source" in data and data["source"] not in sources:
        error_add(errors, "source", f"Must be one of {', '.join(repr(source) for source in sources)} ('' runs none).")
    interval = data.get("interval_seconds")
    if "interval_seconds" in data and not (
        isinstance(interval, (int, float))
        and not isinstance(interval, bool)
        and math.isfinite(interval)
        and 0 < interval <= _MAX_FEED_INTERVAL
    ):
        error_add(errors, "interval_seconds", f"Must be a number of seconds above 0, at most {_MAX_FEED_INTERVAL:g}.")
    return errors


def config_sections_register() -> None:
    section_register(
        Section(
            MARKET_HOURS,
            'NSE session times, IST: {"open": "09:15", "close": "15:30", "pre_open": "09:00"}; pre-open order '
            "entry lasts 8 minutes from pre_open.",
            _market_hours_default,
            _market_hours_validate,
        )
    )
    section_register(
        Section(
            HOLIDAYS,
            'Trading holidays: {"NSE": [{"date": "YYYY-MM-DD", "name": "..."}]}, weekdays only, each date once; '
            "each year listed replaces that year's built-in list, other years keep theirs.",
            _holidays_default,
            _holidays_validate,
            _holidays_changes,
        )
    )
    section_register(
        Section(
            FEED,
            'The market feed `serve` runs: {"source": "broker"|"simulated"|"kite"|"dhan"|"fyers"|"", '
            '"interval_seconds": 1.0}. "broker": the accounts designated as market-data sources in the admin, the '
            "first with a live session feeding, the next taking over when it expires; a broker's feed name: only "
            "that broker's designated accounts; the interval paces the simulated feed.",
            _feed_default,
            _feed_validate,
        )
    )
