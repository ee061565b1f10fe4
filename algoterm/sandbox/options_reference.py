"""The scalar reference of the option maths: one option at a time with the textbook formulas and scipy's Brent
solver, the baseline the vectorised `marketdata.options` is benchmarked and cross-checked against."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from marketdata.options import DAYS_PER_YEAR, IV_LOWER_BOUND, IV_UPPER_BOUND

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _black_scholes_price_scalar(
    *, spot: float, strike: float, years: float, volatility: float, rate: float, is_call: bool, dividend_yield: float
) -> float:
    root_t = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate - dividend_yield + 0.5 * volatility * volatility) * years) / (
        volatility * root_t
    )
    d2 = d1 - volatility * root_t
    discounted_spot = spot * math.exp(-dividend_yield * years)
    discounted_strike = strike * math.exp(-rate * years)
    if is_call:
        return discounted_spot * _normal_cdf(d1) - discounted_strike * _normal_cdf(d2)
    return discounted_strike * _normal_cdf(-d2) - discounted_spot * _normal_cdf(-d1)


def implied_volatility_scalar(
    *,
    price: float,
    spot: float,
    strike: float,
    years: float,
    rate: float,
    is_call: bool,
    dividend_yield: float = 0.0,
) -> float:
    """One option's implied volatility with scipy's Brent solver on [IV_LOWER_BOUND, IV_UPPER_BOUND]; NaN when the
    price is outside the no-arbitrage bounds or its volatility outside the bracket."""
    values = (price, spot, strike, years)
    if not all(math.isfinite(value) for value in values) or min(values) <= 0:
        return math.nan
    discounted_spot = spot * math.exp(-dividend_yield * years)
    discounted_strike = strike * math.exp(-rate * years)
    if is_call:
        lower, upper = max(discounted_spot - discounted_strike, 0.0), discounted_spot
    else:
        lower, upper = max(discounted_strike - discounted_spot, 0.0), discounted_strike
    if not lower < price < upper:
        return math.nan

    def pricing_error(volatility: float) -> float:
        model = _black_scholes_price_scalar(
            spot=spot,
            strike=strike,
            years=years,
            volatility=volatility,
            rate=rate,
            is_call=is_call,
            dividend_yield=dividend_yield,
        )
        return model - price

    low_error, high_error = pricing_error(IV_LOWER_BOUND), pricing_error(IV_UPPER_BOUND)
    if low_error == 0:
        return IV_LOWER_BOUND
    if high_error == 0:
        return IV_UPPER_BOUND
    if low_error > 0 or high_error < 0:
        return math.nan
    return brentq(pricing_error, IV_LOWER_BOUND, IV_UPPER_BOUND, xtol=1e-14, rtol=4 * np.finfo(float).eps)


def black_scholes_greeks_scalar(
    *,
    spot: float,
    strike: float,
    years: float,
    volatility: float,
    rate: float,
    is_call: bool,
    dividend_yield: float = 0.0,
) -> tuple[float, float, float, float]:
    """(delta, gamma, theta per day, vega per volatility point) for one option; NaNs when it cannot be priced."""
    if not (years > 0 and volatility > 0 and spot > 0 and strike > 0 and math.isfinite(volatility)):
        return (math.nan,) * 4
    root_t = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate - dividend_yield + 0.5 * volatility * volatility) * years) / (
        volatility * root_t
    )
    d2 = d1 - volatility * root_t
    spot_discount = math.exp(-dividend_yield * years)
    discounted_strike = strike * math.exp(-rate * years)
    density = _INV_SQRT_2PI * math.exp(-0.5 * d1 * d1)
    n_d1 = _normal_cdf(d1) if is_call else -_normal_cdf(-d1)
    n_d2 = _normal_cdf(d2) if is_call else -_normal_cdf(-d2)
    delta = spot_discount * n_d1
    gamma = spot_discount * density / (spot * volatility * root_t)
    vega = spot * spot_discount * density * root_t / 100.0
    theta = (
        -spot * spot_discount * density * volatility / (2.0 * root_t)
        - rate * discounted_strike * n_d2
        + dividend_yield * spot * spot_discount * n_d1
    ) / DAYS_PER_YEAR
    return delta, gamma, theta, vega
