"""Black-Scholes prices, Greeks and implied volatility against textbook values, identities and each other."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algoterm.sandbox.options_reference import black_scholes_greeks_scalar, implied_volatility_scalar
from marketdata.options import (
    IV_LOWER_BOUND,
    IV_UPPER_BOUND,
    black_scholes_greeks,
    black_scholes_price,
    implied_volatility,
    implied_volatility_and_greeks,
)

ONE_DAY = 1.0 / 365.0


def random_contracts(*, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spot = rng.uniform(50.0, 50_000.0, count)
    return {
        "spot": spot,
        "strike": spot * np.exp(rng.uniform(-0.6, 0.6, count)),
        "years": rng.uniform(ONE_DAY / 24, 2.0, count),
        "volatility": rng.uniform(0.03, 1.5, count),
        "is_call": rng.random(count) < 0.5,
    }


def otm_time_value(*, spot, strike, years, volatility, rate, dividend_yield=0.0) -> np.ndarray:
    """The price of the out-of-the-money side: what remains of an option's price beyond its intrinsic value."""
    common = {"spot": spot, "strike": strike, "years": years, "volatility": volatility, "rate": rate}
    call = black_scholes_price(**common, is_call=True, dividend_yield=dividend_yield)
    put = black_scholes_price(**common, is_call=False, dividend_yield=dividend_yield)
    return np.minimum(call, put)


# --- textbook values (Hull, Options, Futures and Other Derivatives) -----------------------------------------------


def test_hull_example_call_and_put_prices():
    # S=42, K=40, r=10%, sigma=20%, T=6 months: c = 4.76, p = 0.81.
    prices = black_scholes_price(
        spot=42.0, strike=40.0, years=0.5, volatility=0.2, rate=0.1, is_call=np.array([True, False])
    )
    assert prices[0] == pytest.approx(4.76, abs=0.005)
    assert prices[1] == pytest.approx(0.81, abs=0.005)
    # The unrounded values, from d1 = 0.7693 and d2 = 0.6278.
    assert prices[0] == pytest.approx(4.759422, abs=1e-6)
    assert prices[1] == pytest.approx(0.808599, abs=1e-6)


def test_hull_index_option_with_dividend_yield():
    # S=930, K=900, r=8%, q=3%, sigma=20%, T=2 months: c = 51.83.
    price = black_scholes_price(
        spot=930.0, strike=900.0, years=2 / 12, volatility=0.2, rate=0.08, is_call=True, dividend_yield=0.03
    )
    assert float(price) == pytest.approx(51.83, abs=0.005)


def test_hull_greeks_example():
    # S=49, K=50, r=5%, sigma=20%, T=20 weeks: delta 0.522, gamma 0.066, vega 12.1 per unit of volatility,
    # theta -4.31 per year = -0.0118 per calendar day.
    call = black_scholes_greeks(spot=49.0, strike=50.0, years=0.3846, volatility=0.2, rate=0.05, is_call=True)
    put = black_scholes_greeks(spot=49.0, strike=50.0, years=0.3846, volatility=0.2, rate=0.05, is_call=False)
    assert float(call.delta) == pytest.approx(0.522, abs=0.0005)
    assert float(put.delta) == pytest.approx(0.522 - 1.0, abs=0.0005)
    assert float(call.gamma) == pytest.approx(0.066, abs=0.0005)
    assert float(put.gamma) == float(call.gamma)
    assert float(call.vega) == pytest.approx(12.1 / 100, abs=0.0005)
    assert float(put.vega) == float(call.vega)
    assert float(call.theta) * 365 == pytest.approx(-4.31, abs=0.005)
    assert float(call.theta) == pytest.approx(-0.0118, abs=0.00005)


def test_price_at_and_after_expiry_is_intrinsic():
    prices = black_scholes_price(
        spot=100.0,
        strike=np.array([90.0, 110.0, 90.0, 110.0]),
        years=np.array([0.0, 0.0, -1.0, 0.0]),
        volatility=0.2,
        rate=0.05,
        is_call=np.array([True, True, False, False]),
    )
    np.testing.assert_array_equal(prices, [10.0, 0.0, 0.0, 10.0])


# --- identities --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dividend_yield", [0.0, 0.025])
def test_put_call_parity_across_random_contracts(dividend_yield):
    contracts = random_contracts(count=20_000, seed=7)
    common = {name: contracts[name] for name in ("spot", "strike", "years", "volatility")}
    call = black_scholes_price(**common, rate=0.07, is_call=True, dividend_yield=dividend_yield)
    put = black_scholes_price(**common, rate=0.07, is_call=False, dividend_yield=dividend_yield)
    forward_value = contracts["spot"] * np.exp(-dividend_yield * contracts["years"]) - contracts["strike"] * np.exp(
        -0.07 * contracts["years"]
    )
    np.testing.assert_allclose(call - put, forward_value, rtol=0, atol=1e-10 * contracts["spot"].max())


@pytest.mark.parametrize("dividend_yield", [0.0, 0.02])
def test_greeks_match_finite_differences_of_the_price(dividend_yield):
    contracts = random_contracts(count=500, seed=11)
    spot, strike, years, volatility, is_call = (contracts[name] for name in contracts)
    # Near-worthless options make relative finite differences meaningless.
    meaningful = otm_time_value(spot=spot, strike=strike, years=years, volatility=volatility, rate=0.07) > 1e-3 * spot
    spot, strike, years, volatility, is_call = (
        array[meaningful] for array in (spot, strike, years, volatility, is_call)
    )

    def price(*, spot=spot, years=years, volatility=volatility):
        return black_scholes_price(
            spot=spot,
            strike=strike,
            years=years,
            volatility=volatility,
            rate=0.07,
            is_call=is_call,
            dividend_yield=dividend_yield,
        )

    greeks = black_scholes_greeks(
        spot=spot,
        strike=strike,
        years=years,
        volatility=volatility,
        rate=0.07,
        is_call=is_call,
        dividend_yield=dividend_yield,
    )
    # Bumps on the scale of one standard deviation of the underlying's move keep truncation and rounding small.
    spread = spot * volatility * np.sqrt(years)
    bump = spread * 1e-4
    delta = (price(spot=spot + bump) - price(spot=spot - bump)) / (2 * bump)

    def analytic_delta(bumped_spot):
        return black_scholes_greeks(
            spot=bumped_spot,
            strike=strike,
            years=years,
            volatility=volatility,
            rate=0.07,
            is_call=is_call,
            dividend_yield=dividend_yield,
        ).delta

    gamma = (analytic_delta(spot + bump) - analytic_delta(spot - bump)) / (2 * bump)
    vega = (price(volatility=volatility + 1e-5) - price(volatility=volatility - 1e-5)) / 2e-5 / 100
    theta = -(price(years=years + 1e-6) - price(years=years - 1e-6)) / 2e-6 / 365
    np.testing.assert_allclose(greeks.delta, delta, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(greeks.gamma, gamma, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(greeks.vega, vega, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(greeks.theta, theta, rtol=1e-5, atol=1e-8)


def test_vectorised_greeks_equal_the_scalar_implementation():
    contracts = random_contracts(count=300, seed=3)
    vectorised = black_scholes_greeks(**contracts, rate=0.065, dividend_yield=0.01)
    for position in range(300):
        scalar = black_scholes_greeks_scalar(
            **{name: values[position].item() for name, values in contracts.items()}, rate=0.065, dividend_yield=0.01
        )
        for name, value in zip(("delta", "gamma", "theta", "vega"), scalar):
            assert getattr(vectorised, name)[position] == pytest.approx(value, rel=1e-11, abs=1e-14), name


def test_greeks_are_nan_when_they_cannot_be_computed():
    greeks = black_scholes_greeks(
        spot=100.0,
        strike=100.0,
        years=np.array([0.0, 0.1, 0.1, -0.1]),
        volatility=np.array([0.2, np.nan, 0.0, 0.2]),
        rate=0.05,
        is_call=True,
    )
    for name in ("delta", "gamma", "theta", "vega"):
        assert np.isnan(getattr(greeks, name)).all(), name


# --- implied volatility ------------------------------------------------------------------------------------------


def volatility_grid() -> dict[str, np.ndarray]:
    moneyness = np.array([0.5, 0.7, 0.85, 0.95, 0.99, 1.0, 1.01, 1.05, 1.15, 1.3, 1.5, 2.0])
    years = np.array([ONE_DAY / 24, ONE_DAY, 2 * ONE_DAY, 7 * ONE_DAY, 30 * ONE_DAY, 0.25, 1.0, 3.0])
    volatility = np.array([0.02, 0.08, 0.15, 0.3, 0.6, 1.0, 2.0, 4.0])
    grid = np.meshgrid(moneyness, years, volatility, [True, False], indexing="ij")
    spot = 24_000.0
    return {
        "spot": np.full(grid[0].size, spot),
        "strike": spot * grid[0].ravel(),
        "years": grid[1].ravel(),
        "volatility": grid[2].ravel(),
        "is_call": grid[3].ravel().astype(bool),
    }


@pytest.mark.parametrize("dividend_yield", [0.0, 0.015])
def test_implied_volatility_round_trip_across_the_grid(dividend_yield):
    grid = volatility_grid()
    rate = 0.065
    prices = black_scholes_price(**grid, rate=rate, dividend_yield=dividend_yield)
    volatility = implied_volatility(
        price=prices,
        spot=grid["spot"],
        strike=grid["strike"],
        years=grid["years"],
        rate=rate,
        is_call=grid["is_call"],
        dividend_yield=dividend_yield,
    )
    time_value = otm_time_value(
        spot=grid["spot"],
        strike=grid["strike"],
        years=grid["years"],
        volatility=grid["volatility"],
        rate=rate,
        dividend_yield=dividend_yield,
    )
    # Anything worth at least a hundredth of a tick (0.0005 on 24,000) must be solved, to the volatility itself.
    quotable = time_value >= 0.0005
    assert quotable.sum() > 0.6 * quotable.size
    assert np.isfinite(volatility[quotable]).all()
    np.testing.assert_allclose(volatility[quotable], grid["volatility"][quotable], rtol=1e-7)
    # Wherever a volatility comes back, it reprices the option.
    solved = np.isfinite(volatility)
    repriced = black_scholes_price(
        spot=grid["spot"][solved],
        strike=grid["strike"][solved],
        years=grid["years"][solved],
        volatility=volatility[solved],
        rate=rate,
        is_call=grid["is_call"][solved],
        dividend_yield=dividend_yield,
    )
    np.testing.assert_allclose(repriced, prices[solved], rtol=1e-10, atol=1e-9)


def test_implied_volatility_deep_in_and_out_of_the_money_one_day_to_expiry():
    strikes = np.array([20_000.0, 22_000.0, 23_500.0, 24_000.0, 24_500.0, 26_000.0, 28_000.0])
    for is_call in (True, False):
        prices = black_scholes_price(
            spot=24_000.0, strike=strikes, years=ONE_DAY, volatility=0.9, rate=0.065, is_call=is_call
        )
        volatility = implied_volatility(
            price=prices, spot=24_000.0, strike=strikes, years=ONE_DAY, rate=0.065, is_call=is_call
        )
        np.testing.assert_allclose(volatility, 0.9, rtol=1e-8)


def test_vectorised_and_scalar_implied_volatility_agree():
    contracts = random_contracts(count=1_500, seed=21)
    prices = black_scholes_price(**contracts, rate=0.07, dividend_yield=0.01)
    arguments = {name: contracts[name] for name in ("spot", "strike", "years", "is_call")}
    vectorised = implied_volatility(price=prices, **arguments, rate=0.07, dividend_yield=0.01)
    scalar = np.array(
        [
            implied_volatility_scalar(
                price=prices[position].item(),
                rate=0.07,
                dividend_yield=0.01,
                **{name: values[position].item() for name, values in arguments.items()},
            )
            for position in range(prices.size)
        ]
    )
    time_value = otm_time_value(
        **{name: contracts[name] for name in ("spot", "strike", "years", "volatility")}, rate=0.07, dividend_yield=0.01
    )
    quotable = time_value >= 1e-6 * contracts["spot"]
    assert np.isfinite(vectorised[quotable]).all() and np.isfinite(scalar[quotable]).all()
    np.testing.assert_allclose(vectorised[quotable], scalar[quotable], rtol=1e-9)
    np.testing.assert_allclose(vectorised[quotable], contracts["volatility"][quotable], rtol=1e-8)


@pytest.mark.parametrize(
    ("price", "is_call", "why"),
    [
        (5.0, True, "below intrinsic: a 100 call on 110"),
        (0.0, True, "zero"),
        (0.0, False, "zero put"),
        (-1.0, False, "negative"),
        (float("nan"), True, "no price"),
        (float("inf"), True, "infinite"),
        (110.0, True, "at the upper bound: the spot itself"),
        (150.0, False, "above the discounted strike"),
    ],
)
def test_prices_outside_the_no_arbitrage_bounds_have_no_volatility(price, is_call, why):
    arguments = {"spot": 110.0, "strike": 100.0, "years": 0.1, "rate": 0.05, "is_call": is_call}
    assert math.isnan(float(implied_volatility(price=price, **arguments))), why
    assert math.isnan(implied_volatility_scalar(price=price, **arguments)), why


def test_prices_beyond_the_volatility_bracket_are_nan():
    arguments = {"spot": 100.0, "strike": 100.0, "years": 0.5, "rate": 0.0, "is_call": True}
    above_bracket = float(black_scholes_price(volatility=IV_UPPER_BOUND * 1.5, **arguments))
    assert math.isnan(float(implied_volatility(price=above_bracket, **arguments)))
    at_floor = float(black_scholes_price(volatility=IV_LOWER_BOUND, **arguments))
    assert float(implied_volatility(price=at_floor, **arguments)) == pytest.approx(IV_LOWER_BOUND, rel=1e-9)
    assert math.isnan(float(implied_volatility(price=at_floor * 0.5, **arguments)))


def test_expired_or_degenerate_contracts_have_no_volatility():
    volatility = implied_volatility(
        price=5.0,
        spot=np.array([100.0, 100.0, 0.0, 100.0]),
        strike=np.array([100.0, 100.0, 100.0, 0.0]),
        years=np.array([0.0, -0.1, 0.1, 0.1]),
        rate=0.05,
        is_call=True,
    )
    assert np.isnan(volatility).all()


def test_implied_volatility_keeps_the_input_shape_and_broadcasts():
    strikes = np.array([[23_000.0, 24_000.0, 25_000.0], [23_500.0, 24_500.0, 25_500.0]])
    prices = black_scholes_price(spot=24_000.0, strike=strikes, years=0.05, volatility=0.14, rate=0.065, is_call=True)
    volatility = implied_volatility(price=prices, spot=24_000.0, strike=strikes, years=0.05, rate=0.065, is_call=True)
    assert volatility.shape == (2, 3)
    np.testing.assert_allclose(volatility, 0.14, rtol=1e-9)
    assert implied_volatility(price=np.array([]), spot=1.0, strike=1.0, years=1.0, rate=0.0, is_call=True).size == 0


def test_iv_and_greeks_together_are_nan_together():
    analytics = implied_volatility_and_greeks(
        price=np.array([5.0, 500.0]),
        spot=24_000.0,
        strike=np.array([24_500.0, 24_000.0]),
        years=7 * ONE_DAY,
        rate=0.065,
        is_call=np.array([True, True]),
    )
    assert math.isfinite(analytics.implied_volatility[0]) and math.isfinite(analytics.delta[0])
    expected = black_scholes_greeks(
        spot=24_000.0,
        strike=24_500.0,
        years=7 * ONE_DAY,
        volatility=analytics.implied_volatility[0],
        rate=0.065,
        is_call=True,
    )
    assert analytics.delta[0] == pytest.approx(float(expected.delta), rel=1e-12)
    # 500 for an ATM one-week call is about 15% volatility; a price above the spot would be NaN everywhere.
    nan_case = implied_volatility_and_greeks(
        price=30_000.0, spot=24_000.0, strike=24_000.0, years=ONE_DAY, rate=0.065, is_call=True
    )
    for value in (nan_case.implied_volatility, nan_case.delta, nan_case.gamma, nan_case.theta, nan_case.vega):
        assert np.isnan(value)
