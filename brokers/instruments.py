"""A minimal instrument table for the brokers layer until the market-data instrument master lands: canonical
symbols with the ids each broker uses for them (Kite instrument_token, Dhan securityId)."""

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


def by_symbol(symbol: str) -> BrokerInstrument | None:
    return _BY_SYMBOL.get(symbol)


def by_dhan_security_id(exchange: str, security_id: str) -> BrokerInstrument | None:
    return _BY_DHAN_ID.get((exchange, str(security_id)))


def by_kite_token(token: int) -> BrokerInstrument | None:
    return _BY_KITE_TOKEN.get(int(token))
