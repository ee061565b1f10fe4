"""Canonical symbols with the ids each broker uses for them (Kite instrument_token, Dhan securityId).

A small static table of well-known instruments whose ids never change answers first (it needs no database, and
Kite's dump carries no Dhan ids); everything else comes from the market-data instrument master
(`marketdata.models.Instrument`, filled by `manage.py load_instruments`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BrokerInstrument:
    symbol: str  # EXCHANGE:TRADINGSYMBOL
    kite_token: int
    dhan_security_id: str
    lot_size: int = 1


DEMO_INSTRUMENTS = [
    BrokerInstrument("NSE:RELIANCE", 738561, "2885"),
    BrokerInstrument("NSE:INFY", 408065, "1594"),
    BrokerInstrument("NSE:TCS", 2953217, "11536"),
    BrokerInstrument("NSE:HDFCBANK", 341249, "1333"),
    BrokerInstrument("NSE:ICICIBANK", 1270529, "4963"),
    BrokerInstrument("NSE:SBIN", 779521, "3045"),
    BrokerInstrument("NSE:ITC", 424961, "1660"),
    BrokerInstrument("NSE:TATAMOTORS", 884737, "3456"),
    BrokerInstrument("BSE:RELIANCE", 128083204, "500325"),
    BrokerInstrument("NSE:NIFTY 50", 256265, "13"),
]

_BY_SYMBOL = {instrument.symbol: instrument for instrument in DEMO_INSTRUMENTS}
_BY_DHAN_ID = {
    (instrument.symbol.split(":")[0], instrument.dhan_security_id): instrument for instrument in DEMO_INSTRUMENTS
}
_BY_KITE_TOKEN = {instrument.kite_token: instrument for instrument in DEMO_INSTRUMENTS}


def static_by_symbol(symbol: str) -> BrokerInstrument | None:
    """The static table alone (for the instrument loader, which must not read the table it is writing)."""
    return _BY_SYMBOL.get(symbol)


def _from_master(instrument) -> BrokerInstrument | None:
    if instrument is None:
        return None
    return BrokerInstrument(
        symbol=instrument.symbol,
        kite_token=instrument.kite_token or 0,
        dhan_security_id=instrument.dhan_security_id,
        lot_size=instrument.lot_size or 1,
    )


def by_symbol(symbol: str) -> BrokerInstrument | None:
    from marketdata.instruments import instrument_get

    return _BY_SYMBOL.get(symbol) or _from_master(instrument_get(symbol=symbol))


def by_dhan_security_id(exchange: str, security_id: str) -> BrokerInstrument | None:
    from marketdata.instruments import instrument_get_by_dhan_security_id

    return _BY_DHAN_ID.get((exchange, str(security_id))) or _from_master(
        instrument_get_by_dhan_security_id(exchange=exchange, security_id=str(security_id))
    )


def by_kite_token(token: int) -> BrokerInstrument | None:
    from marketdata.instruments import instrument_get_by_kite_token

    return _BY_KITE_TOKEN.get(int(token)) or _from_master(instrument_get_by_kite_token(token=int(token)))
