"""Option maths, vectorised with numpy: Black-Scholes prices, implied volatility and Greeks for whole chains.

Conventions (European options on a spot with continuous dividend yield `q`, risk-free rate `r`, both annual and
continuously compounded; time in years of 365 calendar days; volatility as a decimal fraction, 0.15 = 15%):

- delta: change in option price per 1 rupee move of the underlying (calls 0..1, puts -1..0).
- gamma: change in delta per 1 rupee move of the underlying.
- theta: change in option price per calendar day that passes (annual theta / 365), usually negative.
- vega: change in option price per 1 volatility point (annual vega / 100, i.e. IV 15% -> 16%).

These are the units Indian retail platforms quote. Every vectorised function takes arrays (or scalars that
broadcast) and returns arrays, without a Python loop over options. Contracts that cannot be priced or solved
(expired, bad inputs, prices outside the no-arbitrage bounds) come back as NaN; callers decide how to show them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

DAYS_PER_YEAR = 365.0
# The solver's bracket: 0.01% to 500% annual volatility.
IV_LOWER_BOUND = 1e-4
IV_UPPER_BOUND = 5.0
DEFAULT_RISK_FREE_RATE = 0.065  # roughly India's 91-day T-bill yield; settings.OPTION_RISK_FREE_RATE overrides it

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_IV_RELATIVE_PRICE_TOLERANCE = 1e-12
_IV_SIGMA_TOLERANCE = 1e-13
_IV_MAX_ITERATIONS = 100


@dataclass(frozen=True)
class OptionGreeks:
    """Arrays shaped like the broadcast inputs; units as in the module docstring."""

    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray
    vega: np.ndarray


@dataclass(frozen=True)
class OptionAnalytics:
    """Implied volatility (decimal fraction) and the Greeks at that volatility; NaN where unsolvable."""

    implied_volatility: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray
    vega: np.ndarray


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


def black_scholes_greeks(
    *,
    spot: np.ndarray | float,
    strike: np.ndarray | float,
    years: np.ndarray | float,
    volatility: np.ndarray | float,
    rate: float,
    is_call: np.ndarray | bool,
    dividend_yield: float = 0.0,
) -> OptionGreeks:
    """Delta, gamma, theta per calendar day and vega per volatility point; NaN where expired or volatility is
    not a positive number."""
    spot, strike, years, volatility, is_call = np.broadcast_arrays(
        np.asarray(spot, dtype=float),
        np.asarray(strike, dtype=float),
        np.asarray(years, dtype=float),
        np.asarray(volatility, dtype=float),
        np.asarray(is_call, dtype=bool),
    )
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        live = (years > 0) & (volatility > 0) & (spot > 0) & (strike > 0) & np.isfinite(volatility)
        t = np.where(live, years, 1.0)
        sigma = np.where(live, volatility, 1.0)
        root_t = np.sqrt(t)
        sigma_root_t = sigma * root_t
        d1 = (np.log(spot / strike) + (rate - dividend_yield + 0.5 * sigma**2) * t) / sigma_root_t
        d2 = d1 - sigma_root_t
        spot_discount = np.exp(-dividend_yield * t)
        discounted_strike = strike * np.exp(-rate * t)
        density_d1 = _INV_SQRT_2PI * np.exp(-0.5 * d1 * d1)
        # N(-x) rather than 1 - N(x) keeps put values accurate deep in the money.
        n_d1 = np.where(is_call, ndtr(d1), -ndtr(-d1))
        n_d2 = np.where(is_call, ndtr(d2), -ndtr(-d2))

        delta = spot_discount * n_d1
        gamma = spot_discount * density_d1 / (spot * sigma_root_t)
        annual_vega = spot * spot_discount * density_d1 * root_t
        annual_theta = (
            -spot * spot_discount * density_d1 * sigma / (2.0 * root_t)
            - rate * discounted_strike * n_d2
            + dividend_yield * spot * spot_discount * n_d1
        )

    def masked(values: np.ndarray) -> np.ndarray:
        return np.where(live, values, np.nan)

    return OptionGreeks(
        delta=masked(delta),
        gamma=masked(gamma),
        theta=masked(annual_theta / DAYS_PER_YEAR),
        vega=masked(annual_vega / 100.0),
    )


def implied_volatility(
    *,
    price: np.ndarray | float,
    spot: np.ndarray | float,
    strike: np.ndarray | float,
    years: np.ndarray | float,
    rate: float,
    is_call: np.ndarray | bool,
    dividend_yield: float = 0.0,
) -> np.ndarray:
    """Implied volatility (decimal fraction) for arrays of option prices; NaN where there is none.

    NaN for: expired contracts, non-positive or non-finite inputs, prices at or below the no-arbitrage lower
    bound (discounted intrinsic value) or at or above the upper bound (discounted spot for calls, discounted
    strike for puts), and prices whose volatility lies outside [IV_LOWER_BOUND, IV_UPPER_BOUND].

    Each contract is solved on its out-of-the-money side (an in-the-money price is turned into the OTM
    counterpart's price by put-call parity), where the price is all time value and well conditioned. The solver is
    a Newton iteration on the log of that price, kept inside a per-contract bracket that shrinks with every
    evaluation, falling back to bisection whenever Newton would leave it, so it cannot diverge.
    """
    price, spot, strike, years, is_call = np.broadcast_arrays(
        np.asarray(price, dtype=float),
        np.asarray(spot, dtype=float),
        np.asarray(strike, dtype=float),
        np.asarray(years, dtype=float),
        np.asarray(is_call, dtype=bool),
    )
    result = np.full(price.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        usable = (
            np.isfinite(price)
            & np.isfinite(spot)
            & np.isfinite(strike)
            & np.isfinite(years)
            & (price > 0)
            & (spot > 0)
            & (strike > 0)
            & (years > 0)
        )
        index = np.flatnonzero(usable)
        if index.size == 0:
            return result
        price_u = price.ravel()[index]
        years_u = years.ravel()[index]
        is_call_u = is_call.ravel()[index]
        discounted_spot = spot.ravel()[index] * np.exp(-dividend_yield * years_u)
        discounted_strike = strike.ravel()[index] * np.exp(-rate * years_u)

        otm_is_call = discounted_strike >= discounted_spot
        parity = discounted_spot - discounted_strike  # call - put
        otm_price = np.where(is_call_u == otm_is_call, price_u, np.where(is_call_u, price_u - parity, price_u + parity))
        otm_upper_bound = np.where(otm_is_call, discounted_spot, discounted_strike)
        # Below the lower bound the OTM counterpart's price is <= 0; above the upper bound it reaches the bound.
        within_bounds = (otm_price > 0) & (otm_price < otm_upper_bound)

        solved = _solve_otm_volatility(
            otm_price=otm_price[within_bounds],
            discounted_spot=discounted_spot[within_bounds],
            discounted_strike=discounted_strike[within_bounds],
            years=years_u[within_bounds],
            is_call=otm_is_call[within_bounds],
        )
    flat = result.ravel()
    flat[index[within_bounds]] = solved
    return flat.reshape(price.shape)


def implied_volatility_and_greeks(
    *,
    price: np.ndarray | float,
    spot: np.ndarray | float,
    strike: np.ndarray | float,
    years: np.ndarray | float,
    rate: float,
    is_call: np.ndarray | bool,
    dividend_yield: float = 0.0,
) -> OptionAnalytics:
    """Implied volatility from prices, then the Greeks at that volatility (NaN wherever the IV is NaN)."""
    volatility = implied_volatility(
        price=price,
        spot=spot,
        strike=strike,
        years=years,
        rate=rate,
        is_call=is_call,
        dividend_yield=dividend_yield,
    )
    greeks = black_scholes_greeks(
        spot=spot,
        strike=strike,
        years=years,
        volatility=volatility,
        rate=rate,
        is_call=is_call,
        dividend_yield=dividend_yield,
    )
    return OptionAnalytics(
        implied_volatility=volatility, delta=greeks.delta, gamma=greeks.gamma, theta=greeks.theta, vega=greeks.vega
    )


def _forward_price_and_vega(
    *,
    discounted_spot: np.ndarray,
    discounted_strike: np.ndarray,
    log_moneyness: np.ndarray,
    root_t: np.ndarray,
    sign: np.ndarray,
    sigma: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Black-Scholes price (sign +1 call, -1 put) and annual vega from discounted spot and strike: the solver's
    inner loop, so each evaluation costs two normal CDFs."""
    sigma_root_t = sigma * root_t
    d1 = log_moneyness / sigma_root_t + 0.5 * sigma_root_t
    d2 = d1 - sigma_root_t
    price = sign * (discounted_spot * ndtr(sign * d1) - discounted_strike * ndtr(sign * d2))
    vega = discounted_spot * _INV_SQRT_2PI * np.exp(-0.5 * d1 * d1) * root_t
    return price, vega


def _solve_otm_volatility(
    *,
    otm_price: np.ndarray,
    discounted_spot: np.ndarray,
    discounted_strike: np.ndarray,
    years: np.ndarray,
    is_call: np.ndarray,
) -> np.ndarray:
    count = otm_price.size
    result = np.full(count, np.nan)
    if count == 0:
        return result
    root_t = np.sqrt(years)
    log_moneyness = np.log(discounted_spot / discounted_strike)
    log_target = np.log(otm_price)
    model = {
        "discounted_spot": discounted_spot,
        "discounted_strike": discounted_strike,
        "log_moneyness": log_moneyness,
        "root_t": root_t,
        "sign": np.where(is_call, 1.0, -1.0),
    }

    low_price, _ = _forward_price_and_vega(**model, sigma=np.full(count, IV_LOWER_BOUND))
    high_price, _ = _forward_price_and_vega(**model, sigma=np.full(count, IV_UPPER_BOUND))
    solvable = (otm_price >= low_price) & (otm_price <= high_price)

    active = np.flatnonzero(solvable)
    low = np.full(active.size, IV_LOWER_BOUND)
    high = np.full(active.size, IV_UPPER_BOUND)
    sigma = _initial_volatility(
        otm_price=otm_price[active],
        discounted_spot=discounted_spot[active],
        discounted_strike=discounted_strike[active],
        years=years[active],
        is_call=is_call[active],
    )
    for _ in range(_IV_MAX_ITERATIONS):
        if active.size == 0:
            break
        values = {name: array[active] for name, array in model.items()}
        price, vega = _forward_price_and_vega(**values, sigma=sigma)
        target = otm_price[active]
        error = price - target
        converged = np.abs(error) <= _IV_RELATIVE_PRICE_TOLERANCE * target
        high = np.where(error > 0, sigma, high)
        low = np.where(error < 0, sigma, low)
        log_error = np.log(price) - log_target[active]
        newton = sigma - log_error * price / vega
        inside = np.isfinite(newton) & (newton > low) & (newton < high)
        next_sigma = np.where(inside, newton, 0.5 * (low + high))
        finished = converged | (high - low <= _IV_SIGMA_TOLERANCE)
        result[active[finished]] = np.where(converged[finished], sigma[finished], next_sigma[finished])
        keep = ~finished
        active, sigma, low, high = active[keep], next_sigma[keep], low[keep], high[keep]
    # Out of iterations: the bracket still holds the root, and its midpoint is the best estimate.
    result[active] = 0.5 * (low + high)
    return result


def _initial_volatility(
    *,
    otm_price: np.ndarray,
    discounted_spot: np.ndarray,
    discounted_strike: np.ndarray,
    years: np.ndarray,
    is_call: np.ndarray,
) -> np.ndarray:
    """Corrado-Miller's closed-form approximation (close near the money), its square root's argument floored at
    zero as Newton needs only a start inside the bracket; the inflection point sqrt(2|ln(F/K)|/T) where it fails."""
    call_price = np.where(is_call, otm_price, otm_price + discounted_spot - discounted_strike)
    half_gap = call_price - 0.5 * (discounted_spot - discounted_strike)
    discriminant = np.maximum(half_gap**2 - (discounted_spot - discounted_strike) ** 2 / np.pi, 0.0)
    corrado_miller = (
        math.sqrt(2.0 * math.pi) / (discounted_spot + discounted_strike) * (half_gap + np.sqrt(discriminant))
    ) / np.sqrt(years)
    inflection = np.sqrt(2.0 * np.abs(np.log(discounted_spot / discounted_strike)) / years)
    guess = np.where(np.isfinite(corrado_miller) & (corrado_miller > 0), corrado_miller, inflection)
    return np.clip(guess, IV_LOWER_BOUND, IV_UPPER_BOUND)
