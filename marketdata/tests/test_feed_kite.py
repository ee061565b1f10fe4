"""KiteFeed through the real `kiteconnect.KiteTicker` against the local Kite ticker simulator.

Twisted's reactor runs once per process: the feed starts it in a daemon thread on first use and every test's
connections share it, so these tests run in the pytest process (a stopped reactor would break the next test).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from algoterm.sandbox.simulators.kite_ticker import KiteTickerSimulator
from brokers.protocol import InvalidInput, Quote, SessionExpired
from marketdata.feeds.base import Backoff
from marketdata.feeds.kite import KiteFeed, quote_from_tick
from marketdata.tests.feed_helpers import WAIT, Collector, running

API_KEY, ACCESS_TOKEN = "kitefeedkey", "kite-feed-access-token"
INFY, SBIN, NIFTY = 408065, 779521, 256265


@pytest.fixture
def simulator() -> Iterator[KiteTickerSimulator]:
    with KiteTickerSimulator() as simulator:
        simulator.register_token(API_KEY, ACCESS_TOKEN)
        yield simulator


@pytest.fixture
def collector() -> Collector:
    return Collector()


def make_feed(simulator: KiteTickerSimulator, collector: Collector, symbols: list[str], **options) -> KiteFeed:
    options.setdefault("api_key", API_KEY)
    options.setdefault("access_token", ACCESS_TOKEN)
    return KiteFeed(
        symbols=symbols,
        url=simulator.url,
        publish=collector,
        backoff=Backoff(initial=0.05, maximum=0.2),
        connect_timeout=5,
        **options,
    )


def infy_quote(last_price: str = "1890.05", **fields) -> Quote:
    values = dict(
        bid=Decimal("1890.00"),
        ask=Decimal("1890.10"),
        bid_quantity=125,
        ask_quantity=310,
        volume=4_567_890,
        open=Decimal("1880.00"),
        high=Decimal("1900.55"),
        low=Decimal("1871.25"),
        close=Decimal("1875.95"),
        timestamp=datetime(2026, 3, 2, 4, 15, 7, tzinfo=UTC),
        oi=0,
    )
    values.update(fields)
    return Quote(symbol="NSE:INFY", last_price=Decimal(last_price), **values)


def test_full_mode_ticks_arrive_as_exact_quotes(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"])
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "full"})
        pushed = infy_quote(oi=98_765)
        assert simulator.push(pushed) == 1
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

    quote = collector.quotes[0]
    assert quote.symbol == "NSE:INFY"
    assert quote.last_price == Decimal("1890.05")
    assert (quote.bid, quote.ask) == (Decimal("1890.00"), Decimal("1890.10"))
    assert (quote.bid_quantity, quote.ask_quantity) == (125, 310)
    assert quote.volume == 4_567_890
    assert (quote.open, quote.high, quote.low, quote.close) == (
        Decimal("1880.00"),
        Decimal("1900.55"),
        Decimal("1871.25"),
        Decimal("1875.95"),
    )
    assert quote.oi == 98_765
    assert quote.timestamp == pushed.timestamp
    assert quote.timestamp.tzinfo is not None


@pytest.mark.parametrize("price", ["0.05", "1.10", "99.99", "820.35", "24350.15", "123456.75", "9999999.95"])
def test_prices_are_exact_to_the_paisa(simulator, collector, price):
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="ltp")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "ltp"})
        simulator.push(infy_quote(price))
        assert collector.wait_for(lambda quotes: len(quotes) == 1)
    assert str(collector.quotes[0].last_price) == price


def test_quote_mode_carries_volume_and_ohlc_but_no_depth(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="quote")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "quote"})
        simulator.push(infy_quote(oi=5))
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

    quote = collector.quotes[0]
    assert quote.last_price == Decimal("1890.05")
    assert quote.volume == 4_567_890
    assert quote.high == Decimal("1900.55")
    assert quote.bid is None and quote.ask is None
    assert quote.oi == 0  # only full mode carries open interest


def test_ltp_mode_carries_the_last_price_only(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="ltp")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "ltp"})
        simulator.push(infy_quote())
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

    quote = collector.quotes[0]
    assert quote.last_price == Decimal("1890.05")
    assert quote.volume == 0 and quote.open is None and quote.close is None


def test_index_ticks_use_the_index_packet(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:NIFTY 50"])
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {NIFTY: "full"})
        timestamp = datetime(2026, 3, 2, 9, 59, 59, tzinfo=UTC)
        simulator.push(
            Quote(
                symbol="NSE:NIFTY 50",
                last_price=Decimal("24350.35"),
                open=Decimal("24300.00"),
                high=Decimal("24410.10"),
                low=Decimal("24250.85"),
                close=Decimal("24310.40"),
                timestamp=timestamp,
            )
        )
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

    quote = collector.quotes[0]
    assert (quote.last_price, quote.open, quote.high, quote.low, quote.close) == (
        Decimal("24350.35"),
        Decimal("24300.00"),
        Decimal("24410.10"),
        Decimal("24250.85"),
        Decimal("24310.40"),
    )
    assert quote.timestamp == timestamp


def test_several_instruments_in_one_frame(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:SBIN"])
    with running(feed):
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {INFY, SBIN})
        sbin = Quote(symbol="NSE:SBIN", last_price=Decimal("820.35"), volume=10)
        simulator.push(infy_quote(), sbin)
        assert collector.wait_for(lambda quotes: len(quotes) == 2)
    assert {quote.symbol: quote.last_price for quote in collector.quotes} == {
        "NSE:INFY": Decimal("1890.05"),
        "NSE:SBIN": Decimal("820.35"),
    }


def test_unsubscribe_and_subscribe_on_the_live_connection(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:SBIN"])
    with running(feed):
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {INFY, SBIN})

        feed.unsubscribe(["NSE:SBIN"])
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {INFY})
        assert simulator.push(Quote(symbol="NSE:SBIN", last_price=Decimal("821.00"))) == 0
        assert feed.symbols == ["NSE:INFY"]

        feed.subscribe(["NSE:NIFTY 50"])
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "full", NIFTY: "full"})
        simulator.push(Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24351.00")))
        assert collector.wait_for(lambda quotes: any(quote.symbol == "NSE:NIFTY 50" for quote in quotes))
    assert all(quote.symbol != "NSE:SBIN" for quote in collector.quotes)
    assert simulator.connections_accepted == 1


def test_a_bad_token_is_refused_at_the_handshake(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], access_token="not-a-real-token")
    started = time.monotonic()
    with pytest.raises(SessionExpired):
        feed.stream(threading.Event())
    assert time.monotonic() - started < WAIT
    assert simulator.handshakes_refused == 1
    assert simulator.connections_accepted == 0


def test_reconnects_and_resubscribes_after_the_connection_drops(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:NIFTY 50"], mode="quote")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "quote", NIFTY: "quote"})
        simulator.push(infy_quote("1890.05"))
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

        assert simulator.drop_connections() == 1
        assert simulator.wait_until(lambda: simulator.connections_accepted == 2, timeout=WAIT)
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "quote", NIFTY: "quote"})

        simulator.push(infy_quote("1891.10"))
        assert collector.wait_for(lambda quotes: len(quotes) == 2)
    assert [quote.last_price for quote in collector.quotes] == [Decimal("1890.05"), Decimal("1891.10")]
    assert feed.connections_opened == 2
    assert simulator.subscribe_requests == 2


def test_the_feed_retries_until_the_ticker_comes_back(collector):
    with KiteTickerSimulator() as simulator:
        port = simulator.port
    feed = KiteFeed(
        api_key=API_KEY,
        access_token=ACCESS_TOKEN,
        symbols=["NSE:INFY"],
        url=f"ws://127.0.0.1:{port}",
        publish=collector,
        backoff=Backoff(initial=0.05, maximum=0.2),
        connect_timeout=2,
    )
    with running(feed):
        time.sleep(0.5)  # several refused connection attempts
        with KiteTickerSimulator(port=port) as simulator:
            simulator.register_token(API_KEY, ACCESS_TOKEN)
            assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "full"})
            simulator.push(infy_quote())
            assert collector.wait_for(lambda quotes: len(quotes) == 1)


def test_ticks_for_symbols_not_followed_are_dropped():
    feed = KiteFeed(api_key=API_KEY, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"], publish=Collector())
    feed._publish_ticks([{"instrument_token": SBIN, "mode": "ltp", "last_price": 820.35}])
    assert feed.publish.quotes == []


def test_sdk_tick_dicts_convert_to_quotes():
    tick = {
        "mode": "full",
        "instrument_token": INFY,
        "last_price": 1890.05,
        "volume_traded": 12,
        "ohlc": {"open": 1880.0, "high": 1900.5, "low": 1870.25, "close": 0.0},
        "oi": 3,
        "exchange_timestamp": None,
        "depth": {"buy": [{"price": 0.0, "quantity": 0}], "sell": [{"price": 1890.1, "quantity": 7}]},
    }
    quote = quote_from_tick("NSE:INFY", tick)
    assert quote.last_price == Decimal("1890.05") and quote.high == Decimal("1900.50")
    assert quote.close is None and quote.bid is None and quote.bid_quantity == 0
    assert (quote.ask, quote.ask_quantity, quote.oi) == (Decimal("1890.10"), 7, 3)
    assert quote.timestamp is not None and quote.timestamp.tzinfo is not None


@pytest.mark.django_db  # unknown symbols are looked up in the instrument master
def test_symbols_and_modes_are_checked():
    with pytest.raises(InvalidInput):
        KiteFeed(api_key=API_KEY, access_token=ACCESS_TOKEN, symbols=["NSE:NOSUCHTHING"])
    with pytest.raises(InvalidInput):
        KiteFeed(api_key=API_KEY, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"], mode="depth")
    with pytest.raises(SessionExpired):
        KiteFeed(api_key=API_KEY, access_token="", symbols=["NSE:INFY"])


def test_the_ticker_url_comes_from_settings(settings):
    settings.KITE_TICKER_URL = "ws://127.0.0.1:1"
    assert KiteFeed(api_key=API_KEY, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"]).url == "ws://127.0.0.1:1"
    del settings.KITE_TICKER_URL
    assert KiteFeed(api_key=API_KEY, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"]).url == "wss://ws.kite.trade"


def test_the_access_token_stays_out_of_the_repr():
    feed = KiteFeed(api_key=API_KEY, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"])
    assert ACCESS_TOKEN not in repr(feed)


@pytest.mark.django_db
def test_built_from_a_connected_zerodha_account(simulator, collector, trader):
    from brokers.models import AccountStatus, BrokerAccount

    account = BrokerAccount(owner=trader, broker="zerodha", label="Kite", status=AccountStatus.CONNECTED)
    account.credentials = {"api_key": API_KEY, "api_secret": "secret"}
    account.session = {"access_token": ACCESS_TOKEN, "broker_user_id": "AB1234"}
    account.save()

    feed = KiteFeed.from_account(account, ["NSE:INFY"], url=simulator.url, publish=collector)
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {INFY: "full"})
        simulator.push(infy_quote())
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

    paper = BrokerAccount(owner=trader, broker="paper", label="Paper")
    with pytest.raises(InvalidInput):
        KiteFeed.from_account(paper, ["NSE:INFY"])


def test_the_simulator_streams_its_price_source_and_accepts_tokens_it_is_told_of(collector):
    def price_source(symbol: str) -> Quote:
        return Quote(symbol=symbol, last_price=Decimal("1234.55"), volume=42, oi=7)

    sessions = {(API_KEY, "issued-by-the-rest-simulator")}
    with KiteTickerSimulator(
        stream_interval=0.05, price_source=price_source, authorize=lambda *pair: pair in sessions
    ) as simulator:
        feed = make_feed(simulator, collector, ["NSE:INFY"], access_token="issued-by-the-rest-simulator")
        with running(feed):
            assert collector.wait_for(lambda quotes: len(quotes) >= 3)
    assert {(quote.last_price, quote.volume, quote.oi) for quote in collector.quotes} == {(Decimal("1234.55"), 42, 7)}
