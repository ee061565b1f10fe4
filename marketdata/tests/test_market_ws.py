"""/ws/market-data over the Redis channel layer, through the real ASGI stack."""

import asyncio

import pytest
import redis
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from rest_framework_simplejwt.tokens import AccessToken

from accounts.tests.factories import UserFactory
from algoterm.asgi import application
from brokers.prices import quote_at
from marketdata.consumers import CLOSE_TOO_SLOW, MarketDataConsumer
from marketdata.models import Instrument
from marketdata.quotes import quotes_put
from marketdata.ticks import ticks_publish

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

_open: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def _close_worker_thread_connections():
    yield
    while _open:
        await _open.pop().disconnect()
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
async def user():
    return await database_sync_to_async(UserFactory)()


@pytest.fixture
async def market():
    def prepare():
        Instrument.objects.create(
            symbol="NSE:RELIANCE", exchange="NSE", segment="NSE", tradingsymbol="RELIANCE", instrument_type="EQ"
        )
        quotes_put([quote_at("NSE:INFY", "1890.40"), quote_at("NSE:NIFTY 50", "24350.15")])

    await database_sync_to_async(prepare)()


async def connect(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/market-data?token={AccessToken.for_user(user)}")
    _open.append(communicator)
    connected, _ = await communicator.connect()
    assert connected
    await expect(communicator, "server_ready")
    return communicator


async def expect(communicator, message_type: str, timeout: float = 3) -> dict:
    message = await communicator.receive_json_from(timeout=timeout)
    assert message["t"] == message_type, message
    return message["p"]


async def subscribe(communicator, symbols, mode="ltp", action="subscribe") -> None:
    await communicator.send_json_to({"t": "subscription", "p": {"action": action, "symbols": symbols, "mode": mode}})


async def publish(*quotes) -> None:
    await database_sync_to_async(ticks_publish)(list(quotes))


async def test_unauthenticated_gets_4401():
    communicator = WebsocketCommunicator(application, "/ws/market-data")
    _open.append(communicator)
    assert (await communicator.connect())[0]
    assert (await expect(communicator, "error"))["code"] == "AUTH_REQUIRED"
    assert await communicator.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}


async def test_subscribe_snapshot_then_ticks(user, market):
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY", "nse:reliance"])

    snapshot = await expect(communicator, "snapshot")
    assert snapshot["missing"] == ["NSE:RELIANCE"]
    assert snapshot["quotes"]["NSE:INFY"]["ltp"] == 1890.4 and set(snapshot["quotes"]["NSE:INFY"]) == {
        "symbol",
        "ltp",
        "timestamp",
    }

    await publish(quote_at("NSE:INFY", "1891.05"), quote_at("NSE:TCS", "4150"), quote_at("NSE:RELIANCE", "1290.5"))
    # One message for the batch, with the subscribed symbols that moved and nothing else.
    ticks = (await expect(communicator, "ticks"))["ticks"]
    assert [(tick["symbol"], tick["ltp"]) for tick in ticks] == [("NSE:INFY", 1891.05), ("NSE:RELIANCE", 1290.5)]
    assert await communicator.receive_nothing(timeout=0.3)


async def test_quote_mode_sends_the_full_quote_and_request_snapshot(user, market):
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY"], mode="quote")
    assert (await expect(communicator, "snapshot"))["quotes"]["NSE:INFY"]["bid"] == 1890.35

    await publish(quote_at("NSE:INFY", "1892"))
    [tick] = (await expect(communicator, "ticks"))["ticks"]
    assert tick["ltp"] == 1892.0 and tick["ask"] == 1892.05 and {"volume", "oi", "close", "timestamp"} <= set(tick)

    await communicator.send_json_to({"t": "request_snapshot", "p": {}})
    assert (await expect(communicator, "snapshot"))["quotes"]["NSE:INFY"]["ltp"] == 1892.0


async def test_unsubscribe_stops_ticks(user, market):
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY", "NSE:NIFTY 50"])
    await expect(communicator, "snapshot")
    await subscribe(communicator, ["NSE:INFY"], action="unsubscribe")
    await communicator.send_json_to({"t": "ping", "p": {}})
    await expect(communicator, "pong")  # the unsubscribe is done once the ping behind it is answered

    await publish(quote_at("NSE:INFY", "1900"), quote_at("NSE:NIFTY 50", "24400"))
    assert [tick["symbol"] for tick in (await expect(communicator, "ticks"))["ticks"]] == ["NSE:NIFTY 50"]
    assert await communicator.receive_nothing(timeout=0.3)


async def test_unknown_symbols_are_refused_and_nothing_is_subscribed(user, market):
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY", "NSE:NOPE"])
    error = await expect(communicator, "error")
    assert error["code"] == "VALIDATION_ERROR" and error["recoverable"] is True and "NSE:NOPE" in error["message"]

    await publish(quote_at("NSE:INFY", "1900"))
    assert await communicator.receive_nothing(timeout=0.3)


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "watch", "symbols": ["NSE:INFY"]},
        {"action": "subscribe", "symbols": []},
        {"action": "subscribe", "symbols": "NSE:INFY"},
        {"action": "subscribe", "symbols": ["NSE:INFY"], "mode": "full"},
    ],
)
async def test_bad_subscriptions_are_refused(user, payload):
    communicator = await connect(user)
    await communicator.send_json_to({"t": "subscription", "p": payload})
    assert (await expect(communicator, "error"))["code"] == "VALIDATION_ERROR"


async def test_symbol_limit_per_connection(user, market, settings):
    settings.WS_MAX_SYMBOLS = 2
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY", "NSE:NIFTY 50"])
    await expect(communicator, "snapshot")

    await subscribe(communicator, ["NSE:RELIANCE"])
    error = await expect(communicator, "error")
    assert error["code"] == "VALIDATION_ERROR" and error["recoverable"] is True and "At most 2" in error["message"]
    await subscribe(communicator, ["NSE:INFY"], mode="quote")  # a mode change is not a new symbol
    await expect(communicator, "snapshot")


async def test_a_client_reading_slowly_gets_the_latest_prices_conflated(user, market, monkeypatch):
    gate = asyncio.Event()
    original = MarketDataConsumer.send

    async def send(consumer, text_data=None, **kwargs):
        if '"ticks"' in (text_data or ""):
            await gate.wait()  # the client reads nothing until the gate opens: its socket send does not complete
        await original(consumer, text_data, **kwargs)

    monkeypatch.setattr(MarketDataConsumer, "send", send)
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY", "NSE:NIFTY 50"])
    await expect(communicator, "snapshot")

    await publish(quote_at("NSE:INFY", "1900"))
    await asyncio.sleep(0.2)  # the first batch is on its way (held at the gate)
    for step in range(1, 20):
        await publish(quote_at("NSE:INFY", 1900 + step), quote_at("NSE:NIFTY 50", 24400 + step))
    await asyncio.sleep(0.2)
    gate.set()

    first = (await expect(communicator, "ticks"))["ticks"]
    second = (await expect(communicator, "ticks"))["ticks"]
    assert [(tick["symbol"], tick["ltp"]) for tick in first] == [("NSE:INFY", 1900.0)]
    # Nineteen batches while the first was unread: one message, the newest price of each symbol.
    assert {tick["symbol"]: tick["ltp"] for tick in second} == {"NSE:INFY": 1919.0, "NSE:NIFTY 50": 24419.0}
    assert await communicator.receive_nothing(timeout=0.3)


async def test_a_slow_client_is_dropped_without_holding_up_the_others(user, market, settings, monkeypatch):
    settings.WS_SLOW_CLIENT_SECONDS = 0.5
    slow_user = await database_sync_to_async(UserFactory)()
    original = MarketDataConsumer.send

    async def send(consumer, text_data=None, **kwargs):
        if consumer.user.pk == slow_user.pk and '"ticks"' in (text_data or ""):
            await asyncio.sleep(3600)  # a client that stopped reading: its socket send never completes
        await original(consumer, text_data, **kwargs)

    monkeypatch.setattr(MarketDataConsumer, "send", send)
    fast, slow = await connect(user), await connect(slow_user)
    for communicator in (fast, slow):
        await subscribe(communicator, ["NSE:INFY"])
        await expect(communicator, "snapshot")

    for step in range(10):
        await publish(quote_at("NSE:INFY", 1900 + step))
        assert (await expect(fast, "ticks"))["ticks"][0]["ltp"] == 1900.0 + step
        await asyncio.sleep(0.1)

    error = await expect(slow, "error")
    assert error["code"] == "RATE_LIMITED" and error["recoverable"] is False
    assert await slow.receive_output(timeout=3) == {"type": "websocket.close", "code": CLOSE_TOO_SLOW}


@pytest.mark.skipif(settings.EMBEDDED, reason="the tick bus is Redis pub/sub only when distributed")
async def test_when_the_tick_bus_comes_back_subscribers_get_the_prices_that_moved_meanwhile(user, market):
    communicator = await connect(user)
    await subscribe(communicator, ["NSE:INFY"])
    await expect(communicator, "snapshot")

    def bus_drops_while_the_price_moves() -> None:
        quotes_put([quote_at("NSE:INFY", "1950")])  # into the cache, never published: the bus is "down"
        client = redis.Redis.from_url(settings.REDIS_URL)
        hubs = [c for c in client.client_list() if c["name"] == f"{settings.REDIS_KEY_PREFIX}:tick-hub"]
        assert hubs, "this process's tick hub is not connected"
        for hub in hubs:
            client.client_kill_filter(_id=hub["id"])
        client.close()

    await database_sync_to_async(bus_drops_while_the_price_moves)()
    [tick] = (await expect(communicator, "ticks", timeout=10))["ticks"]
    assert (tick["symbol"], tick["ltp"]) == ("NSE:INFY", 1950.0)

    await publish(quote_at("NSE:INFY", "1951"))  # and the bus carries ticks again
    assert (await expect(communicator, "ticks"))["ticks"][0]["ltp"] == 1951.0
