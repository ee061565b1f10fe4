"""The instrument master: loading broker instrument dumps, the generated demo universe, and lookups.

By module: `loader` (reading, validating and writing Kite dump rows; Kite CSV in and out), `lookup` (an instrument
by symbol or broker id), `expiries` (expiry dates and Kite's contract tradingsymbols) and `demo` (the demo universe).
"""

from marketdata.instruments.demo import (
    DEMO_INDICES,
    DEMO_STOCKS,
    DemoIndex,
    DemoStock,
    demo_universe_kite_rows,
    instruments_load_demo,
    stock_strike_step,
)
from marketdata.instruments.expiries import (
    kite_future_tradingsymbol,
    kite_option_tradingsymbol,
    monthly_expiries,
    monthly_expiry,
    weekly_expiries,
)
from marketdata.instruments.loader import (
    KITE_CSV_COLUMNS,
    InstrumentLoadError,
    InstrumentRecord,
    LoadResult,
    instrument_as_kite_row,
    instrument_record_from_kite,
    instruments_load_from_account,
    instruments_load_kite_csv,
    instruments_load_kite_rows,
    instruments_upsert,
    instruments_validate_kite_rows,
    kite_csv_text,
    kite_csv_write,
)
from marketdata.instruments.lookup import (
    instrument_get,
    instrument_get_by_dhan_security_id,
    instrument_get_by_kite_token,
)

__all__ = [
    "DEMO_INDICES",
    "DEMO_STOCKS",
    "KITE_CSV_COLUMNS",
    "DemoIndex",
    "DemoStock",
    "InstrumentLoadError",
    "InstrumentRecord",
    "LoadResult",
    "demo_universe_kite_rows",
    "instrument_as_kite_row",
    "instrument_get",
    "instrument_get_by_dhan_security_id",
    "instrument_get_by_kite_token",
    "instrument_record_from_kite",
    "instruments_load_demo",
    "instruments_load_from_account",
    "instruments_load_kite_csv",
    "instruments_load_kite_rows",
    "instruments_upsert",
    "instruments_validate_kite_rows",
    "kite_csv_text",
    "kite_csv_write",
    "kite_future_tradingsymbol",
    "kite_option_tradingsymbol",
    "monthly_expiries",
    "monthly_expiry",
    "stock_strike_step",
    "weekly_expiries",
]
