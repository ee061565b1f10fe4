"""Test data for strategies: a small NIFTY derivatives universe around a trading day, and strategy bodies as the
app sends them."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from marketdata import calendar
from marketdata.instruments import monthly_expiries, weekly_expiries
from marketdata.models import Instrument, InstrumentType
from orders.tests.factories import instrument_create

SPOT_SYMBOL = "NSE:NIFTY 50"
STRIKE_STEP = Decimal(50)


def trading_day_from(day: date) -> date:
    return day if calendar.is_trading_day(day) else calendar.next_trading_day(day)


def option_symbol(expiry: date, strike: Decimal, option_type: str) -> str:
    return f"NFO:NIFTY{expiry:%y%m%d}{int(strike)}{option_type}"


def nifty_universe(*, day: date, spot: Decimal = Decimal(24510), each_side: int = 6) -> dict[str, list[date]]:
    """The NIFTY index, two weeklies and two monthlies of CE/PE strikes around `spot`, and monthly futures."""
    instrument_create(SPOT_SYMBOL, instrument_type=InstrumentType.INDEX)
    weeklies = weekly_expiries(exchange="NFO", today=day, count=2)
    monthlies = monthly_expiries(exchange="NFO", today=day, count=2)
    atm = (spot / STRIKE_STEP).quantize(Decimal(1)) * STRIKE_STEP
    for expiry in sorted(set(weeklies) | set(monthlies)):
        for offset in range(-each_side, each_side + 1):
            strike = atm + offset * STRIKE_STEP
            for option_type in ("CE", "PE"):
                instrument = instrument_create(
                    option_symbol(expiry, strike, option_type),
                    instrument_type=option_type,
                    lot_size=75,
                    expiry=expiry,
                )
                Instrument.objects.filter(pk=instrument.pk).update(underlying="NIFTY", strike=strike)
    for expiry in monthlies:
        future = instrument_create(
            f"NFO:NIFTY{expiry:%y%b}FUT".upper(), instrument_type=InstrumentType.FUT, lot_size=75, expiry=expiry
        )
        Instrument.objects.filter(pk=future.pk).update(underlying="NIFTY")
    return {"weekly": weeklies, "monthly": monthlies}


def straddle_body(account, **fields) -> dict:
    """A short ATM straddle on the current week's NIFTY expiry, 09:20 to 15:15 IST, a 25% stop-loss per leg."""
    body = {
        "name": "Short straddle",
        "kind": "time_based",
        "entry_time": "09:20",
        "exit_time": "15:15",
        "weekdays": [0, 1, 2, 3, 4],
        "accounts": [{"account_id": account.pk, "multiplier": 1}],
        "legs": [
            {
                "underlying": "NIFTY",
                "instrument": "OPT",
                "option_type": option_type,
                "side": "SELL",
                "lots": 1,
                "expiry": "current_week",
                "strike": "atm",
                "stop_loss_unit": "percent",
                "stop_loss": "25",
            }
            for option_type in ("CE", "PE")
        ],
    }
    body.update(fields)
    return body
