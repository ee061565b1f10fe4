"""FyersFeed through the real `fyers_apiv3` FyersDataSocket against the local Fyers data-socket simulator."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from algoterm.sandbox.simulators.fyers_feed import INDEX_NAMES, FyersFeedSimulator
from brokers.protocol import BrokerUnavailable, InvalidInput, Quote, SessionExpired
from marketdata.feeds.base import Backoff
from marketdata.feeds.fyers import FyersFeed
from marketdata.tests.feed_helpers import WAIT, Collector, running

APP_ID = "XJ12345-100"
FAR_FUTURE, LONG_AGO = 4_102_444_800, 946_684_800  # 2100 and 2000: the SDK checks `exp` against the clock
PUSHED_AT = datetime(2026, 12, 8, 5, 0, 1, tzinfo=UTC)


def fyers_token(*, hsm_key: str = "hsm-key-of-xj00001", expires: int = FAR_FUTURE, user: str = "XJ00001") -> str:
    """A JWT-shaped Fyers access token (the SDK reads `exp` and `hsm_key` from it; nobody checks the signature)."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": "access_token", "fy_id": user, "app_id": APP_ID, "exp": expires, "hsm_key": hsm_key}
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


ACCESS_TOKEN = fyers_token()


def snapshot_price(symbol: str) -> Quote:
    """What the simulator's market says when a symbol is first subscribed (its snapshot)."""
    return Quote(
        symbol=symbol,
        last_price=Decimal("1000.00"),
        close=Decimal("990.00"),
        volume=10,
        timestamp=PUSHED_AT,
    )


@pytest.fixture
def simulator() -> Iterator[FyersFeedSimulator]:
    with FyersFeedSimulator(price_source=snapshot_price) as simulator:
        simulator.register_token(ACCESS_TOKEN)
        yield simulator


@pytest.fixture
def collector() -> Collector:
    return Collector()


def make_feed(simulator: FyersFeedSimulator, collector: Collector, symbols: list[str], **options) -> FyersFeed:
    options.setdefault("app_id", APP_ID)
    options.setdefault("access_token", ACCESS_TOKEN)
    return FyersFeed(
        symbols=symbols,
        url=simulator.url,
        symbol_token_url=simulator.symbol_token_url,
        index_mapping_url=simulator.index_mapping_url,
        publish=collector,
        backoff=Backoff(initial=0.05, maximum=0.2),
        connect_timeout=5,
        **options,
    )


def stream_once(feed: FyersFeed, stop: threading.Event | None = None) -> BaseException | None:
    """`feed.stream` in a thread of its own; what it raised."""
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
        oi=0,
        timestamp=PUSHED_AT,
    )
    values.update(fields)
    return Quote(symbol="NSE:INFY", last_price=Decimal(last_price), **values)


def priced(last_price: str):
    return lambda quotes: any(quote.last_price == Decimal(last_price) for quote in quotes)


def test_full_mode_ticks_arrive_as_exact_quotes(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"])
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
        assert collector.wait_for(priced("1000.00"))  # the snapshot sent on subscription
        assert simulator.push(infy_quote(oi=98_765)) == 1
        assert collector.wait_for(priced("1890.05"))

    snapshot, quote = collector.quotes[0], collector.latest("NSE:INFY")
    assert (snapshot.last_price, snapshot.close, snapshot.volume) == (Decimal("1000.00"), Decimal("990.00"), 10)
    assert quote.symbol == "NSE:INFY"
    assert (quote.bid, quote.ask) == (Decimal("1890.00"), Decimal("1890.10"))
    assert (quote.bid_quantity, quote.ask_quantity) == (125, 310)
    assert quote.volume == 4_567_890
    assert (quote.open, quote.high, quote.low) == (Decimal("1880.00"), Decimal("1900.55"), Decimal("1871.25"))
    assert quote.close == Decimal("1875.95")  # the previous close
    assert quote.oi == 98_765
    assert quote.timestamp == PUSHED_AT  # the exchange feed time


@pytest.mark.parametrize(
    ("precision", "multiplier", "price"),
    [(2, 1, "0.05"), (2, 1, "1.10"), (2, 1, "123456.75"), (4, 1, "83.1234"), (2, 100, "820.35"), (0, 1, "24350")],
)
def test_prices_are_exact_at_each_precision_and_multiplier(simulator, collector, precision, multiplier, price):
    simulator.price_scales["NSE:INFY"] = (precision, multiplier)
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="lite")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "lite"})
        assert collector.wait_for(lambda quotes: len(quotes) == 1)  # the snapshot
        simulator.push(infy_quote(price))
        assert collector.wait_for(lambda quotes: len(quotes) == 2)
    assert str(collector.quotes[-1].last_price) == price


def test_lite_mode_carries_the_last_price(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], mode="lite")
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "lite"})
        simulator.push(infy_quote("1890.05"))
        assert collector.wait_for(priced("1890.05"))
    quote = collector.latest("NSE:INFY")
    assert (quote.bid, quote.volume, quote.close) == (None, 0, None)


def test_an_index_is_followed_by_its_exchange_name(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:NIFTY 50", "NSE:INFY"])
    with running(feed):
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:NIFTY 50", "NSE:INFY"})
        nifty = Quote(
            symbol="NSE:NIFTY 50",
            last_price=Decimal("24350.35"),
            open=Decimal("24300.00"),
            high=Decimal("24400.10"),
            low=Decimal("24290.85"),
            close=Decimal("24310.40"),
            timestamp=PUSHED_AT,
        )
        assert simulator.push(nifty) == 1
        assert collector.wait_for(priced("24350.35"))
    quote = collector.latest("NSE:NIFTY 50")
    assert (quote.open, quote.high, quote.low, quote.close) == (
        Decimal("24300.00"),
        Decimal("24400.10"),
        Decimal("24290.85"),
        Decimal("24310.40"),
    )
    assert quote.bid is None and quote.volume == 0
    assert feed.index_mapping() == INDEX_NAMES  # read from the simulator, not from Fyers' public site


def test_unsubscribe_and_subscribe_on_the_live_connection(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:SBIN"])
    with running(feed):
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY", "NSE:SBIN"})

        feed.subscribe(["NSE:NIFTY 50"])
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY", "NSE:SBIN", "NSE:NIFTY 50"})
        # Topics of an earlier subscribe call than the last one (the SDK forgets those when unsubscribing).
        feed.unsubscribe(["NSE:SBIN"])
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY", "NSE:NIFTY 50"})
        assert simulator.push(Quote(symbol="NSE:SBIN", last_price=Decimal("821.00"))) == 0
        assert feed.symbols == ["NSE:INFY", "NSE:NIFTY 50"]

        simulator.push(Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24351.00"), timestamp=PUSHED_AT))
        assert collector.wait_for(priced("24351.00"))
    assert all(quote.last_price != Decimal("821.00") for quote in collector.quotes)
    assert simulator.connections_accepted == 1


@pytest.mark.django_db  # a symbol outside the well-known ones is looked up in the instrument master
def test_symbols_fyers_does_not_know_are_dropped_and_the_rest_followed(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:NOSUCHTHING"])
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
        simulator.push(infy_quote())
        assert collector.wait_for(priced("1890.05"))
        assert feed.symbols == ["NSE:INFY"]
    assert feed.connections_opened == 1


def test_a_token_fyers_does_not_know_is_refused_without_retrying(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"], access_token=fyers_token(hsm_key="not-issued"))
    failure = stream_once(feed)
    assert isinstance(failure, SessionExpired) and "11001" in str(failure)
    time.sleep(0.3)
    assert simulator.connections_accepted == 1  # the SDK did not reconnect on its own
    assert simulator.subscriptions() == {}


@pytest.mark.parametrize("token", [fyers_token(expires=LONG_AGO), "not-a-fyers-token", "a.b.c"])
def test_an_expired_or_malformed_token_ends_the_stream_before_connecting(simulator, collector, token):
    feed = make_feed(simulator, collector, ["NSE:INFY"], access_token=token)
    failure = stream_once(feed)
    assert isinstance(failure, SessionExpired)
    assert simulator.connections_accepted == 0
    assert token not in str(failure)


def test_a_session_revoked_while_streaming_ends_at_the_next_connection(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY"])
    stop = threading.Event()

    def revoke() -> None:
        simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
        simulator.revoke_tokens()
        simulator.drop_connections()

    threading.Thread(target=revoke, daemon=True).start()
    assert isinstance(stream_once(feed, stop), BrokerUnavailable)  # the drop
    assert isinstance(stream_once(feed, stop), SessionExpired)  # the reconnect is refused
    assert simulator.connections_accepted == 2


def test_reconnects_and_resubscribes_after_the_connection_drops(simulator, collector):
    feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:NIFTY 50"])
    with running(feed):
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY", "NSE:NIFTY 50"})
        simulator.push(infy_quote("1890.05"))
        assert collector.wait_for(priced("1890.05"))

        assert simulator.drop_connections() == 1
        assert simulator.wait_until(lambda: simulator.connections_accepted == 2, timeout=WAIT)
        assert simulator.wait_until(lambda: set(simulator.subscriptions()) == {"NSE:INFY", "NSE:NIFTY 50"})

        simulator.push(infy_quote("1891.10"))
        assert collector.wait_for(priced("1891.10"))
    infy = [quote.last_price for quote in collector.quotes if quote.symbol == "NSE:INFY"]
    assert infy == [Decimal("1000.00"), Decimal("1890.05"), Decimal("1000.00"), Decimal("1891.10")]
    assert feed.connections_opened == 2
    assert simulator.subscribe_requests == 2


def test_the_feed_retries_until_the_socket_comes_back(collector):
    with FyersFeedSimulator(price_source=snapshot_price) as simulator:
        port, http_port = simulator.port, int(simulator.http_url.rsplit(":", 1)[1])
        feed = make_feed(simulator, collector, ["NSE:INFY"], mode="lite")
    assert isinstance(stream_once(feed), BrokerUnavailable)
    simulator = FyersFeedSimulator(port=port, http_port=http_port, price_source=snapshot_price)
    simulator.register_token(ACCESS_TOKEN)
    try:
        with running(feed):
            time.sleep(0.5)  # several refused connection attempts
            simulator.start()
            assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "lite"}, timeout=WAIT)
            simulator.push(infy_quote())
            assert collector.wait_for(priced("1890.05"))
    finally:
        simulator.stop()


def test_symbols_beyond_the_cap_are_refused_and_the_rest_stream(collector):
    with FyersFeedSimulator(price_source=snapshot_price, max_symbols=1) as simulator:
        simulator.register_token(ACCESS_TOKEN)
        feed = make_feed(simulator, collector, ["NSE:INFY", "NSE:SBIN"])
        with running(feed):
            assert simulator.wait_until(lambda: len(simulator.refused_symbols) == 1)
            assert len(simulator.subscriptions()) == 1
            (followed,) = simulator.subscriptions()
            simulator.push(Quote(symbol=followed, last_price=Decimal("777.70"), timestamp=PUSHED_AT))
            assert collector.wait_for(priced("777.70"))
        assert feed.connections_opened == 1


def test_two_feeds_in_one_process_use_their_own_servers(simulator, collector):
    other_collector = Collector()
    with FyersFeedSimulator(price_source=snapshot_price) as other:
        other.register_token(ACCESS_TOKEN)
        first = make_feed(simulator, collector, ["NSE:INFY"])
        second = make_feed(other, other_collector, ["NSE:SBIN"])
        with running(first), running(second):
            assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
            assert other.wait_until(lambda: other.subscriptions() == {"NSE:SBIN": "full"})
            simulator.push(infy_quote("1890.05"))
            other.push(Quote(symbol="NSE:SBIN", last_price=Decimal("815.45"), timestamp=PUSHED_AT))
            assert collector.wait_for(priced("1890.05"))
            assert other_collector.wait_for(priced("815.45"))
    assert {quote.symbol for quote in collector.quotes} == {"NSE:INFY"}
    assert {quote.symbol for quote in other_collector.quotes} == {"NSE:SBIN"}


def test_stopping_ends_the_sdks_threads(simulator, collector):
    before = set(threading.enumerate())

    def started() -> list[str]:  # the feed's and the SDK's threads (not the simulator's workers)
        return [thread.name for thread in set(threading.enumerate()) - before if not thread.name.startswith("asyncio")]

    feed = make_feed(simulator, collector, ["NSE:INFY"])
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
        assert len(started()) >= 5  # the feed's, its control thread, the socket's reader, sender and pinger
    assert simulator.wait_until(lambda: not started(), timeout=5), started()
    assert simulator.wait_until(lambda: not simulator.connections)


def test_symbols_and_modes_are_checked():
    with pytest.raises(InvalidInput):
        FyersFeed(app_id=APP_ID, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"], mode="depth")
    with pytest.raises(SessionExpired):
        FyersFeed(app_id=APP_ID, access_token="", symbols=["NSE:INFY"])
    with pytest.raises(InvalidInput):
        FyersFeed(app_id=APP_ID, access_token=ACCESS_TOKEN, symbols=["XYZ:INFY"])


def test_the_urls_come_from_settings(settings):
    settings.FYERS_FEED_URL = "ws://127.0.0.1:1"
    settings.FYERS_SYMBOL_TOKEN_URL = "http://127.0.0.1:2/data/symbol-token"
    feed = FyersFeed(app_id=APP_ID, access_token=f"{APP_ID}:{ACCESS_TOKEN}", symbols=["NSE:INFY"])
    assert (feed.url, feed.symbol_token_url) == ("ws://127.0.0.1:1", "http://127.0.0.1:2/data/symbol-token")
    del settings.FYERS_FEED_URL
    feed = FyersFeed(app_id=APP_ID, access_token=ACCESS_TOKEN, symbols=["NSE:INFY"])
    assert feed.url == "wss://socket.fyers.in/hsm/v1-5/prod"
    assert ACCESS_TOKEN not in repr(feed)


@pytest.mark.django_db
def test_built_from_a_connected_fyers_account(simulator, collector, trader):
    from brokers.models import AccountStatus, BrokerAccount

    account = BrokerAccount(owner=trader, broker="fyers", label="Fyers", status=AccountStatus.CONNECTED)
    account.credentials = {"client_id": APP_ID, "secret_key": "app-secret"}
    account.session = {"access_token": ACCESS_TOKEN, "broker_user_id": "XJ00001"}
    account.save()

    feed = FyersFeed.from_account(
        account,
        ["NSE:INFY"],
        url=simulator.url,
        symbol_token_url=simulator.symbol_token_url,
        index_mapping_url=simulator.index_mapping_url,
        publish=collector,
    )
    with running(feed):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
        simulator.push(infy_quote())
        assert collector.wait_for(priced("1890.05"))
    assert simulator.wait_until(lambda: not simulator.connections)  # stopping closed the socket

    kite = BrokerAccount(owner=trader, broker="zerodha", label="Kite")
    with pytest.raises(InvalidInput):
        FyersFeed.from_account(kite, ["NSE:INFY"])


@pytest.mark.django_db
def test_ticks_follow_prices_published_in_the_simulated_market(collector):
    from brokers.prices import quote_at, quote_publish

    with FyersFeedSimulator(stream_interval=0.05) as simulator:
        simulator.register_token(ACCESS_TOKEN)
        feed = make_feed(simulator, collector, ["NSE:INFY"])
        with running(feed):
            assert simulator.wait_until(lambda: simulator.subscriptions() == {"NSE:INFY": "full"})
            quote_publish(quote_at("NSE:INFY", "1901.25"))
            assert collector.wait_for(priced("1901.25"))
    quote = collector.latest("NSE:INFY")
    assert (quote.bid, quote.ask) == (Decimal("1901.20"), Decimal("1901.30"))
