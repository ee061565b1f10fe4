"""What market data plugs into the floors below it, from `MarketDataConfig.ready()`: its configuration sections into
the store, its quote cache and tick bus as the brokers' price source (the paper broker and the simulated exchange
price from it), and its instrument master as the brokers' instrument lookup."""

from __future__ import annotations

from decimal import Decimal

from brokers.instruments import InstrumentMaster, instrument_master_register
from brokers.prices import PriceSource, price_source_register
from marketdata.config_sections import config_sections_register
from marketdata.instruments import (
    DEMO_INDICES,
    DEMO_STOCKS,
    instrument_get,
    instrument_get_by_dhan_security_id,
    instrument_get_by_kite_token,
)
from marketdata.quotes import quote_get
from marketdata.ticks import ticks_publish


def _demo_levels() -> dict[str, Decimal]:
    levels = {index.symbol: index.level for index in DEMO_INDICES}
    levels.update({f"NSE:{stock.tradingsymbol}": stock.level for stock in DEMO_STOCKS})
    return levels


def hooks_connect() -> None:
    config_sections_register()
    price_source_register(
        PriceSource(quote_get=quote_get, quotes_publish=ticks_publish, reference_levels=_demo_levels())
    )
    instrument_master_register(
        InstrumentMaster(
            by_symbol=lambda symbol: instrument_get(symbol=symbol),
            by_kite_token=lambda token: instrument_get_by_kite_token(token=token),
            by_dhan_security_id=lambda exchange, security_id: instrument_get_by_dhan_security_id(
                exchange=exchange, security_id=security_id
            ),
        )
    )
