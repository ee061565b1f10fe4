"""The demo instrument universe: a few indices and liquid stocks with their futures and options, generated as
Kite dump rows around a day and loaded like any broker's dump."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from django.utils import timezone

from brokers.instruments import DEMO_INSTRUMENTS
from brokers.prices import REFERENCE_PRICES, synthetic_quote
from marketdata.instruments.expiries import (
    kite_future_tradingsymbol,
    kite_option_tradingsymbol,
    monthly_expiries,
    monthly_expiry,
    weekly_expiries,
)
from marketdata.instruments.loader import (
    _KITE_SEGMENT_CODES,
    KITE_INDEX_SEGMENT,
    LoadResult,
    Progress,
    _kite_number,
    instruments_load_kite_rows,
)
from marketdata.models import InstrumentType


@dataclass(frozen=True)
class DemoIndex:
    symbol: str  # the index's own symbol, e.g. NSE:NIFTY 50
    underlying: str  # what its contracts are named by
    derivatives_exchange: str
    lot_size: int
    strike_step: Decimal
    kite_token: int
    weekly: bool
    level: Decimal  # used when brokers.prices has no reference price


@dataclass(frozen=True)
class DemoStock:
    tradingsymbol: str
    name: str
    lot_size: int
    level: Decimal  # used when brokers.prices has no reference price
    nse_token: int | None = None  # the real NSE token where we know it


DEMO_INDICES = (
    DemoIndex("NSE:NIFTY 50", "NIFTY", "NFO", 75, Decimal(50), 256265, True, Decimal(24350)),
    DemoIndex("NSE:NIFTY BANK", "BANKNIFTY", "NFO", 35, Decimal(100), 260105, False, Decimal(52400)),
    DemoIndex("NSE:NIFTY FIN SERVICE", "FINNIFTY", "NFO", 65, Decimal(50), 257801, False, Decimal(23400)),
    DemoIndex("BSE:SENSEX", "SENSEX", "BFO", 20, Decimal(100), 265, True, Decimal(80200)),
)

# NSE F&O lot sizes as last known; the exchange revises them twice a year, so check NSE's lot size file.
DEMO_STOCKS = (
    DemoStock("RELIANCE", "RELIANCE INDUSTRIES", 500, Decimal(1290), 2885),
    DemoStock("INFY", "INFOSYS", 400, Decimal(1890), 1594),
    DemoStock("TCS", "TATA CONSULTANCY SERVICES", 175, Decimal(4150), 11536),
    DemoStock("HDFCBANK", "HDFC BANK", 550, Decimal(1740), 1333),
    DemoStock("ICICIBANK", "ICICI BANK", 700, Decimal(1290), 4963),
    DemoStock("SBIN", "STATE BANK OF INDIA", 750, Decimal(820), 3045),
    DemoStock("ITC", "ITC", 1600, Decimal(470), 1660),
    DemoStock("TATAMOTORS", "TATA MOTORS", 800, Decimal(780), 3456),
    DemoStock("AXISBANK", "AXIS BANK", 625, Decimal(1150)),
    DemoStock("KOTAKBANK", "KOTAK MAHINDRA BANK", 400, Decimal(2100)),
    DemoStock("LT", "LARSEN & TOUBRO", 175, Decimal(3900)),
    DemoStock("BHARTIARTL", "BHARTI AIRTEL", 475, Decimal(2000)),
    DemoStock("HINDUNILVR", "HINDUSTAN UNILEVER", 300, Decimal(2450)),
    DemoStock("BAJFINANCE", "BAJAJ FINANCE", 750, Decimal(1000)),
    DemoStock("MARUTI", "MARUTI SUZUKI INDIA", 50, Decimal(16000)),
    DemoStock("ASIANPAINT", "ASIAN PAINTS", 250, Decimal(2500)),
    DemoStock("HCLTECH", "HCL TECHNOLOGIES", 350, Decimal(1600)),
    DemoStock("WIPRO", "WIPRO", 3000, Decimal(250)),
    DemoStock("SUNPHARMA", "SUN PHARMACEUTICAL IND", 350, Decimal(1700)),
    DemoStock("TITAN", "TITAN COMPANY", 175, Decimal(3700)),
    DemoStock("ULTRACEMCO", "ULTRATECH CEMENT", 50, Decimal(12000)),
    DemoStock("NESTLEIND", "NESTLE INDIA", 500, Decimal(1250)),
    DemoStock("POWERGRID", "POWER GRID CORP", 1900, Decimal(290)),
    DemoStock("NTPC", "NTPC", 1500, Decimal(330)),
    DemoStock("ONGC", "OIL AND NATURAL GAS CORP", 2250, Decimal(245)),
    DemoStock("TATASTEEL", "TATA STEEL", 5500, Decimal(170)),
    DemoStock("JSWSTEEL", "JSW STEEL", 675, Decimal(1150)),
    DemoStock("ADANIENT", "ADANI ENTERPRISES", 300, Decimal(2400)),
    DemoStock("ADANIPORTS", "ADANI PORTS AND SEZ", 475, Decimal(1450)),
    DemoStock("COALINDIA", "COAL INDIA", 1350, Decimal(385)),
    DemoStock("M&M", "MAHINDRA & MAHINDRA", 200, Decimal(3600)),
    DemoStock("BAJAJFINSV", "BAJAJ FINSERV", 500, Decimal(2000)),
    DemoStock("TECHM", "TECH MAHINDRA", 600, Decimal(1500)),
    DemoStock("HDFCLIFE", "HDFC LIFE INSURANCE", 1100, Decimal(760)),
    DemoStock("SBILIFE", "SBI LIFE INSURANCE", 375, Decimal(2000)),
    DemoStock("GRASIM", "GRASIM INDUSTRIES", 250, Decimal(2800)),
    DemoStock("CIPLA", "CIPLA", 375, Decimal(1500)),
    DemoStock("DRREDDY", "DR. REDDY'S LABORATORIES", 625, Decimal(1250)),
    DemoStock("DIVISLAB", "DIVI'S LABORATORIES", 100, Decimal(6500)),
    DemoStock("EICHERMOT", "EICHER MOTORS", 175, Decimal(7000)),
    DemoStock("HEROMOTOCO", "HERO MOTOCORP", 150, Decimal(5500)),
    DemoStock("BRITANNIA", "BRITANNIA INDUSTRIES", 125, Decimal(6000)),
    DemoStock("APOLLOHOSP", "APOLLO HOSPITALS", 125, Decimal(7500)),
    DemoStock("INDUSINDBK", "INDUSIND BANK", 700, Decimal(850)),
    DemoStock("BPCL", "BHARAT PETROLEUM CORP", 1975, Decimal(360)),
    DemoStock("TATACONSUM", "TATA CONSUMER PRODUCTS", 550, Decimal(1150)),
    DemoStock("HINDALCO", "HINDALCO INDUSTRIES", 1400, Decimal(800)),
    DemoStock("SHRIRAMFIN", "SHRIRAM FINANCE", 825, Decimal(800)),
    DemoStock("TRENT", "TRENT", 100, Decimal(4500)),
    DemoStock("BEL", "BHARAT ELECTRONICS", 1425, Decimal(410)),
    DemoStock("DLF", "DLF", 825, Decimal(750)),
    DemoStock("VEDL", "VEDANTA", 1150, Decimal(500)),
)
DEMO_WEEKLY_EXPIRIES = 4
DEMO_MONTHLY_EXPIRIES = 2  # current and next month, for futures and options
DEMO_TICK = Decimal("0.05")
# Generated tokens live above every real NSE/BSE token, in ranges of their own.
_GENERATED_EQUITY_TOKEN_BASE = 3_000_000
_GENERATED_DERIVATIVE_TOKEN_BASE = 4_000_000
_CONTRACT_KINDS = {InstrumentType.FUT: 0, InstrumentType.CE: 1, InstrumentType.PE: 2}
_MAX_STRIKES_EACH_SIDE = 31


def demo_spot(*, symbol: str, level: Decimal) -> Decimal:
    """The level a demo option chain is centred on: the simulated market's reference price, else `level`."""
    if symbol in REFERENCE_PRICES:
        return synthetic_quote(symbol).close or REFERENCE_PRICES[symbol]
    return level


def stock_strike_step(spot: Decimal) -> Decimal:
    """A strike interval close to NSE's for a stock at `spot`."""
    for ceiling, step in ((100, "1"), (250, "2.5"), (500, "5"), (1000, "10"), (2500, "20"), (5000, "50")):
        if spot < ceiling:
            return Decimal(step)
    return Decimal(100) if spot < 10000 else Decimal(250)


def _strikes(*, spot: Decimal, step: Decimal, each_side: int) -> list[Decimal]:
    atm = (spot / step).quantize(Decimal(1), rounding=ROUND_HALF_UP) * step
    return [atm + offset * step for offset in range(-each_side, each_side + 1) if atm + offset * step > 0]


def _derivative_exchange_token(*, underlying_index: int, expiry: date, kind: int, strike_index: int) -> int:
    """Stable for a contract across days and unique among live contracts (expiries within 128 days of each
    other): the same demo contract keeps its tokens from one load to the next."""
    slot = ((underlying_index * 128 + expiry.toordinal() % 128) * 3 + kind) * 64 + strike_index
    return _GENERATED_DERIVATIVE_TOKEN_BASE + slot


def _kite_row(
    *,
    exchange_token: int,
    segment_code: int,
    tradingsymbol: str,
    name: str,
    expiry: date | None,
    strike: Decimal | None,
    tick_size: Decimal,
    lot_size: int,
    instrument_type: str,
    segment: str,
    exchange: str,
) -> dict[str, str]:
    return {
        "instrument_token": str(exchange_token * 256 + segment_code),
        "exchange_token": str(exchange_token),
        "tradingsymbol": tradingsymbol,
        "name": name,
        "last_price": "0.0",
        "expiry": expiry.isoformat() if expiry else "",
        "strike": _kite_number(strike),
        "tick_size": _kite_number(tick_size),
        "lot_size": str(lot_size),
        "instrument_type": InstrumentType(instrument_type).value,
        "segment": segment,
        "exchange": exchange,
    }


def _contract_rows(
    *,
    underlying: str,
    underlying_index: int,
    exchange: str,
    lot_size: int,
    spot: Decimal,
    step: Decimal,
    today: date,
    weekly: bool,
    strikes_each_side: int,
) -> list[dict[str, str]]:
    segment_code = _KITE_SEGMENT_CODES[exchange]
    monthlies = monthly_expiries(exchange=exchange, today=today, count=DEMO_MONTHLY_EXPIRIES)
    option_expiries = set(monthlies)
    if weekly:
        option_expiries |= set(weekly_expiries(exchange=exchange, today=today, count=DEMO_WEEKLY_EXPIRIES))
    rows = [
        _kite_row(
            exchange_token=_derivative_exchange_token(
                underlying_index=underlying_index,
                expiry=expiry,
                kind=_CONTRACT_KINDS[InstrumentType.FUT],
                strike_index=0,
            ),
            segment_code=segment_code,
            tradingsymbol=kite_future_tradingsymbol(underlying=underlying, expiry=expiry),
            name=underlying,
            expiry=expiry,
            strike=None,
            tick_size=DEMO_TICK,
            lot_size=lot_size,
            instrument_type=InstrumentType.FUT,
            segment=f"{exchange}-FUT",
            exchange=exchange,
        )
        for expiry in monthlies
    ]
    strikes = _strikes(spot=spot, step=step, each_side=strikes_each_side)
    for expiry in sorted(option_expiries):
        # The contract expiring on the month's expiry day is the monthly one, whatever the weekly schedule says.
        is_monthly = monthly_expiry(exchange=exchange, year=expiry.year, month=expiry.month) == expiry
        for strike_index, strike in enumerate(strikes):
            for option_type in (InstrumentType.CE, InstrumentType.PE):
                rows.append(
                    _kite_row(
                        exchange_token=_derivative_exchange_token(
                            underlying_index=underlying_index,
                            expiry=expiry,
                            kind=_CONTRACT_KINDS[option_type],
                            strike_index=strike_index,
                        ),
                        segment_code=segment_code,
                        tradingsymbol=kite_option_tradingsymbol(
                            underlying=underlying,
                            expiry=expiry,
                            strike=strike,
                            option_type=option_type,
                            monthly=is_monthly,
                        ),
                        name=underlying,
                        expiry=expiry,
                        strike=strike,
                        tick_size=DEMO_TICK,
                        lot_size=lot_size,
                        instrument_type=option_type,
                        segment=f"{exchange}-OPT",
                        exchange=exchange,
                    )
                )
    return rows


def demo_universe_kite_rows(*, today: date, strikes_each_side: int = 20) -> list[dict[str, str]]:
    """The demo instrument universe as Kite dump rows, fully determined by `today`: the four indices, about 50
    liquid NSE stocks (and BSE:RELIANCE), current- and next-month futures, NIFTY (Tuesday) and SENSEX (Thursday)
    weeklies, and monthly options on everything, `strikes_each_side` strikes either side of the money."""
    if not 1 <= strikes_each_side <= _MAX_STRIKES_EACH_SIDE:
        raise ValueError(f"strikes_each_side must be 1 to {_MAX_STRIKES_EACH_SIDE}.")
    rows: list[dict[str, str]] = []
    for index_position, index in enumerate(DEMO_INDICES):
        exchange, tradingsymbol = index.symbol.split(":")
        rows.append(
            {
                **_kite_row(
                    exchange_token=index.kite_token // 256,
                    segment_code=_KITE_SEGMENT_CODES[KITE_INDEX_SEGMENT],
                    tradingsymbol=tradingsymbol,
                    name=tradingsymbol,
                    expiry=None,
                    strike=None,
                    tick_size=Decimal(0),
                    lot_size=0,
                    instrument_type=InstrumentType.EQ,
                    segment=KITE_INDEX_SEGMENT,
                    exchange=exchange,
                ),
                "instrument_token": str(index.kite_token),
            }
        )
        rows += _contract_rows(
            underlying=index.underlying,
            underlying_index=index_position,
            exchange=index.derivatives_exchange,
            lot_size=index.lot_size,
            spot=demo_spot(symbol=index.symbol, level=index.level),
            step=index.strike_step,
            today=today,
            weekly=index.weekly,
            strikes_each_side=strikes_each_side,
        )
    for stock_position, stock in enumerate(DEMO_STOCKS, start=len(DEMO_INDICES)):
        symbol = f"NSE:{stock.tradingsymbol}"
        exchange_token = stock.nse_token or _GENERATED_EQUITY_TOKEN_BASE + stock_position
        rows.append(
            _kite_row(
                exchange_token=exchange_token,
                segment_code=_KITE_SEGMENT_CODES["NSE"],
                tradingsymbol=stock.tradingsymbol,
                name=stock.name,
                expiry=None,
                strike=None,
                tick_size=DEMO_TICK,
                lot_size=1,
                instrument_type=InstrumentType.EQ,
                segment="NSE",
                exchange="NSE",
            )
        )
        spot = demo_spot(symbol=symbol, level=stock.level)
        rows += _contract_rows(
            underlying=stock.tradingsymbol,
            underlying_index=stock_position,
            exchange="NFO",
            lot_size=stock.lot_size,
            spot=spot,
            step=stock_strike_step(spot),
            today=today,
            weekly=False,
            strikes_each_side=strikes_each_side,
        )
    listed = {f"{row['exchange']}:{row['tradingsymbol']}" for row in rows}
    for known in DEMO_INSTRUMENTS:
        if known.symbol in listed:
            continue
        exchange, tradingsymbol = known.symbol.split(":")
        rows.append(
            {
                **_kite_row(
                    exchange_token=known.kite_token // 256,
                    segment_code=_KITE_SEGMENT_CODES[exchange],
                    tradingsymbol=tradingsymbol,
                    name=tradingsymbol,
                    expiry=None,
                    strike=None,
                    tick_size=DEMO_TICK,
                    lot_size=known.lot_size,
                    instrument_type=InstrumentType.EQ,
                    segment=exchange,
                    exchange=exchange,
                ),
                "instrument_token": str(known.kite_token),
            }
        )
    return rows


def instruments_load_demo(
    *, today: date | None = None, strikes_each_side: int = 20, progress: Progress | None = None
) -> LoadResult:
    """Generates the demo universe around `today` (IST today by default) and loads it as a full load."""
    rows = demo_universe_kite_rows(today=today or timezone.localdate(), strikes_each_side=strikes_each_side)
    return instruments_load_kite_rows(rows=rows, full=True, progress=progress)
