"""Test data for the order pipeline: instruments and connected paper accounts, made through the real services."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from brokers.models import BrokerAccount
from brokers.services import broker_account_connect
from marketdata.models import Instrument, InstrumentType

EQUITY = "NSE:INFY"
OPTION = "NFO:NIFTYTEST24500CE"


def instrument_create(
    symbol: str,
    *,
    instrument_type: str = InstrumentType.EQ,
    lot_size: int = 1,
    tick_size: str = "0.05",
    expiry: date | None = None,
    is_active: bool = True,
) -> Instrument:
    exchange, tradingsymbol = symbol.split(":", 1)
    instrument, _ = Instrument.objects.update_or_create(
        symbol=symbol,
        defaults={
            "exchange": exchange,
            "segment": exchange if instrument_type == InstrumentType.EQ else f"{exchange}-OPT",
            "tradingsymbol": tradingsymbol,
            "instrument_type": instrument_type,
            "lot_size": lot_size,
            "tick_size": Decimal(tick_size),
            "expiry": expiry,
            "is_active": is_active,
        },
    )
    return instrument


def standard_instruments() -> None:
    """An equity, a 75-lot weekly option, an index (quotable, not tradable) and an expired option."""
    instrument_create(EQUITY)
    instrument_create("NSE:SBIN")
    instrument_create(OPTION, instrument_type=InstrumentType.CE, lot_size=75, expiry=date.today() + timedelta(days=7))
    instrument_create("NSE:NIFTY 50", instrument_type=InstrumentType.INDEX)
    instrument_create(
        "NFO:NIFTYOLD24000CE", instrument_type=InstrumentType.CE, lot_size=75, expiry=date.today() - timedelta(days=3)
    )


def paper_account(user, *, opening_balance: str = "1000000", label: str = "Paper") -> BrokerAccount:
    return broker_account_connect(
        user=user, broker="paper", credentials={"opening_balance": opening_balance}, label=label
    ).account
