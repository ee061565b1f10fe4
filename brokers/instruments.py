"""Canonical symbols with the ids each broker uses for them (Kite instrument_token, Dhan securityId).

A small static table of well-known instruments whose ids never change answers first (it needs no database, and
Kite's dump carries no Dhan ids); everything else comes from the market-data instrument master (filled by
`manage.py load_instruments`). Market data stands above brokers, so it registers its lookups here
(`instrument_master_register`, from `MarketDataConfig.ready()`); a lookup the static table cannot answer while none
is registered is an error, never a silent "unknown instrument".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class KnownInstrument:
    symbol: str  # EXCHANGE:TRADINGSYMBOL
    kite_token: int
    dhan_security_id: str
    lot_size: int = 1


DEMO_INSTRUMENTS = [
    KnownInstrument("NSE:RELIANCE", 738561, "2885"),
    KnownInstrument("NSE:INFY", 408065, "1594"),
    KnownInstrument("NSE:TCS", 2953217, "11536"),
    KnownInstrument("NSE:HDFCBANK", 341249, "1333"),
    KnownInstrument("NSE:ICICIBANK", 1270529, "4963"),
    KnownInstrument("NSE:SBIN", 779521, "3045"),
    KnownInstrument("NSE:ITC", 424961, "1660"),
    KnownInstrument("NSE:TATAMOTORS", 884737, "3456"),
    KnownInstrument("BSE:RELIANCE", 128083204, "500325"),
    KnownInstrument("NSE:NIFTY 50", 256265, "13"),
]

_BY_SYMBOL = {instrument.symbol: instrument for instrument in DEMO_INSTRUMENTS}
_BY_DHAN_ID = {
    (instrument.symbol.split(":")[0], instrument.dhan_security_id): instrument for instrument in DEMO_INSTRUMENTS
}
_BY_KITE_TOKEN = {instrument.kite_token: instrument for instrument in DEMO_INSTRUMENTS}


def static_by_symbol(symbol: str) -> KnownInstrument | None:
    """The static table alone (for the instrument loader, which must not read the table it is writing)."""
    return _BY_SYMBOL.get(symbol)


class MasterInstrument(Protocol):
    """What brokers read of an instrument master row."""

    symbol: str
    kite_token: int | None
    dhan_security_id: str
    lot_size: int


@dataclass(frozen=True)
class InstrumentMaster:
    """The instrument master's lookups: by our symbol, by Kite instrument token, by (exchange, Dhan security id)."""

    by_symbol: Callable[[str], MasterInstrument | None]
    by_kite_token: Callable[[int], MasterInstrument | None]
    by_dhan_security_id: Callable[[str, str], MasterInstrument | None]


_master: InstrumentMaster | None = None


def instrument_master_register(master: InstrumentMaster) -> None:
    global _master
    _master = master


def _instrument_master() -> InstrumentMaster:
    if _master is None:
        raise ImproperlyConfigured("No instrument master is registered; market data registers its lookups when ready.")
    return _master


def _from_master(instrument: MasterInstrument | None) -> KnownInstrument | None:
    if instrument is None:
        return None
    return KnownInstrument(
        symbol=instrument.symbol,
        kite_token=instrument.kite_token or 0,
        dhan_security_id=instrument.dhan_security_id,
        lot_size=instrument.lot_size or 1,
    )


def by_symbol(symbol: str) -> KnownInstrument | None:
    return _BY_SYMBOL.get(symbol) or _from_master(_instrument_master().by_symbol(symbol))


def by_dhan_security_id(exchange: str, security_id: str) -> KnownInstrument | None:
    return _BY_DHAN_ID.get((exchange, str(security_id))) or _from_master(
        _instrument_master().by_dhan_security_id(exchange, str(security_id))
    )


def by_kite_token(token: int) -> KnownInstrument | None:
    return _BY_KITE_TOKEN.get(int(token)) or _from_master(_instrument_master().by_kite_token(int(token)))
