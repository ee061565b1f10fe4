"""Option maths, vectorised with numpy: Black-Scholes prices (IV and Greeks build on these)."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

DAYS_PER_YEAR = 365.0


def black_scholes_price(
    *,
    spot: np.ndarray | float,
    strike: np.ndarray | float,
    years: np.ndarray | float,
    volatility: np.ndarray | float,
    rate: float,
    is_call: np.ndarray | bool,
    dividend_yield: float = 0.0,
) -> np.ndarray:
    """European option prices for arrays of contracts (broadcasting). At or past expiry, intrinsic value."""
    spot, strike, years, volatility, is_call = np.broadcast_arrays(
        np.asarray(spot, dtype=float),
        np.asarray(strike, dtype=float),
        np.asarray(years, dtype=float),
        np.asarray(volatility, dtype=float),
        np.asarray(is_call, dtype=bool),
    )
    intrinsic = np.where(is_call, np.maximum(spot - strike, 0.0), np.maximum(strike - spot, 0.0))
    live = (years > 0) & (volatility > 0)
    t = np.where(live, years, 1.0)
    sigma = np.where(live, volatility, 1.0)
    root_t = np.sqrt(t)
    d1 = (np.log(spot / strike) + (rate - dividend_yield + 0.5 * sigma**2) * t) / (sigma * root_t)
    d2 = d1 - sigma * root_t
    discounted_spot = spot * np.exp(-dividend_yield * t)
    discounted_strike = strike * np.exp(-rate * t)
    call = discounted_spot * ndtr(d1) - discounted_strike * ndtr(d2)
    put = discounted_strike * ndtr(-d2) - discounted_spot * ndtr(-d1)
    return np.where(live, np.where(is_call, call, put), intrinsic)
