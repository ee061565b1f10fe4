"""DhanFeed through the real `dhanhq.MarketFeed` against the local Dhan v2 market feed simulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from algoterm.sandbox.simulators.dhan_feed import FULL, QUOTE, TICKER, DhanFeedSimulator
from brokers.protocol import BrokerUnavailable, InvalidInput, Quote, SessionExpired
from marketdata.feeds.base import Backoff
from marketdata.feeds.dhan import DhanFeed
from marketdata.tests.feed_helpers import WAIT, Collector, running

CLIENT_ID, ACCESS_TOKEN = "1100223344", "dhan-feed-access-token"


@pytest.fixture
def simulator() -> Iterator[DhanFeedSimulator]:
    with DhanFeedSimulator() as simulator:
        simulator.register_token(CLIENT_ID, ACCESS_TOKEN)
        simulator.previous_closes.update(
            {
                "NSE:INFY": (Decimal("1875.95"), 0),
                "NSE:SBIN": (Decimal("815.40"), 0),
                "NSE:NIFTY 50": (Decimal("24310.40"), 0),
            }
        )
        yield simulator


@pytest.fixture
def collector() -> Collector:
    return Collector()


def make_feed(simulator: DhanFeedSimulator, collector: Collector, symbols: list[str], **options) -> DhanFeed:
    options.setdefault("client_id", CLIENT_ID)
    options.setdefault("access_token", ACCESS_TOKEN)
    return DhanFeed(
        symbols=symbols,
        url=simulator.url,
        publish=collector,
        backoff=Backoff(initial=0.05, maximum=0.2),
        connect_timeout=5,
        **options,
    )


def stream_once(feed: DhanFeed, stop: threading.Event | None = None) -> BaseException | None:
    """`feed.stream` in a thread of its own (the SDK sets the thread's event loop); what it raised."""
    failures: list[BaseException] = []

    def stream() -> None:
        try:
            feed.stream(stop or threading.Event())
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the stream did not end"
    return failures[0] if failures else None


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
    )
    values.update(fields)
    return Quote(symbol="NSE:INFY", last_price=Decimal(last_price), **values)


def test_full_mode_ticks_arrive_as_exact_quotes(simulator, collector):
    simulator.previous_closes["NSE:INFY"] = (Decimal("1875.95"), 90_000)
    feed = make_feed(simulator, collector, ["NSE:INFY"])
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": FULL})
        assert simulator.push(infy_quote(oi=98_765)) == 1
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

    quote = collector.quotes[0]
    assert quote.symbol == "NSE:INFY"
    assert quote.last_price == Decimal("1890.05")
    assert (quote.bid, quote.ask) == (Decimal("1890.00"), Decimal("1890.10"))
    assert (quote.bid_quantity, quote.ask_quantity) == (125, 310)
    assert quote.volume == 4_567_890
    assert (quote.open, quote.high, quote.low) == (Decimal("1880.00"), Decimal("1900.55"), Decimal("1871.25"))
    assert quote.close == Decimal("1875.95")  # the previous close, sent once on subscription
    assert (quote.oi, quote.oi_change) == (98_765, 98_765 - 90_000)
    assert quote.timestamp is not None and quote.timestamp.tzinfo is not None


@pytest.mark.parametrize("price", ["0.05", "1.10", "99.99", "820.35", "24350.15", "52400.05", "123456.75"])
def test_prices_are_exact_to_the_paisa(simulator, collector, price):
    # Dhan sends float32 prices; the SDK's two-decimal formatting must give back the exact paisa.
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="ticker")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": TICKER})
        simulator.push(infy_quote(price))
        assert collector.wait_for(lambda quotes: len(quotes) == 1)
    assert str(collector.quotes[0].last_price) == price


def test_quote_mode_merges_the_separate_oi_packet(simulator, collector):
    simulator.previous_closes["NSE:INFY"] = (Decimal("1875.95"), 1_000)
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="quote")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": QUOTE})
        assert simulator.push(infy_quote(oi=1_500)) == 2  # the quote packet, then the OI packet
        assert collector.wait_for(lambda quotes: len(quotes) == 2)

    price_tick, oi_tick = collector.quotes
    assert price_tick.last_price == Decimal("1890.05") and price_tick.volume == 4_567_890
    assert price_tick.bid is None and price_tick.ask is None  # quote mode has no depth
    assert price_tick.close == Decimal("1875.95")
    assert (oi_tick.last_price, oi_tick.volume, oi_tick.oi, oi_tick.oi_change) == (
        Decimal("1890.05"),
        4_567_890,
        1_500,
        500,
    )


def test_ticker_mode_carries_the_last_price(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:NIFTY 50"], mode="ticker")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": TICKER, "NSE:NIFTY 50": TICKER})
        simulator.push(infy_quote(), Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24350.35")))
        assert collector.wait_for(lambda quotes: len(quotes) == 2)

    by_symbol = {quote.symbol: quote for quote in collector.quotes}
    assert by_symbol["NSE:INFY"].last_price == Decimal("1890.05")
    assert by_symbol["NSE:NIFTY 50"].last_price == Decimal("24350.35")  # an index, in segment IDX_I
    assert by_symbol["NSE:INFY"].volume == 0 and by_symbol["NSE:INFY"].close is None


def test_unsubscribe_and_subscribe_on_the_live_connection(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:SBIN"])
    with running(feed):
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY", "NSE:SBIN"})

        feed.unsubscribe(["NSE:SBIN"])
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY"})
        assert simulator.push(Quote(symbol="NSE:SBIN", last_price=Decimal("821.00"))) == 0
        assert feed.symbols == ["NSE:INFY"]

        feed.subscribe(["NSE:NIFTY 50"])
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": FULL, "NSE:NIFTY 50": FULL})
        simulator.push(Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24351.00")))
        assert collector.wait_for(lambda quotes: any(quote.symbol == "NSE:NIFTY 50" for quote in quotes))
    assert all(quote.symbol != "NSE:SBIN" for quote in collector.quotes)
    assert simulator.connections_accepted == 1


def test_a_bad_token_is_refused(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], access_token="not-a-real-token")
    failure = stream_once(feed)
    assert isinstance(failure, SessionExpired) and "809" in str(failure)
    assert simulator.subscriptions() == {}


def test_a_token_of_another_client_is_refused(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], client_id="9999999999")
    failure = stream_once(feed)
    assert isinstance(failure, SessionExpired) and "808" in str(failure)


def test_an_expired_session_ends_the_stream_with_the_reason(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"])
    threading.Timer(0.5, simulator.disconnect_all, args=(807,)).start()
    failure = stream_once(feed)
    assert isinstance(failure, SessionExpired) and "807" in str(failure)
    assert simulator.subscribe_requests == 1


def test_reconnects_and_resubscribes_after_the_connection_drops(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:NIFTY 50"], mode="quote")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": QUOTE, "NSE:NIFTY 50": QUOTE})
        simulator.push(infy_quote("1890.05"))
        assert collector.wait_for(lambda quotes: len(quotes) == 1)

        assert simulator.drop_connections() == 1
        assert simulator.wait_until(lambda: simulator.connections_accepted == 2, timeout=WAIT)
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": QUOTE, "NSE:NIFTY 50": QUOTE})

        simulator.push(infy_quote("1891.10"))
        assert collector.wait_for(lambda quotes: len(quotes) == 2)
    assert [quote.last_price for quote in collector.quotes] == [Decimal("1890.05"), Decimal("1891.10")]
    assert feed.connections_opened == 2


def test_the_feed_retries_until_the_market_feed_comes_back(collector):
    with DhanFeedSimulator() as simulator:
        port = simulator.port
    feed = DhanFeed(
        client_id=CLIENT_ID,
        access_token=ACCESS_TOKEN,
        symbols=["NSE:INFY"],
        mode="ticker",
        url=f"ws://127.0.0.1:{port}",
        publish=collector,
        backoff=Backoff(initial=0.05, maximum=0.2),
        connect_timeout=2,
    )
    assert isinstance(stream_once(feed), BrokerUnavailable)
    with running(feed):
        time.sleep(0.5)  # several refused connection attempts
        with DhanFeedSimulator(port=port) as simulator:
            simulator.register_token(CLIENT_ID, ACCESS_TOKEN)
            assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": TICKER})
            simulator.push(infy_quote())
            assert collector.wait_for(lambda quotes: len(quotes) == 1)


def test_the_sdk_class_url_is_left_alone(simulator, collector):
    from dhanhq.marketfeed import MarketFeed

    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="ticker")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": TICKER})
    assert MarketFeed.market_feed_wss == "wss://api-feed.dhan.co"


@pytest.mark.django_db  # unknown symbols are looked up in the instrument master
def test_symbols_and_modes_are_checked():
    with pytest.raises(InvalidInput):
        DhanFeed(client_id=CLIENT_ID, access_token=ACCESS_TOKEN, symbols=["NSE:NOSUCHTHING"])
    with pytest.raises(InvalidInput):
        DhanFeed(client_id=CLIENT_ID, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"], mode="depth")
    with pytest.raises(SessionExpired):
        DhanFeed(client_id=CLIENT_ID, access_token="", symbols=["NSE:INFY"])


def test_the_feed_url_comes_from_settings(settings):
    settings.DHAN_FEED_URL = "ws://127.0.0.1:1"
    assert DhanFeed(client_id=CLIENT_ID, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"]).url == "ws://127.0.0.1:1"
    del settings.DHAN_FEED_URL
    feed = DhanFeed(client_id=CLIENT_ID, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"])
    assert feed.url == "wss://api-feed.dhan.co"
    assert ACCESS_TOKEN not in repr(feed)


@pytest.mark.django_db
def test_built_from_a_connected_dhan_account(simulator, collector, trader):
    from brokers.models import AccountStatus, BrokerAccount

    account = BrokerAccount(owner=trader, broker="dhan", label="Dhan", status=AccountStatus.CONNECTED)
    account.credentials = {"client_id": CLIENT_ID, "access_token": ACCESS_TOKEN}
    account.session = {"access_token": ACCESS_TOKEN, "broker_user_id": CLIENT_ID}
    account.save()

    feed = DhanFeed.from_account(account, ["NSE:INFY"], url=simulator.url, publish=collector)
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": FULL})
        simulator.push(infy_quote())
        assert collector.wait_for(lambda quotes: len(quotes) == 1)
    assert simulator.wait_until(lambda: not simulator.connections)  # stopping said goodbye and closed

    kite = BrokerAccount(owner=trader, broker="zerodha", label="Kite")
    with pytest.raises(InvalidInput):
        DhanFeed.from_account(kite, ["NSE:INFY"])


def test_the_simulator_streams_its_price_source_and_accepts_tokens_it_is_told_of(collector):
    def price_source(symbol: str) -> Quote:
        return Quote(symbol=symbol, last_price=Decimal("1234.55"), close=Decimal("1200.00"), volume=42, oi=7)

    issued = {"issued-by-the-rest-simulator": CLIENT_ID}
    with DhanFeedSimulator(stream_interval=0.05, price_source=price_source, authorize=issued.get) as simulator:
        feed = make_feed(simulator, collector, ["NSE:INFY"], access_token="issued-by-the-rest-simulator")
        with running(feed):
            assert collector.wait_for(lambda quotes: len(quotes) >= 3)
    assert {(quote.last_price, quote.close, quote.volume, quote.oi) for quote in collector.quotes} == {
        (Decimal("1234.55"), Decimal("1200.00"), 42, 7)
    }
