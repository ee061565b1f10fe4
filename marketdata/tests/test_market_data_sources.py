"""The platform's market-data source: designated accounts, failover when a session expires, subscriptions that follow
what users hold and watch, and the state health and the alert read. Through the real Kite SDK against the Kite
ticker simulator (the Twisted reactor is per process, as in test_feed_kite)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import pytest
from django.core.cache import cache

from accounts.models import User
from algoterm.console.alerts import _market_data
from algoterm.health import check_market_data
from algoterm.sandbox.simulators.kite_ticker import KiteTickerSimulator
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.protocol import Quote
from marketdata import watched
from marketdata.candles import MinuteCandleBuilder
from marketdata.feeds.base import Backoff
from marketdata.feeds.runner import PublishAndRecord
from marketdata.models import Instrument, InstrumentType
from marketdata.sources import STATE_KEY, MarketDataSupervisor, market_data_source_state, symbols_wanted
from marketdata.watched import symbols_watched_touch
from orders.models import Position

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "mdsourcekey"
INFY, SBIN, NIFTY = 408065, 779521, 256265
TODAY = date(2026, 12, 7)


@pytest.fixture
def simulator() -> Iterator[KiteTickerSimulator]:
    with KiteTickerSimulator() as simulator:
        simulator.register_token(API_KEY, "good-token")
        yield simulator


@pytest.fixture
def instruments(db):
    for symbol, token, kind in (
        ("NSE:NIFTY 50", NIFTY, InstrumentType.INDEX),
        ("NSE:INFY", INFY, InstrumentType.EQ),
        ("NSE:SBIN", SBIN, InstrumentType.EQ),
    ):
        exchange, _, tradingsymbol = symbol.partition(":")
        Instrument.objects.create(
            symbol=symbol,
            exchange=exchange,
            segment="INDICES" if kind == InstrumentType.INDEX else exchange,
            tradingsymbol=tradingsymbol,
            underlying=tradingsymbol,
            instrument_type=kind,
            kite_token=token,
            dhan_security_id={NIFTY: "13"}.get(token, ""),
        )
    cache.delete(STATE_KEY)
    cache.delete(watched._CACHE_KEY)  # what other tests' clients watched is not this test's


def zerodha_account(owner: User, *, token: str, priority: int | None, label: str) -> BrokerAccount:
    account = BrokerAccount(owner=owner, broker=Broker.ZERODHA, label=label, status=AccountStatus.CONNECTED)
    account.credentials = {"api_key": API_KEY, "api_secret": "secret"}
    account.session = {"access_token": token, "broker_user_id": "AB1234"}
    account.market_data_priority = priority
    account.save()
    return account


@pytest.fixture
def owner(trader) -> User:
    return trader


def supervise(simulator: KiteTickerSimulator, recorder: PublishAndRecord, **options) -> MarketDataSupervisor:
    return MarketDataSupervisor(
        recorder=recorder,
        poll_seconds=0.1,
        resubscribe_seconds=options.pop("resubscribe_seconds", 0.2),
        feed_options={
            "kite": {"url": simulator.url, "backoff": Backoff(initial=0.05, maximum=0.2), "connect_timeout": 5},
            **options.pop("feed_options", {}),
        },
        **options,
    )


class Running:
    def __init__(self, supervisor: MarketDataSupervisor) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=supervisor.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the supervisor did not stop"


def test_an_expired_session_fails_over_to_the_next_designated_account(simulator, instruments, owner):
    first = zerodha_account(owner, token="expired-token", priority=1, label="first")
    second = zerodha_account(owner, token="good-token", priority=2, label="second")
    zerodha_account(owner, token="good-token", priority=None, label="not designated")
    recorder = PublishAndRecord(builder=MinuteCandleBuilder())
    supervisor = supervise(simulator, recorder)

    with Running(supervisor):
        # The first account's token is refused at the handshake: it is marked expired and the second takes over.
        assert simulator.wait_until(lambda: simulator.subscriptions() == {NIFTY: "full"}, timeout=15)
        assert simulator.push(Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24400.50"))) == 1
        assert simulator.wait_until(lambda: recorder.ticks >= 1)
        assert simulator.wait_until(lambda: (market_data_source_state() or {}).get("ticks", 0) >= 1)

    first.refresh_from_db()
    assert first.status == AccountStatus.EXPIRED
    assert first.owner.notifications.filter(kind="broker.session_expired").exists()
    state = market_data_source_state()
    assert state["account_id"] == second.pk and state["broker"] == "zerodha" and state["failovers"] == 1
    assert simulator.handshakes_refused >= 1


def test_a_feed_that_brings_no_ticks_while_the_market_is_open_hands_over(simulator, instruments, owner, settings):
    settings.MARKET_ALWAYS_OPEN = settings.BROKER_SIMULATORS = True  # the simulated market is open now
    settings.MARKET_DATA_STALL_SECONDS = 1.0
    with socket.socket() as probe:  # a port nobody listens on: Dhan's feed host is unreachable
        probe.bind(("127.0.0.1", 0))
        unreachable = f"ws://127.0.0.1:{probe.getsockname()[1]}"
    dhan = BrokerAccount(owner=owner, broker=Broker.DHAN, label="dhan", status=AccountStatus.CONNECTED)
    dhan.credentials = {"client_id": "1000000001", "access_token": "dhan-token"}
    dhan.session = {"access_token": "dhan-token", "broker_user_id": "1000000001"}
    dhan.market_data_priority = 1
    dhan.save()
    kite = zerodha_account(owner, token="good-token", priority=2, label="kite")
    recorder = PublishAndRecord(builder=MinuteCandleBuilder())
    dhan_options = {"url": unreachable, "backoff": Backoff(initial=0.05, maximum=0.2), "connect_timeout": 1}

    with Running(supervise(simulator, recorder, feed_options={"dhan": dhan_options})):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {NIFTY: "full"}, timeout=15)
        assert simulator.push(Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24410.00"))) == 1
        assert simulator.wait_until(lambda: (market_data_source_state() or {}).get("ticks", 0) >= 1)

    state = market_data_source_state()
    assert state["account_id"] == kite.pk and state["failovers"] == 1
    dhan.refresh_from_db()
    assert dhan.status == AccountStatus.CONNECTED  # its session is fine; its feed was silent


def test_subscriptions_follow_positions_and_watched_symbols(simulator, instruments, owner):
    account = zerodha_account(owner, token="good-token", priority=1, label="feeder")
    recorder = PublishAndRecord(builder=MinuteCandleBuilder())

    with Running(supervise(simulator, recorder)):
        assert simulator.wait_until(lambda: simulator.subscriptions() == {NIFTY: "full"}, timeout=15)
        # A user opens a position in INFY, a client watches SBIN: the feed follows both without reconnecting.
        Position.objects.create(
            user=owner, account=account, symbol="NSE:INFY", product="MIS", quantity=5, trading_day=TODAY
        )
        symbols_watched_touch(["NSE:SBIN"])
        assert simulator.wait_until(
            lambda: simulator.subscriptions() == {NIFTY: "full", INFY: "full", SBIN: "full"}, timeout=15
        )
        # The position is closed and nobody needs INFY any more: it is dropped at the next round.
        Position.objects.filter(symbol="NSE:INFY").update(quantity=0)
        assert simulator.wait_until(lambda: simulator.subscriptions() == {NIFTY: "full", SBIN: "full"}, timeout=15)
    assert simulator.connections_accepted == 1


def test_a_second_supervisor_stands_by_and_takes_over_when_the_first_stops(simulator, instruments, owner):
    zerodha_account(owner, token="good-token", priority=1, label="feeder")
    first = supervise(simulator, PublishAndRecord(builder=MinuteCandleBuilder()), lease_seconds=1)
    second = supervise(simulator, PublishAndRecord(builder=MinuteCandleBuilder()), lease_seconds=1)
    holding_first = Running(first).__enter__()
    try:
        assert simulator.wait_until(lambda: first.running is not None, timeout=15)
        with Running(second):
            time.sleep(1.5)  # both step many times, past the lease's time to live: the holder renews, one feeds
            assert second.running is None and simulator.connections_accepted == 1
            holding_first.__exit__(None, None, None)  # the holder stops: the standby takes over
            assert simulator.wait_until(lambda: second.running is not None, timeout=10)
            assert simulator.wait_until(lambda: simulator.subscriptions() == {NIFTY: "full"}, timeout=15)
            assert simulator.connections_accepted == 2
    finally:
        holding_first.__exit__(None, None, None)


def test_wanted_symbols_are_ordered_by_need_and_capped_at_the_socket_limit(instruments, owner):
    account = zerodha_account(owner, token="good-token", priority=1, label="feeder")
    Position.objects.create(
        user=owner, account=account, symbol="NSE:SBIN", product="MIS", quantity=-3, trading_day=TODAY
    )
    symbols_watched_touch(["NSE:INFY", "NSE:UNLISTED"])

    assert symbols_wanted(feed="kite") == ["NSE:NIFTY 50", "NSE:SBIN", "NSE:INFY"]
    # The index first, then what users hold, then what they watch; nothing the broker cannot stream.
    assert symbols_wanted(feed="kite", limit=2) == ["NSE:NIFTY 50", "NSE:SBIN"]
    Instrument.objects.filter(symbol="NSE:SBIN").update(kite_token=None)
    assert "NSE:SBIN" not in symbols_wanted(feed="kite")


def test_health_and_the_alert_say_when_designated_accounts_cannot_feed(simulator, instruments, owner):
    assert check_market_data().status == "up"  # nothing designated: nothing to feed from
    assert _market_data(now=None) == []
    zerodha_account(owner, token="expired-token", priority=1, label="only")
    recorder = PublishAndRecord(builder=MinuteCandleBuilder())
    supervisor = supervise(simulator, recorder)

    with Running(supervisor):
        assert simulator.wait_until(lambda: (market_data_source_state() or {}).get("failovers") == 1, timeout=15)
        assert simulator.wait_until(lambda: not (market_data_source_state() or {}).get("live", True))

    health = check_market_data()
    assert health.status == "down" and "zerodha" in health.detail
    findings = _market_data(now=None)
    assert [finding.condition for finding in findings] == ["feed.source_down"]
    assert findings[0].severity == "critical"
