"""The strategies' clock: Indian time, and whether a strategy trades on a given day."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from marketdata import calendar

from ..models import Strategy

IST = ZoneInfo("Asia/Kolkata")


def _today_ist(now: datetime) -> date:
    return now.astimezone(IST).date()


def _runnable_today(strategy: Strategy, day: date) -> bool:
    if calendar.market_always_open():
        return True  # the demo's simulated market trades every day
    return day.weekday() in strategy.weekdays and calendar.is_trading_day(day)
