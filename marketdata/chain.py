"""The option chain of one underlying and expiry: contracts from the instrument master, prices from the quote cache,
implied volatility and Greeks computed for the whole chain at once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import numpy as np
from django.conf import settings
from django.utils import timezone

from algoterm.api.errors import NotFound
from brokers.protocol import Quote
from marketdata.models import Instrument, InstrumentType
from marketdata.options import DAYS_PER_YEAR, DEFAULT_RISK_FREE_RATE, implied_volatility_and_greeks
from marketdata.quotes import quotes_get

MARKET_TIMEZONE = ZoneInfo("Asia/Kolkata")
EXPIRY_CLOSE = time(15, 30)  # options expire at the close of trading on expiry day
_SECONDS_PER_YEAR = DAYS_PER_YEAR * 24 * 3600

# Index underlyings quote under the index's own name; a stock's spot is its NSE cash symbol.
INDEX_SPOT_SYMBOLS: dict[str, str] = {
    "NIFTY": "NSE:NIFTY 50",
    "BANKNIFTY": "NSE:NIFTY BANK",
    "FINNIFTY": "NSE:NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NSE:NIFTY MID SELECT",
    "NIFTYNXT50": "NSE:NIFTY NEXT 50",
    "SENSEX": "BSE:SENSEX",
    "BANKEX": "BSE:BANKEX",
}


class SpotSource:
    INDEX = "index"  # the underlying's own quote (index or cash stock)
    FUTURE = "future"  # the nearest future, discounted back to spot
    PARITY = "parity"  # put-call parity at the strike where call and put prices are closest


@dataclass(frozen=True)
class ChainLeg:
    """One call or put of a strike. Market fields are None without a quote; analytics are None when the
    price cannot be solved (no quote, below intrinsic value, expired, no spot)."""

    symbol: str
    ltp: Decimal | None
    oi: int | None
    chg_oi: int | None
    volume: int | None
    iv: float | None  # percent
    delta: float | None
    gamma: float | None
    theta: float | None  # per calendar day
    vega: float | None  # per volatility point


@dataclass(frozen=True)
class ChainStrike:
    strike: Decimal
    ce: ChainLeg | None  # None when no call is listed at this strike
    pe: ChainLeg | None


@dataclass(frozen=True)
class OptionChain:
    underlying: str
    expiry: date
    expires_at: datetime  # 15:30 Asia/Kolkata on expiry day
    years_to_expiry: float  # from `as_of` to `expires_at`, 365-day years, 0 once expired
    as_of: datetime
    spot: float | None
    spot_source: str | None
    atm_strike: Decimal | None
    pcr: float | None  # total put OI / total call OI
    max_pain: Decimal | None
    risk_free_rate: float  # annual, decimal fraction
    dividend_yield: float
    strikes: list[ChainStrike]


def spot_symbol_for(*, underlying: str) -> str:
    return INDEX_SPOT_SYMBOLS.get(underlying, f"NSE:{underlying}")


def expiry_moment(*, expiry: date) -> datetime:
    return datetime.combine(expiry, EXPIRY_CLOSE, tzinfo=MARKET_TIMEZONE)


def risk_free_rate() -> float:
    return float(getattr(settings, "OPTION_RISK_FREE_RATE", DEFAULT_RISK_FREE_RATE))


def option_chain(*, user, underlying: str, expiry: date, as_of: datetime | None = None) -> OptionChain:
    """The chain for `underlying` (as instruments list it, e.g. NIFTY) expiring on `expiry`.

    `user` is accepted like every selector's but not used: market data is the same for everyone.
    Raises NotFound for an underlying without options, or an expiry it has no contracts on.
    """
    as_of = as_of or timezone.now()
    option_types = (InstrumentType.CE, InstrumentType.PE)
    contracts = list(
        Instrument.objects.filter(
            underlying=underlying, instrument_type__in=option_types, expiry=expiry, is_active=True, strike__isnull=False
        ).values_list("symbol", "instrument_type", "strike")
    )
    if not contracts:
        _raise_no_contracts(underlying=underlying, as_of=as_of)

    rate = risk_free_rate()
    dividend_yield = 0.0
    expires_at = expiry_moment(expiry=expiry)
    years = max((expires_at - as_of).total_seconds(), 0.0) / _SECONDS_PER_YEAR

    symbols = [symbol for symbol, _, _ in contracts]
    spot_symbol = spot_symbol_for(underlying=underlying)
    quotes = quotes_get([*symbols, spot_symbol])

    strike_values = np.array([float(strike) for _, _, strike in contracts])
    is_call = np.array([kind == InstrumentType.CE for _, kind, _ in contracts])
    option_quotes = [quotes.get(symbol) for symbol in symbols]
    prices = np.array([_positive_price(quote) for quote in option_quotes])
    open_interest = np.array([quote.oi if quote else 0 for quote in option_quotes], dtype=float)

    spot, spot_source = _spot(
        underlying=underlying,
        spot_quote=quotes.get(spot_symbol),
        strikes=strike_values,
        is_call=is_call,
        prices=prices,
        years=years,
        rate=rate,
        dividend_yield=dividend_yield,
        as_of=as_of,
    )
    analytics = implied_volatility_and_greeks(
        price=prices,
        spot=spot if spot is not None else math.nan,
        strike=strike_values,
        years=years,
        rate=rate,
        is_call=is_call,
        dividend_yield=dividend_yield,
    )
    iv_percent = _floats_or_none(analytics.implied_volatility * 100.0)
    deltas, gammas = _floats_or_none(analytics.delta), _floats_or_none(analytics.gamma)
    thetas, vegas = _floats_or_none(analytics.theta), _floats_or_none(analytics.vega)

    legs: dict[Decimal, dict[str, ChainLeg]] = {}
    for position, ((symbol, kind, strike), quote) in enumerate(zip(contracts, option_quotes)):
        legs.setdefault(strike, {})[kind] = ChainLeg(
            symbol=symbol,
            ltp=quote.last_price if quote else None,
            oi=quote.oi if quote else None,
            chg_oi=quote.oi_change if quote else None,
            volume=quote.volume if quote else None,
            iv=iv_percent[position],
            delta=deltas[position],
            gamma=gammas[position],
            theta=thetas[position],
            vega=vegas[position],
        )
    ordered_strikes = sorted(legs)
    rows = [
        ChainStrike(strike=strike, ce=legs[strike].get(InstrumentType.CE), pe=legs[strike].get(InstrumentType.PE))
        for strike in ordered_strikes
    ]

    call_oi = float(open_interest[is_call].sum())
    put_oi = float(open_interest[~is_call].sum())
    return OptionChain(
        underlying=underlying,
        expiry=expiry,
        expires_at=expires_at,
        years_to_expiry=years,
        as_of=as_of,
        spot=spot,
        spot_source=spot_source,
        atm_strike=_nearest_strike(strikes=ordered_strikes, spot=spot),
        pcr=put_oi / call_oi if call_oi > 0 else None,
        max_pain=max_pain_strike(strikes=strike_values, is_call=is_call, open_interest=open_interest),
        risk_free_rate=rate,
        dividend_yield=dividend_yield,
        strikes=rows,
    )


def max_pain_strike(*, strikes: np.ndarray, is_call: np.ndarray, open_interest: np.ndarray) -> Decimal | None:
    """The listed strike at which, were the underlying to settle there, option writers would pay out the least
    in total (calls pay OI x (settle - strike) above their strike, puts OI x (strike - settle) below). Ties go to
    the lowest strike; None when there is no open interest at all."""
    if strikes.size == 0 or not np.any(open_interest > 0):
        return None
    candidates = np.unique(strikes)
    settle = candidates[:, None]  # one row per candidate settlement price
    # Multiply-and-sum rather than a matrix product: BLAS threads cost more than they save at this size.
    call_payout = (np.maximum(settle - strikes[is_call], 0.0) * open_interest[is_call]).sum(axis=1)
    put_payout = (np.maximum(strikes[~is_call] - settle, 0.0) * open_interest[~is_call]).sum(axis=1)
    total = call_payout + put_payout
    return _as_strike(candidates[int(np.argmin(total))])


def _raise_no_contracts(*, underlying: str, as_of: datetime) -> None:
    today = as_of.astimezone(MARKET_TIMEZONE).date()
    listed = Instrument.objects.filter(
        underlying=underlying, instrument_type__in=(InstrumentType.CE, InstrumentType.PE), is_active=True
    )
    if not listed.exists():
        raise NotFound(f"No options are listed on {underlying!r}.")
    expiries = list(listed.filter(expiry__gte=today).order_by("expiry").values_list("expiry", flat=True).distinct())
    available = ", ".join(expiry.isoformat() for expiry in expiries) or "none that have not expired"
    raise NotFound(
        f"No {underlying} options expire on that date. Available expiries: {available}.",
        extra={"available_expiries": [expiry.isoformat() for expiry in expiries]},
    )


def _spot(
    *,
    underlying: str,
    spot_quote: Quote | None,
    strikes: np.ndarray,
    is_call: np.ndarray,
    prices: np.ndarray,
    years: float,
    rate: float,
    dividend_yield: float,
    as_of: datetime,
) -> tuple[float | None, str | None]:
    if spot_quote is not None and spot_quote.last_price and spot_quote.last_price > 0:
        return float(spot_quote.last_price), SpotSource.INDEX
    future_spot = _spot_from_future(underlying=underlying, rate=rate, dividend_yield=dividend_yield, as_of=as_of)
    if future_spot is not None:
        return future_spot, SpotSource.FUTURE
    parity_spot = _spot_from_parity(
        strikes=strikes, is_call=is_call, prices=prices, years=years, rate=rate, dividend_yield=dividend_yield
    )
    if parity_spot is not None:
        return parity_spot, SpotSource.PARITY
    return None, None


def _spot_from_future(*, underlying: str, rate: float, dividend_yield: float, as_of: datetime) -> float | None:
    today = as_of.astimezone(MARKET_TIMEZONE).date()
    nearest = (
        Instrument.objects.filter(
            underlying=underlying, instrument_type=InstrumentType.FUT, expiry__gte=today, is_active=True
        )
        .order_by("expiry")
        .values_list("symbol", "expiry")
        .first()
    )
    if nearest is None:
        return None
    symbol, future_expiry = nearest
    quote = quotes_get([symbol]).get(symbol)
    if quote is None or not quote.last_price or quote.last_price <= 0:
        return None
    # A future trades at the forward price; discounting the carry to its own expiry gives the spot it implies.
    future_years = max((expiry_moment(expiry=future_expiry) - as_of).total_seconds(), 0.0) / _SECONDS_PER_YEAR
    return float(quote.last_price) * math.exp(-(rate - dividend_yield) * future_years)


def _spot_from_parity(
    *,
    strikes: np.ndarray,
    is_call: np.ndarray,
    prices: np.ndarray,
    years: float,
    rate: float,
    dividend_yield: float,
) -> float | None:
    """S = (C - P + K e^(-rT)) e^(qT) at the strike where the call and put prices are closest: the ATM strike,
    where both are liquid and the estimate least sensitive to stale prices."""
    call_prices = dict(zip(strikes[is_call].tolist(), prices[is_call].tolist()))
    pairs = [
        (strike, call_prices[strike], put_price)
        for strike, put_price in zip(strikes[~is_call].tolist(), prices[~is_call].tolist())
        if strike in call_prices and math.isfinite(call_prices[strike]) and math.isfinite(put_price)
    ]
    if not pairs:
        return None
    strike, call_price, put_price = min(pairs, key=lambda pair: abs(pair[1] - pair[2]))
    spot = (call_price - put_price + strike * math.exp(-rate * years)) * math.exp(dividend_yield * years)
    return spot if spot > 0 else None


def _nearest_strike(*, strikes: list[Decimal], spot: float | None) -> Decimal | None:
    if spot is None or not strikes:
        return None
    return min(strikes, key=lambda strike: (abs(float(strike) - spot), strike))


def _positive_price(quote: Quote | None) -> float:
    if quote is None or quote.last_price is None or quote.last_price <= 0:
        return math.nan
    return float(quote.last_price)


def _floats_or_none(values: np.ndarray) -> list[float | None]:
    """Python floats, with None for NaN and infinities."""
    return np.where(np.isfinite(values), values, None).tolist()


def _as_strike(value: float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))
