"""Derivative expiry dates by the exchanges' rules, and the tradingsymbols Kite gives the contracts."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from marketdata import calendar

# --- expiries -----------------------------------------------------------------------------------------------------

TUESDAY, THURSDAY = 1, 3
# Since September 2025 (SEBI's one-weekly-expiry-per-exchange rule, in force through 2026): every NSE derivative
# expires on Tuesday (NIFTY weekly; all monthlies on the month's last Tuesday), every BSE one on Thursday (SENSEX
# weekly; monthlies on the last Thursday). An expiry on a holiday moves to the trading day before.
EXPIRY_WEEKDAY = {"NFO": TUESDAY, "BFO": THURSDAY}


def _last_weekday(year: int, month: int, weekday: int) -> date:
    following = date(year + month // 12, month % 12 + 1, 1)
    last = following - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def monthly_expiry(*, exchange: str, year: int, month: int) -> date:
    """The month's expiry on `exchange` (NFO or BFO), moved before a holiday."""
    return calendar.trading_day_on_or_before(_last_weekday(year, month, EXPIRY_WEEKDAY[exchange]))


def monthly_expiries(*, exchange: str, today: date, count: int) -> list[date]:
    """The next `count` monthly expiries on or after `today` (the current month first)."""
    expiries: list[date] = []
    year, month = today.year, today.month
    while len(expiries) < count:
        expiry = monthly_expiry(exchange=exchange, year=year, month=month)
        if expiry >= today:
            expiries.append(expiry)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return expiries


def weekly_expiries(*, exchange: str, today: date, count: int) -> list[date]:
    """The next `count` weekly expiries on or after `today`, holidays moved (one may be the monthly)."""
    weekday = EXPIRY_WEEKDAY[exchange]
    scheduled = today + timedelta(days=(weekday - today.weekday()) % 7)
    expiries: list[date] = []
    while len(expiries) < count:
        expiry = calendar.trading_day_on_or_before(scheduled)
        if expiry >= today:
            expiries.append(expiry)
        scheduled += timedelta(days=7)
    return expiries


# --- Kite tradingsymbols ------------------------------------------------------------------------------------------

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# Kite's weekly contracts spell the month as one character: 1-9 for January to September, then O, N, D.
_WEEKLY_MONTHS = "123456789OND"


def _strike_text(strike: Decimal) -> str:
    return format(strike.normalize(), "f")


def kite_future_tradingsymbol(*, underlying: str, expiry: date) -> str:
    """NIFTY26DECFUT."""
    return f"{underlying}{expiry:%y}{_MONTHS[expiry.month - 1]}FUT"


def kite_option_tradingsymbol(
    *, underlying: str, expiry: date, strike: Decimal, option_type: str, monthly: bool
) -> str:
    """Monthly NIFTY26DEC24000CE; weekly NIFTY26D0824000CE (YY, month character, DD), as Kite lists them."""
    if monthly:
        when = f"{expiry:%y}{_MONTHS[expiry.month - 1]}"
    else:
        when = f"{expiry:%y}{_WEEKLY_MONTHS[expiry.month - 1]}{expiry:%d}"
    return f"{underlying}{when}{_strike_text(strike)}{option_type}"
