"""What a whole option chain costs: (a) implied volatility and Greeks for 2 x 200 strikes, vectorised against one
option at a time (scipy's brentq per option); (b) GET /api/option-chain for that chain against GET /api/version,
through Django's test client in one process.

Runs on a throw-away SQLite database (and the in-process cache) unless DATABASE_URL is set."""

import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.quick import sized  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework_simplejwt.tokens import AccessToken  # noqa: E402

from accounts.models import User  # noqa: E402
from algoterm.sandbox.options_reference import black_scholes_greeks_scalar, implied_volatility_scalar  # noqa: E402
from billing.models import Plan, Subscription, SubscriptionStatus  # noqa: E402
from brokers.protocol import Quote  # noqa: E402
from marketdata.chain import MARKET_TIMEZONE, expiry_moment, risk_free_rate  # noqa: E402
from marketdata.models import Instrument, InstrumentType  # noqa: E402
from marketdata.options import black_scholes_price, implied_volatility_and_greeks  # noqa: E402
from marketdata.quotes import quotes_put  # noqa: E402

SPOT = 24_000.0
STRIKES_PER_SIDE = 200
STRIKE_STEP = 50.0
DAYS_TO_EXPIRY = 14
REQUESTS = sized(300, 20)
UNDERLYING = "BENCHNIFTY"


def synthetic_chain(*, years: float, rate: float) -> dict[str, np.ndarray]:
    """200 strikes around the spot, calls and puts, priced off a volatility smile and rounded to the 0.05 tick."""
    strikes = SPOT + STRIKE_STEP * (np.arange(STRIKES_PER_SIDE) - STRIKES_PER_SIDE // 2)
    strike = np.concatenate([strikes, strikes])
    is_call = np.concatenate([np.ones(STRIKES_PER_SIDE, bool), np.zeros(STRIKES_PER_SIDE, bool)])
    volatility = 0.13 + 0.6 * np.log(strike / SPOT) ** 2
    price = black_scholes_price(
        spot=SPOT, strike=strike, years=years, volatility=volatility, rate=rate, is_call=is_call
    )
    return {"strike": strike, "is_call": is_call, "price": np.maximum(np.round(price / 0.05) * 0.05, 0.05)}


def median_ms(function, *, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def bench_analytics(*, years: float, rate: float) -> tuple[float, float]:
    chain = synthetic_chain(years=years, rate=rate)

    def vectorised():
        return implied_volatility_and_greeks(
            price=chain["price"], spot=SPOT, strike=chain["strike"], years=years, rate=rate, is_call=chain["is_call"]
        )

    def one_at_a_time():
        results = []
        for price, strike, is_call in zip(chain["price"].tolist(), chain["strike"].tolist(), chain["is_call"].tolist()):
            arguments = {"spot": SPOT, "strike": strike, "years": years, "rate": rate, "is_call": is_call}
            volatility = implied_volatility_scalar(price=price, **arguments)
            results.append((volatility, *black_scholes_greeks_scalar(volatility=volatility, **arguments)))
        return results

    solved_vectorised = vectorised().implied_volatility
    solved_scalar = np.array([row[0] for row in one_at_a_time()])
    both = np.isfinite(solved_vectorised) & np.isfinite(solved_scalar)
    assert np.array_equal(np.isfinite(solved_vectorised), np.isfinite(solved_scalar))
    assert np.allclose(solved_vectorised[both], solved_scalar[both], rtol=1e-8)
    return median_ms(vectorised, repeats=200), median_ms(one_at_a_time, repeats=10)


def seed_chain(*, rate: float) -> str:
    today = timezone.now().astimezone(MARKET_TIMEZONE).date()
    expiry = today + timedelta(days=DAYS_TO_EXPIRY)
    years = (expiry_moment(expiry=expiry) - timezone.now()).total_seconds() / (365 * 86400)
    chain = synthetic_chain(years=years, rate=rate)
    Instrument.objects.filter(underlying=UNDERLYING).delete()
    instruments, quotes = [], []
    for position, (strike, is_call, price) in enumerate(zip(chain["strike"], chain["is_call"], chain["price"])):
        kind = InstrumentType.CE if is_call else InstrumentType.PE
        symbol = f"NFO:{UNDERLYING}{expiry:%y%b}{int(strike)}{kind}".upper()
        instruments.append(
            Instrument(
                symbol=symbol,
                exchange="NFO",
                segment="NFO-OPT",
                tradingsymbol=symbol[4:],
                underlying=UNDERLYING,
                instrument_type=kind,
                expiry=expiry,
                strike=Decimal(str(strike)),
                lot_size=75,
            )
        )
        open_interest = 1000 + 37 * position
        quotes.append(
            Quote(
                symbol=symbol,
                last_price=Decimal(str(round(float(price), 2))),
                volume=10 * open_interest,
                oi=open_interest,
                oi_change=position,
            )
        )
    Instrument.objects.bulk_create(instruments)
    quotes.append(Quote(symbol=f"NSE:{UNDERLYING}", last_price=Decimal(str(SPOT))))
    quotes_put(quotes)
    return expiry.isoformat()


def timed_requests(client: Client, path: str, **headers) -> list[float]:
    samples = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(path, **headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content[:500]
    return samples


def percentile_ms(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] * 1e3


def main() -> None:
    call_command("migrate", verbosity=0)
    rate = risk_free_rate()
    vectorised_ms, scalar_ms = bench_analytics(years=DAYS_TO_EXPIRY / 365, rate=rate)

    user = User.objects.filter(email="bench@example.com").first() or User.objects.create_user(
        "bench@example.com", "Bench-Password-2026", name="Bench", phone="+919800000099"
    )
    # Its requests go through the plan's request budget as anyone's do, on a plan whose budget a benchmark does not
    # spend in its first second (a public plan's would answer 429 and the bench would time the refusals).
    plan, _ = Plan.objects.get_or_create(
        code="bench-chain",
        defaults={
            "name": "Bench",
            "max_broker_accounts": 1,
            "max_running_strategies": 1,
            "live_trading": False,
            "api_requests_per_minute": 10**6,
            "websocket_symbols": 1000,
            "is_active": False,
        },
    )
    Subscription.objects.filter(user=user).exclude(plan=plan).delete()
    Subscription.objects.get_or_create(user=user, plan=plan, defaults={"status": SubscriptionStatus.ACTIVE})
    expiry = seed_chain(rate=rate)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {AccessToken.for_user(user)}"}
    chain_path = f"/api/option-chain?symbol={UNDERLYING}&expiry={expiry}"
    client = Client()
    timed_requests(client, "/api/version")  # warm-up
    timed_requests(client, chain_path, **auth)
    version = timed_requests(client, "/api/version")
    chain = timed_requests(client, chain_path, **auth)

    options = 2 * STRIKES_PER_SIDE
    print(f"\noption chain, {STRIKES_PER_SIDE} strikes x CE/PE = {options} options, {django.db.connection.vendor}")
    print("| what                                          |  p50 ms  |  p99 ms  |")
    print("|-----------------------------------------------|----------|----------|")
    print(f"| IV + Greeks, vectorised (median of 200)       | {vectorised_ms:8.2f} |          |")
    print(f"| IV + Greeks, one option at a time (brentq)    | {scalar_ms:8.2f} |          |")
    print(
        f"| GET /api/version ({REQUESTS} requests)              | "
        f"{percentile_ms(version, 0.5):8.2f} | {percentile_ms(version, 0.99):8.2f} |"
    )
    print(
        f"| GET /api/option-chain ({REQUESTS} requests)         | "
        f"{percentile_ms(chain, 0.5):8.2f} | {percentile_ms(chain, 0.99):8.2f} |"
    )
    print(f"speed-up vectorised vs one at a time: {scalar_ms / vectorised_ms:.0f}x")
    print(f"ratio option-chain / version (p50): {percentile_ms(chain, 0.5) / percentile_ms(version, 0.5):.1f}x")


if __name__ == "__main__":
    main()
