"""The simulated market: deterministic steps, consistent derivatives, plausible activity, the tick bus."""

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from brokers.prices import REFERENCE_PRICES
from marketdata.feeds.simulated import RISK_FREE_RATE, SimulatedFeed, simulated_clock_from, smile_volatility
from marketdata.models import Instrument
from marketdata.options import black_scholes_price
from marketdata.quotes import quote_get

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # 10:30 IST, a Monday
EXPIRY = date(2026, 3, 10)
STRIKES = range(23800, 24950, 50)


def captured() -> tuple[list, callable]:
    batches: list = []

    def publish(quotes):
        batches.append(quotes)
        return 0

    return batches, publish


def nifty_chain() -> None:
    Instrument.objects.create(
        symbol="NSE:NIFTY 50",
        exchange="NSE",
        segment="INDICES",
        tradingsymbol="NIFTY 50",
        underlying="NIFTY",
        instrument_type="INDEX",
    )
    Instrument.objects.create(
        symbol="NFO:NIFTY26MARFUT",
        exchange="NFO",
        segment="NFO-FUT",
        tradingsymbol="NIFTY26MARFUT",
        underlying="NIFTY",
        instrument_type="FUT",
        expiry=date(2026, 3, 31),
        lot_size=75,
    )
    for strike in STRIKES:
        for kind in ("CE", "PE"):
            Instrument.objects.create(
                symbol=f"NFO:NIFTY2631{strike}{kind}",
                exchange="NFO",
                segment="NFO-OPT",
                tradingsymbol=f"NIFTY2631{strike}{kind}",
                underlying="NIFTY",
                instrument_type=kind,
                expiry=EXPIRY,
                strike=Decimal(strike),
                lot_size=75,
            )
    Instrument.objects.create(
        symbol="NFO:NIFTY2520324000CE",
        exchange="NFO",
        segment="NFO-OPT",
        tradingsymbol="NIFTY2520324000CE",
        underlying="NIFTY",
        instrument_type="CE",
        expiry=date(2025, 3, 20),
        strike=Decimal(24000),
        lot_size=75,
    )


def chain_feed(seed: int = 7, **options) -> tuple[SimulatedFeed, list]:
    batches, publish = captured()
    feed = SimulatedFeed(
        seed=seed, clock=simulated_clock_from(NOW, step=timedelta(seconds=1)), publish=publish, **options
    )
    return feed, batches


def by_symbol(quotes) -> dict:
    return {quote.symbol: quote for quote in quotes}


def test_empty_instrument_table_falls_back_to_reference_symbols():
    feed, batches = chain_feed()
    quotes = feed.step()

    assert batches == [quotes]
    assert {quote.symbol for quote in quotes} == set(REFERENCE_PRICES)
    nifty = by_symbol(quotes)["NSE:NIFTY 50"]
    assert abs(nifty.last_price - REFERENCE_PRICES["NSE:NIFTY 50"]) < 50
    assert nifty.bid is None and nifty.volume == 0  # indices are quoted, not traded
    infy = by_symbol(quotes)["NSE:INFY"]
    assert infy.bid < infy.last_price < infy.ask and infy.bid_quantity > 0 and infy.ask_quantity > 0
    assert infy.last_price % Decimal("0.05") == 0 and infy.timestamp.tzinfo is not None


def test_same_seed_same_market_and_prices_move():
    first, _ = chain_feed(seed=11)
    second, _ = chain_feed(seed=11)
    runs = [[first.step() for _ in range(30)], [second.step() for _ in range(30)]]

    assert [[q.last_price for q in batch] for batch in runs[0]] == [[q.last_price for q in batch] for batch in runs[1]]
    infy_path = [by_symbol(batch)["NSE:INFY"].last_price for batch in runs[0]]
    assert len(set(infy_path)) > 5
    last = by_symbol(runs[0][-1])["NSE:INFY"]
    assert last.high >= max(infy_path) and last.low <= min(infy_path)
    assert last.open == by_symbol(runs[0][0])["NSE:INFY"].open
    third, _ = chain_feed(seed=12)
    assert [q.last_price for q in third.step()] != [q.last_price for q in runs[0][0]]


def test_options_follow_black_scholes_on_the_smile_and_futures_carry():
    nifty_chain()
    feed, _ = chain_feed()
    quotes = by_symbol(feed.step())

    assert "NFO:NIFTY2520324000CE" not in quotes  # expired contracts are not simulated
    spot = float(quotes["NSE:NIFTY 50"].last_price)
    now = NOW + timedelta(seconds=1)  # the clock moved once while loading
    years = (datetime(2026, 3, 10, 10, 0, tzinfo=UTC) - now).total_seconds() / (365 * 86400)
    strikes = np.array(list(STRIKES), dtype=float)
    volatility = smile_volatility(atm_volatility=feed.volatility[0] * 1.05, spot=spot, strike=strikes)
    for is_call, kind in ((True, "CE"), (False, "PE")):
        expected = black_scholes_price(
            spot=spot, strike=strikes, years=years, volatility=volatility, rate=RISK_FREE_RATE, is_call=is_call
        )
        published = np.array([float(quotes[f"NFO:NIFTY2631{strike}{kind}"].last_price) for strike in STRIKES])
        assert np.all(np.abs(published - expected) <= 0.1), (kind, published - expected)
    calls = [float(quotes[f"NFO:NIFTY2631{strike}CE"].last_price) for strike in STRIKES]
    assert calls == sorted(calls, reverse=True)
    for strike in STRIKES:  # put-call parity: one IV per strike
        call, put = (float(quotes[f"NFO:NIFTY2631{strike}{kind}"].last_price) for kind in ("CE", "PE"))
        assert abs((call - put) - (spot - strike * math.exp(-RISK_FREE_RATE * years))) < 0.2
    future = quotes["NFO:NIFTY26MARFUT"]
    future_years = (datetime(2026, 3, 31, 10, 0, tzinfo=UTC) - now).total_seconds() / (365 * 86400)
    assert abs(float(future.last_price) - spot * math.exp(RISK_FREE_RATE * future_years)) < 0.1
    assert future.oi > 0 and future.bid < future.last_price < future.ask


def test_the_smile_rises_away_from_the_money_and_more_for_puts():
    strikes = np.array([21000, 22000, 23000, 24000, 25000, 26000, 27000], dtype=float)
    iv = smile_volatility(atm_volatility=0.14, spot=24000, strike=strikes)

    assert iv[3] == pytest.approx(0.14)
    assert iv[0] > iv[1] > iv[2] > iv[3] < iv[4] < iv[5] < iv[6]
    assert iv[2] > iv[4] and iv[0] > iv[6]  # the same distance below the spot is dearer


def test_volume_and_open_interest_evolve_in_lots():
    nifty_chain()
    feed, _ = chain_feed()
    first = by_symbol(feed.step())
    for _ in range(60):
        last = by_symbol(feed.step())

    atm = f"NFO:NIFTY2631{round(float(first['NSE:NIFTY 50'].last_price) / 50) * 50}CE"
    far = "NFO:NIFTY263123800CE"
    assert last[atm].volume > first[atm].volume > 0 and last[atm].volume % 75 == 0
    assert last[atm].volume > last[far].volume
    assert last[atm].oi != first[atm].oi and last[atm].oi % 75 == 0
    assert last[atm].oi_change == last[atm].oi - (first[atm].oi - first[atm].oi_change)
    assert last["NSE:NIFTY 50"].oi == 0


def test_a_new_session_resets_the_day():
    feed, _ = chain_feed()
    feed.clock = simulated_clock_from(datetime(2026, 3, 2, 9, 59, 58, tzinfo=UTC), step=timedelta(seconds=1))
    for _ in range(3):
        before = by_symbol(feed.step())["NSE:INFY"]
    after = by_symbol(feed.step())["NSE:INFY"]  # 10:00 UTC is 15:30 IST: still Monday
    feed.clock = lambda: datetime(2026, 3, 3, 4, 0, tzinfo=UTC)
    tuesday = by_symbol(feed.step())["NSE:INFY"]

    assert after.volume >= before.volume
    assert tuesday.close == after.last_price and tuesday.open == tuesday.last_price
    assert tuesday.volume < after.volume


def test_the_instrument_cap_keeps_spots_futures_and_the_nearest_options():
    nifty_chain()
    feed, _ = chain_feed(max_instruments=10)
    symbols = {quote.symbol for quote in feed.step()}

    assert len(symbols) == 10 and {"NSE:NIFTY 50", "NFO:NIFTY26MARFUT"} <= symbols
    assert "NFO:NIFTY263123800PE" not in symbols


def test_steps_go_through_the_tick_bus_into_the_quote_cache():
    feed = SimulatedFeed(seed=3, symbols=["NSE:INFY", "NSE:TCS"])
    quotes = feed.step()

    assert len(quotes) == 2
    assert quote_get("NSE:INFY").last_price == by_symbol(quotes)["NSE:INFY"].last_price
    assert quote_get("NSE:RELIANCE") is None
