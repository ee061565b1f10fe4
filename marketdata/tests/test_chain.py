"""The option chain selector and GET /api/option-chain on a small hand-built NIFTY chain."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.utils import timezone

from algoterm.testing import assert_error, assert_requires_auth
from brokers.protocol import Quote
from marketdata.chain import MARKET_TIMEZONE, expiry_moment, max_pain_strike, option_chain, risk_free_rate
from marketdata.models import Instrument, InstrumentType
from marketdata.options import black_scholes_price
from marketdata.quotes import quotes_put

pytestmark = pytest.mark.django_db

SPOT = 24_030.0
VOLATILITY = 0.15
STRIKES = [23_800, 23_900, 24_000, 24_100, 24_200]
CALL_OI = [100, 200, 500, 900, 400]
PUT_OI = [600, 800, 700, 200, 100]
# Writers' payout if NIFTY settles at each strike: 320000, 150000, 80000, 130000, 290000 -> max pain 24000.
MAX_PAIN = Decimal("24000")
PCR = sum(PUT_OI) / sum(CALL_OI)


def expiry_in(days: int) -> date:
    return timezone.now().astimezone(MARKET_TIMEZONE).date() + timedelta(days=days)


def option_symbol(*, expiry: date, strike: int, kind: str) -> str:
    return f"NFO:NIFTY{expiry:%y%b}{strike}{kind}".upper()


def list_contracts(*, expiry: date, strikes=STRIKES, kinds=("CE", "PE")) -> None:
    for strike in strikes:
        for kind in kinds:
            symbol = option_symbol(expiry=expiry, strike=strike, kind=kind)
            Instrument.objects.create(
                symbol=symbol,
                exchange="NFO",
                segment="NFO-OPT",
                tradingsymbol=symbol.split(":", 1)[1],
                underlying="NIFTY",
                instrument_type=kind,
                expiry=expiry,
                strike=Decimal(strike),
                lot_size=75,
            )


def model_price(*, strike: float, kind: str, expiry: date, as_of: datetime, spot: float = SPOT) -> Decimal:
    years = (expiry_moment(expiry=expiry) - as_of).total_seconds() / (365 * 86400)
    price = black_scholes_price(
        spot=spot, strike=strike, years=years, volatility=VOLATILITY, rate=risk_free_rate(), is_call=kind == "CE"
    )
    return Decimal(str(round(float(price), 2)))


def quote_chain(*, expiry: date, as_of: datetime, with_spot: bool = True, skip: tuple = ()) -> None:
    quotes = []
    for strike, call_oi, put_oi in zip(STRIKES, CALL_OI, PUT_OI):
        for kind, oi in (("CE", call_oi), ("PE", put_oi)):
            if (strike, kind) in skip:
                continue
            quotes.append(
                Quote(
                    symbol=option_symbol(expiry=expiry, strike=strike, kind=kind),
                    last_price=model_price(strike=strike, kind=kind, expiry=expiry, as_of=as_of),
                    volume=oi * 10,
                    oi=oi,
                    oi_change=oi // 10,
                )
            )
    if with_spot:
        quotes.append(Quote(symbol="NSE:NIFTY 50", last_price=Decimal(str(SPOT))))
    quotes_put(quotes)


@pytest.fixture
def nifty_expiry() -> date:
    expiry = expiry_in(14)
    list_contracts(expiry=expiry)
    list_contracts(expiry=expiry_in(42), strikes=[24_000])
    return expiry


@pytest.fixture
def as_of() -> datetime:
    return timezone.now()


# --- the selector --------------------------------------------------------------------------------------------------


def test_chain_shape_spot_atm_pcr_and_max_pain(trader, nifty_expiry, as_of):
    quote_chain(expiry=nifty_expiry, as_of=as_of)
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)

    assert [row.strike for row in chain.strikes] == [Decimal(strike) for strike in STRIKES]
    assert chain.spot == SPOT and chain.spot_source == "index"
    assert chain.atm_strike == Decimal("24000")
    assert chain.pcr == pytest.approx(PCR, rel=1e-12)
    assert chain.max_pain == MAX_PAIN
    assert chain.expires_at == datetime.combine(nifty_expiry, datetime.min.time(), MARKET_TIMEZONE).replace(
        hour=15, minute=30
    )
    assert chain.years_to_expiry == pytest.approx((chain.expires_at - as_of).total_seconds() / (365 * 86400))

    atm = chain.strikes[2]
    assert atm.ce.symbol == option_symbol(expiry=nifty_expiry, strike=24_000, kind="CE")
    assert (atm.ce.oi, atm.ce.chg_oi, atm.ce.volume) == (500, 50, 5000)
    assert atm.ce.ltp == model_price(strike=24_000, kind="CE", expiry=nifty_expiry, as_of=as_of)
    for row in chain.strikes:
        for leg, sign in ((row.ce, 1), (row.pe, -1)):
            # Prices rounded to the paisa move the implied volatility a little off the 15% they were made with.
            assert leg.iv == pytest.approx(VOLATILITY * 100, abs=0.05), (row.strike, leg)
            assert 0 < sign * leg.delta < 1
            assert leg.gamma > 0 and leg.vega > 0 and leg.theta < 0
    assert atm.ce.delta - atm.pe.delta == pytest.approx(1.0, abs=0.002)


def test_max_pain_matches_a_brute_force_sum_over_strikes():
    rng = np.random.default_rng(5)
    strikes = np.repeat(np.arange(20_000.0, 28_000.0, 50.0), 2)
    is_call = np.tile([True, False], strikes.size // 2)
    open_interest = rng.integers(0, 100_000, strikes.size).astype(float)

    def payout(settle: float) -> float:
        return sum(
            oi * (max(settle - strike, 0.0) if call else max(strike - settle, 0.0))
            for strike, call, oi in zip(strikes, is_call, open_interest)
        )

    candidates = sorted(set(strikes.tolist()))
    expected = min(candidates, key=lambda settle: (payout(settle), settle))
    assert max_pain_strike(strikes=strikes, is_call=is_call, open_interest=open_interest) == Decimal(str(expected))
    assert max_pain_strike(strikes=strikes, is_call=is_call, open_interest=np.zeros(strikes.size)) is None


def test_legs_without_a_quote_and_strikes_with_one_side_have_nulls(trader, nifty_expiry, as_of):
    list_contracts(expiry=nifty_expiry, strikes=[24_300], kinds=("CE",))
    quote_chain(expiry=nifty_expiry, as_of=as_of, skip=((24_200, "PE"),))
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)

    unquoted = chain.strikes[4].pe
    assert unquoted.symbol == option_symbol(expiry=nifty_expiry, strike=24_200, kind="PE")
    assert all(
        getattr(unquoted, name) is None
        for name in ("ltp", "oi", "chg_oi", "volume", "iv", "delta", "gamma", "theta", "vega")
    )
    only_call = chain.strikes[5]
    assert only_call.strike == Decimal("24300") and only_call.pe is None
    assert only_call.ce.ltp is None and only_call.ce.iv is None
    assert chain.pcr == pytest.approx((sum(PUT_OI) - 100) / sum(CALL_OI))


def test_spot_falls_back_to_the_nearest_future_discounted_to_spot(trader, nifty_expiry, as_of):
    future_expiry = expiry_in(20)
    for expiry, symbol in ((future_expiry, "NFO:NIFTYNEARFUT"), (expiry_in(50), "NFO:NIFTYNEXTFUT")):
        Instrument.objects.create(
            symbol=symbol,
            exchange="NFO",
            segment="NFO-FUT",
            tradingsymbol=symbol[4:],
            underlying="NIFTY",
            instrument_type=InstrumentType.FUT,
            expiry=expiry,
        )
    quote_chain(expiry=nifty_expiry, as_of=as_of, with_spot=False)
    quotes_put(
        [
            Quote(symbol="NFO:NIFTYNEARFUT", last_price=Decimal("24150.00")),
            Quote(symbol="NFO:NIFTYNEXTFUT", last_price=Decimal("24400.00")),
        ]
    )
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)

    future_years = (expiry_moment(expiry=future_expiry) - as_of).total_seconds() / (365 * 86400)
    assert chain.spot_source == "future"
    assert chain.spot == pytest.approx(24_150.0 * math.exp(-risk_free_rate() * future_years), rel=1e-12)


def test_spot_falls_back_to_put_call_parity_at_the_money(trader, nifty_expiry, as_of):
    quote_chain(expiry=nifty_expiry, as_of=as_of, with_spot=False)
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)
    assert chain.spot_source == "parity"
    assert chain.spot == pytest.approx(SPOT, abs=0.02)  # prices rounded to the paisa
    assert chain.atm_strike == Decimal("24000")
    assert chain.strikes[2].ce.iv == pytest.approx(VOLATILITY * 100, abs=0.05)


def test_without_any_spot_the_analytics_are_null_but_the_market_fields_are_not(trader, nifty_expiry, as_of):
    quotes_put([Quote(symbol=option_symbol(expiry=nifty_expiry, strike=24_000, kind="CE"), last_price=Decimal("150"))])
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)
    assert chain.spot is None and chain.spot_source is None and chain.atm_strike is None
    leg = chain.strikes[2].ce
    assert leg.ltp == Decimal("150") and leg.iv is None and leg.delta is None
    assert chain.pcr is None and chain.max_pain is None  # no open interest anywhere


def test_after_the_expiry_close_time_to_expiry_is_zero_and_analytics_null(trader, nifty_expiry):
    as_of = expiry_moment(expiry=nifty_expiry) + timedelta(minutes=1)
    quote_chain(expiry=nifty_expiry, as_of=as_of - timedelta(hours=1))
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)
    assert chain.years_to_expiry == 0.0
    assert all(row.ce.iv is None and row.pe.delta is None for row in chain.strikes)


def test_half_an_hour_before_expiry_the_chain_still_solves(trader, nifty_expiry):
    as_of = expiry_moment(expiry=nifty_expiry) - timedelta(minutes=30)
    quote_chain(expiry=nifty_expiry, as_of=as_of)
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)
    assert chain.strikes[2].ce.iv == pytest.approx(VOLATILITY * 100, abs=0.5)


def test_unknown_underlying_and_unlisted_expiry_are_not_found(trader, nifty_expiry):
    from algoterm.api.errors import NotFound

    with pytest.raises(NotFound):
        option_chain(user=trader, underlying="NOSUCH", expiry=nifty_expiry)
    with pytest.raises(NotFound) as raised:
        option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry + timedelta(days=1))
    assert nifty_expiry.isoformat() in raised.value.detail
    assert raised.value.extra["available_expiries"] == [nifty_expiry.isoformat(), expiry_in(42).isoformat()]


# --- the route ---------------------------------------------------------------------------------------------------


def strict_json(response) -> dict:
    """The body parsed by a parser that refuses NaN and Infinity, as browsers' JSON.parse does."""

    def refuse(constant: str):
        raise AssertionError(f"{constant} in the JSON body")

    return json.loads(response.content, parse_constant=refuse)


def test_route_returns_the_chain_as_json_numbers(trader_client, nifty_expiry):
    quote_chain(expiry=nifty_expiry, as_of=timezone.now())
    response = trader_client.get(f"/api/option-chain?symbol=nifty&expiry={nifty_expiry}")
    assert response.status_code == 200, response.content
    body = strict_json(response)

    assert body["symbol"] == "NIFTY" and body["expiry"] == nifty_expiry.isoformat()
    assert body["spot"] == SPOT and body["atm_strike"] == 24_000 and body["max_pain"] == 24_000
    assert body["pcr"] == round(PCR, 4)
    assert body["risk_free_rate"] == pytest.approx(risk_free_rate() * 100)
    assert body["spot_source"] == "index" and body["years_to_expiry"] > 0
    assert len(body["strikes"]) == len(STRIKES)
    row = body["strikes"][2]
    assert row["strike"] == 24_000
    assert set(row["ce"]) == {"symbol", "ltp", "oi", "chg_oi", "volume", "iv", "delta", "gamma", "theta", "vega"}
    for name in ("ltp", "iv", "delta", "gamma", "theta", "vega"):
        assert isinstance(row["ce"][name], float) and isinstance(row["pe"][name], float), name
    assert row["ce"]["iv"] == pytest.approx(15.0, abs=0.05)


def test_route_sends_null_never_nan_for_prices_below_intrinsic_or_zero(trader_client, nifty_expiry):
    quote_chain(expiry=nifty_expiry, as_of=timezone.now())
    quotes_put(
        [
            # A 23,800 call with NIFTY at 24,030 cannot trade at 100 (intrinsic 230), nor anything at zero.
            Quote(symbol=option_symbol(expiry=nifty_expiry, strike=23_800, kind="CE"), last_price=Decimal("100")),
            Quote(symbol=option_symbol(expiry=nifty_expiry, strike=24_200, kind="PE"), last_price=Decimal("0")),
            Quote(symbol=option_symbol(expiry=nifty_expiry, strike=24_100, kind="CE"), last_price=Decimal("30000")),
        ]
    )
    response = trader_client.get(f"/api/option-chain?symbol=NIFTY&expiry={nifty_expiry}")
    assert response.status_code == 200, response.content
    body = strict_json(response)
    for strike_index, side in ((0, "ce"), (4, "pe"), (3, "ce")):
        leg = body["strikes"][strike_index][side]
        assert leg["ltp"] is not None
        assert [leg[name] for name in ("iv", "delta", "gamma", "theta", "vega")] == [None] * 5, leg


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("symbol=NIFTY", {"expiry"}),
        ("expiry=2030-01-31", {"symbol"}),
        ("", {"symbol", "expiry"}),
        ("symbol=NIFTY&expiry=31-01-2030", {"expiry"}),
        ("symbol=NIFTY&expiry=2030-02-30", {"expiry"}),
        ("symbol=NIF TY!&expiry=2030-01-31", {"symbol"}),
        ("symbol=NIFTY&expiry=2030-01-31&strike=24000", {"strike"}),
    ],
)
def test_route_rejects_bad_input(trader_client, query, fields):
    body = assert_error(trader_client.get(f"/api/option-chain?{query}"), 400, "VALIDATION_ERROR")
    assert set(body["errors"]) == fields


def test_route_unknown_symbol_and_expiry_are_404(trader_client, nifty_expiry):
    assert_error(trader_client.get(f"/api/option-chain?symbol=NOSUCH&expiry={nifty_expiry}"), 404, "NOT_FOUND")
    other_day = nifty_expiry + timedelta(days=1)
    body = assert_error(trader_client.get(f"/api/option-chain?symbol=NIFTY&expiry={other_day}"), 404, "NOT_FOUND")
    assert nifty_expiry.isoformat() in body["detail"]


def test_route_requires_authentication():
    assert_requires_auth("get", f"/api/option-chain?symbol=NIFTY&expiry={expiry_in(7)}")


def test_the_fast_rendering_of_strikes_equals_the_generic_serializer(trader, nifty_expiry, as_of):
    from rest_framework import serializers

    from marketdata.serializers import ChainLegOutput, ChainStrikeOutput

    list_contracts(expiry=nifty_expiry, strikes=[24_300], kinds=("CE",))
    quote_chain(expiry=nifty_expiry, as_of=as_of, skip=((24_200, "PE"),))
    chain = option_chain(user=trader, underlying="NIFTY", expiry=nifty_expiry, as_of=as_of)
    for row in chain.strikes:
        generic = serializers.Serializer.to_representation(ChainStrikeOutput(), row)
        for side in ("ce", "pe"):
            leg = getattr(row, side)
            generic[side] = None if leg is None else serializers.Serializer.to_representation(ChainLegOutput(), leg)
        assert ChainStrikeOutput().to_representation(row) == generic
