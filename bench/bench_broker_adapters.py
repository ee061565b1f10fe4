"""Our adapters' overhead: place + cancel of a resting limit order through each adapter against its simulator,
versus the same two calls made with the bare SDK in the same run, against the same simulator.

Simulator rate limits are lifted for the run (the point is our overhead, not the brokers' limits); the
simulators and the exchange behind them are the same in both columns, so the difference is our code."""

import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.quick import sized  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["DJANGO_ENV"] = "test"
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from algoterm.sandbox.simulators.base import RateWindows, SimulatorServer  # noqa: E402
from brokers.prices import quote_at, quote_publish  # noqa: E402
from brokers.protocol import AdapterConfig, BrokerSession, OrderRequest, OrderType, Product, Side  # noqa: E402

ROUNDS = sized(150, 10)
SYMBOL = "NSE:INFY"
UNLIMITED = [(10**9, 1.0)]
REQUEST = OrderRequest(SYMBOL, Side.BUY, 1, OrderType.LIMIT, Product.CNC, price=Decimal("1000.00"))


def timed_pair(bare, ours) -> tuple[list[float], list[float]]:
    """Rounds alternate between the two, so drift (a growing order table, caches) hits both alike."""
    bare()
    ours()  # warm-up: connections, imports
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(ROUNDS):
        for index, place_and_cancel in enumerate((bare, ours)):
            started = time.perf_counter()
            place_and_cancel()
            samples[index].append(time.perf_counter() - started)
    return samples


def zerodha_pair():
    from kiteconnect import KiteConnect

    from algoterm.sandbox.simulators.kite import KiteSimulator
    from brokers.adapters.zerodha import ZerodhaAdapter

    app = KiteSimulator()
    app.order_limits = app.other_limits = RateWindows(UNLIMITED)
    app.register_app("bench", "secret", "http://127.0.0.1:1/cb")
    server = SimulatorServer(app).start()
    token = app.issue_session("bench", "AB1")
    adapter = ZerodhaAdapter(
        credentials={"api_key": "bench", "api_secret": "secret"},
        session=BrokerSession(access_token=token),
        config=AdapterConfig(base_url=server.url),
        account_ref="bench",
    )
    kite = KiteConnect(api_key="bench", access_token=token, root=server.url)

    def bare():
        order_id = kite.place_order(
            variety="regular",
            exchange="NSE",
            tradingsymbol="INFY",
            transaction_type="BUY",
            quantity=1,
            product="CNC",
            order_type="LIMIT",
            price=1000.0,
            validity="DAY",
        )
        kite.cancel_order(variety="regular", order_id=order_id)

    def ours():
        adapter.cancel_order(adapter.place_order(REQUEST))

    return bare, ours, server


def dhan_pair():
    from dhanhq import DhanContext, dhanhq

    from algoterm.sandbox.simulators.dhan import DhanSimulator
    from brokers.adapters.dhan import DhanAdapter

    app = DhanSimulator(rate_limits={"orders": UNLIMITED, "quotes": UNLIMITED, "data": UNLIMITED})
    app.register_client("1100000001", "bench-token")
    server = SimulatorServer(app).start()
    adapter = DhanAdapter(
        credentials={"client_id": "1100000001", "access_token": "bench-token"},
        session=BrokerSession(access_token="bench-token", broker_user_id="1100000001"),
        config=AdapterConfig(base_url=f"{server.url}/v2"),
        account_ref="bench",
    )
    context = DhanContext("1100000001", "bench-token")
    context.get_dhan_http().base_url = f"{server.url}/v2"
    dhan = dhanhq(context)

    def bare():
        placed = dhan.place_order(
            security_id="1594",
            exchange_segment="NSE_EQ",
            transaction_type="BUY",
            quantity=1,
            order_type="LIMIT",
            product_type="CNC",
            price=1000.0,
        )
        dhan.cancel_order(placed["data"]["orderId"])

    def ours():
        adapter.cancel_order(adapter.place_order(REQUEST))

    return bare, ours, server


def fyers_pair():
    from fyers_apiv3 import fyersModel

    from algoterm.sandbox.simulators.fyers import FyersSimulator
    from brokers.adapters.fyers import FyersAdapter

    app = FyersSimulator()
    app._order_limits = app._other_limits = RateWindows(UNLIMITED)
    app.register_app("BENCH1-100", "secret")
    server = SimulatorServer(app).start()
    token = app._issue_token("BENCH1-100", "XB0001")
    config = AdapterConfig(base_url=f"{server.url}/api/v3", extra={"data_url": f"{server.url}/data"})
    adapter = FyersAdapter(
        credentials={"client_id": "BENCH1-100", "secret_key": "secret"},
        session=BrokerSession(access_token=token, broker_user_id="XB0001"),
        config=config,
        account_ref="bench",
    )
    fyersModel.Config.API, fyersModel.Config.DATA_API = config.base_url, config.extra["data_url"]
    fyers = fyersModel.FyersModel(client_id="BENCH1-100", token=token, log_path=tempfile.mkdtemp())

    def bare():
        placed = fyers.place_order(
            data={
                "symbol": "NSE:INFY-EQ",
                "qty": 1,
                "type": 1,
                "side": 1,
                "productType": "CNC",
                "limitPrice": 1000.0,
                "stopPrice": 0,
                "validity": "DAY",
                "disclosedQty": 0,
                "offlineOrder": False,
            }
        )
        fyers.cancel_order(data={"id": placed["id"]})

    def ours():
        adapter.cancel_order(adapter.place_order(REQUEST))

    return bare, ours, server


def main() -> None:
    call_command("migrate", verbosity=0)
    quote_publish(quote_at(SYMBOL, "1500.00", depth=10**6))
    rows = []
    for name, build in (("zerodha", zerodha_pair), ("dhan", dhan_pair), ("fyers", fyers_pair)):
        bare, ours, server = build()
        try:
            bare_samples, our_samples = timed_pair(bare, ours)
            bare_ms, ours_ms = statistics.median(bare_samples) * 1000, statistics.median(our_samples) * 1000
        finally:
            server.stop()
        rows.append((name, bare_ms, ours_ms))

    print(f"\nplace + cancel against the local simulators, median of {ROUNDS} rounds, {django.db.connection.vendor}")
    print("| broker  | bare SDK ms | our adapter ms | overhead ms | ratio |")
    print("|---------|-------------|----------------|-------------|-------|")
    for name, bare_ms, ours_ms in rows:
        print(
            f"| {name:<7} | {bare_ms:11.2f} | {ours_ms:14.2f} | {ours_ms - bare_ms:11.2f} | {ours_ms / bare_ms:5.2f} |"
        )


if __name__ == "__main__":
    main()
