"""How each broker spells our symbols, without its SDK: pure functions any floor above brokers may use (the
instrument master's loader, the feeds) and the adapters build on.

Fyers: `NSE:SBIN` <-> `NSE:SBIN-EQ`, indices `NSE:NIFTY50-INDEX`, derivatives on the cash exchange's prefix
(`NSE:NIFTY25JUN24000CE`), BSE cash symbols carry their group (`BSE:RELIANCE-A`).
"""

from __future__ import annotations

import re

from brokers.protocol import InvalidInput, split_symbol

INDEX_TO_FYERS: dict[str, str] = {
    "NSE:NIFTY 50": "NSE:NIFTY50-INDEX",
    "NSE:NIFTY BANK": "NSE:NIFTYBANK-INDEX",
    "NSE:NIFTY FIN SERVICE": "NSE:FINNIFTY-INDEX",
    "NSE:NIFTY MID SELECT": "NSE:MIDCPNIFTY-INDEX",
    "NSE:INDIA VIX": "NSE:INDIAVIX-INDEX",
    "BSE:SENSEX": "BSE:SENSEX-INDEX",
    "BSE:BANKEX": "BSE:BANKEX-INDEX",
}
INDEX_FROM_FYERS: dict[str, str] = {fyers: ours for ours, fyers in INDEX_TO_FYERS.items()}

DERIVATIVE_EXCHANGE_TO_FYERS: dict[str, str] = {"NFO": "NSE", "BFO": "BSE", "CDS": "NSE", "MCX": "MCX"}
NSE_EQUITY_SERIES = "EQ"
NSE_OTHER_SERIES = frozenset({"BE", "BZ", "BL", "SM", "ST", "GB", "GS", "IV", "RR", "MF", "TB", "SG", "E1", "N1"})
BSE_DEFAULT_GROUP = "A"
BSE_GROUPS = frozenset({"A", "B", "T", "X", "XT", "Z", "ZP", "M", "MT", "MS", "P", "R", "W", "E", "F", "G", "IF"})
# BSE cash symbols whose group is not A (until the instrument master carries Fyers symbols).
BSE_GROUP: dict[str, str] = {}
CURRENCY_UNDERLYINGS = ("USDINR", "EURINR", "GBPINR", "JPYINR", "EURUSD", "GBPUSD", "USDJPY")
# Futures (NIFTY25JUNFUT) and options, monthly (NIFTY25JUN24000CE) or weekly (NIFTY2561224000CE).
_DERIVATIVE = re.compile(r"\d{2}(?:[A-Z]{3}|[1-9OND]\d{2})(?:FUT|\d+(?:\.\d+)?(?:CE|PE))$")


def to_fyers_symbol(symbol: str) -> str:
    """Canonical `NSE:SBIN` -> Fyers `NSE:SBIN-EQ` (see the module docstring for every exchange)."""
    exchange, tradingsymbol = split_symbol(symbol)
    if symbol in INDEX_TO_FYERS:
        return INDEX_TO_FYERS[symbol]
    if exchange == "NSE":
        _, dash, series = tradingsymbol.rpartition("-")
        has_series = dash and series in NSE_OTHER_SERIES
        return f"NSE:{tradingsymbol}" if has_series else f"NSE:{tradingsymbol}-{NSE_EQUITY_SERIES}"
    if exchange == "BSE":
        return f"BSE:{tradingsymbol}-{BSE_GROUP.get(tradingsymbol, BSE_DEFAULT_GROUP)}"
    return f"{DERIVATIVE_EXCHANGE_TO_FYERS[exchange]}:{tradingsymbol}"


def from_fyers_symbol(fyers_symbol: str) -> str:
    """Fyers `NSE:SBIN-EQ` -> canonical `NSE:SBIN`; raises InvalidInput for anything unrecognisable."""
    exchange, sep, name = fyers_symbol.partition(":")
    if not sep or not name or exchange not in ("NSE", "BSE", "MCX"):
        raise InvalidInput(f"Not a Fyers symbol: {fyers_symbol!r}.")
    if fyers_symbol in INDEX_FROM_FYERS:
        return INDEX_FROM_FYERS[fyers_symbol]
    if exchange == "MCX":
        return f"MCX:{name}"
    if _DERIVATIVE.search(name):
        if exchange == "BSE":
            return f"BFO:{name}"
        return f"CDS:{name}" if name.startswith(CURRENCY_UNDERLYINGS) else f"NFO:{name}"
    base, dash, suffix = name.rpartition("-")
    if exchange == "NSE":
        return f"NSE:{base}" if dash and suffix == NSE_EQUITY_SERIES else f"NSE:{name}"
    return f"BSE:{base}" if dash and suffix in BSE_GROUPS else f"BSE:{name}"
