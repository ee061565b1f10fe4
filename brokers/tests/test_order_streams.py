"""Order sockets: the real `dhanhq` `OrderUpdate` and `fyers-apiv3` `FyersOrderSocket` against the order-socket
simulators on free ports, then the supervisor keeping one stream per live account (real PostgreSQL and Redis)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.tests.factories import UserFactory
from algoterm.backoff import Backoff
from algoterm.sandbox.simulators.dhan_order_socket import DhanOrderSocketSimulator
from algoterm.sandbox.simulators.fyers_order_socket import FyersOrderSocketSimulator
from brokers import exchange
from brokers.adapters.fyers import LOG_DIRECTORY
from brokers.models import AccountStatus, Broker, BrokerAccount, Venue
from brokers.protocol import BrokerUnavailable, OrderRequest, OrderType, Product, SessionExpired, Side
from brokers.signals import broker_order_update_received
from brokers.streams import pushed_order_tag
from brokers.streams.dhan import DhanOrderStream
from brokers.streams.fyers import FyersOrderStream
from brokers.streams.supervisor import (
    OrderStreamSupervisor,
    order_stream_state,
    order_stream_states,
    order_streams_run,
)

DHAN_CLIENT = "1100000077"
DHAN_TOKEN = "dhan-order-socket-token-5e1f"
FYERS_APP = "XJ12345-100"
FYERS_USER = "XJ00042"
FYERS_TOKEN = "fyers.order-socket.token-9a7b"
SYMBOL = "NSE:INFY"

transactional = pytest.mark.django_db(transaction=True)


def wait_until(condition: Callable[[], object], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def streaming(stream) -> Iterator[list[BaseException]]:
    """`stream.stream` in a thread of its own for the block; yields the exception it ended with, if any."""
    stop = threading.Event()
    ended: list[BaseException] = []

    def run() -> None:
        try:
            stream.stream(stop)
        except BaseException as error:
            ended.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield ended
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the stream did not stop"


@pytest.fixture
def dhan_socket() -> Iterator[DhanOrderSocketSimulator]:
    with DhanOrderSocketSimulator(login_timeout=2) as simulator:
        simulator.register_token(DHAN_CLIENT, DHAN_TOKEN)
        yield simulator


@pytest.fixture
def fyers_socket() -> Iterator[FyersOrderSocketSimulator]:
    with FyersOrderSocketSimulator() as simulator:
        simulator.register_token(f"{FYERS_APP}:{FYERS_TOKEN}", FYERS_USER)
        yield simulator


def dhan_stream(simulator, received: list, *, token: str = DHAN_TOKEN, client_id: str = DHAN_CLIENT):
    return DhanOrderStream(
        account_id="acc_dhan_stream",
        identity=client_id,
        access_token=token,
        on_update=received.append,
        url=simulator.url,
        connect_timeout=2,
    )


def fyers_stream(simulator, received: list, *, token: str = FYERS_TOKEN):
    return FyersOrderStream(
        account_id="acc_fyers_stream",
        identity=FYERS_APP,
        access_token=token,
        on_update=received.append,
        url=simulator.url,
        connect_timeout=2,
    )


# --- Dhan's order-update socket through the SDK ----------------------------------------------------------------------


def test_dhan_stream_logs_in_and_hands_on_every_order_alert_silently(dhan_socket, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    received: list[dict] = []
    stream = dhan_stream(dhan_socket, received)

    with streaming(stream) as ended:
        wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 1, what="the login")
        dhan_socket.push_message(DHAN_CLIENT, {"Type": "order_alert", "Data": {"OrderNo": "1", "CorrelationId": "a"}})
        dhan_socket.push_message(DHAN_CLIENT, {"Type": "heartbeat"})  # not an alert: the SDK would print it
        dhan_socket.push_message(DHAN_CLIENT, {"Type": "order_alert", "Data": ["not", "an", "order"]})
        dhan_socket.push_message(DHAN_CLIENT, {"Type": "order_alert", "Data": {"OrderNo": "2"}})
        wait_until(lambda: len(received) == 2, what="the two alerts")

    assert ended == []
    assert received == [{"OrderNo": "1", "CorrelationId": "a"}, {"OrderNo": "2"}]
    assert stream.connections_opened == 1 and stream.updates_received == 2
    wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 0, what="stopping to close the socket")
    output = capfd.readouterr()
    assert output.out == "" and DHAN_TOKEN not in output.err  # the SDK prints the login message, token and all
    assert DHAN_TOKEN not in caplog.text  # nor do the socket library's frame logs show it


@transactional
def test_the_dhan_simulator_pushes_a_fill_in_dhans_order_update_shape(dhan_socket, publish_quote):
    received: list[dict] = []
    publish_quote(SYMBOL, "1500")
    account = exchange.exchange_account(venue=Venue.DHAN, client_id=DHAN_CLIENT)
    resting = exchange.place(
        account=account,
        request=OrderRequest(
            symbol=SYMBOL,
            side=Side.BUY,
            quantity=10,
            order_type=OrderType.LIMIT,
            product=Product.MIS,
            price=Decimal("1490"),
            tag="ord0abcdefghijklmnop",
        ),
    )

    with streaming(dhan_stream(dhan_socket, received)) as ended:
        wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 1, what="the login")
        publish_quote(SYMBOL, "1489")  # crosses the resting order
        wait_until(lambda: received, what="the fill's alert")

    assert ended == []
    [alert] = received
    assert alert["OrderNo"] == resting.order_id and alert["CorrelationId"] == "ord0abcdefghijklmnop"
    assert alert["ClientId"] == DHAN_CLIENT and alert["Status"] == "TRADED"
    assert alert["Quantity"] == 10 and alert["TradedQty"] == 10 and alert["RemainingQuantity"] == 0
    assert alert["TxnType"] == "B" and alert["Product"] == "I" and alert["OrderType"] == "LMT"
    assert alert["Symbol"] == "INFY" and alert["SecurityId"] == "1594" and alert["AvgTradedPrice"] > 0


@pytest.mark.parametrize(
    ("client_id", "token"),
    [(DHAN_CLIENT, "a-token-dhan-never-issued"), ("1100000099", DHAN_TOKEN)],
    ids=["unknown token", "another client's token"],
)
def test_a_refused_dhan_login_is_an_expired_session(dhan_socket, client_id, token):
    stream = dhan_stream(dhan_socket, [], token=token, client_id=client_id)
    with pytest.raises(SessionExpired):
        stream.stream(threading.Event())
    assert dhan_socket.logins_refused == 1
    assert stream.connections_opened == 1  # the socket opened; Dhan hung up on the login


def test_a_dropped_dhan_socket_is_unavailable_not_expired(dhan_socket):
    with streaming(dhan_stream(dhan_socket, [])) as ended:
        wait_until(lambda: dhan_socket.logged_in(DHAN_CLIENT) == 1, what="the login")
        dhan_socket.drop_connections()
        wait_until(lambda: ended, what="the stream to end")
    [error] = ended
    assert isinstance(error, BrokerUnavailable) and not isinstance(error, SessionExpired)


def test_an_unreachable_dhan_socket_is_unavailable():
    with DhanOrderSocketSimulator() as simulator:
        url = simulator.url
    with pytest.raises(BrokerUnavailable):
        DhanOrderStream(account_id="acc_x", identity=DHAN_CLIENT, access_token=DHAN_TOKEN, url=url).stream(
            threading.Event()
        )


# --- Fyers' order socket through the SDK -------------------------------------------------------------------------


def test_fyers_stream_subscribes_to_orders_and_hands_on_the_sdks_renamed_orders(fyers_socket, capfd):
    received: list[dict] = []
    stream = fyers_stream(fyers_socket, received)

    with streaming(stream) as ended:
        wait_until(lambda: fyers_socket.subscribed(FYERS_USER) == 1, what="the orders subscription")
        wire = {"id": "250000000000007", "ordertag": "1:ord0abcdefghijklmnop", "org_ord_status": 2, "qty_filled": 5}
        fyers_socket.push_message(FYERS_USER, {"s": "ok", "orders": wire})
        fyers_socket.push_message(FYERS_USER, {"s": "ok", "trades": {"id": "250000000000007"}})  # not subscribed
        fyers_socket.push_message(FYERS_USER, {"s": "ok", "orders": {"id": "250000000000008"}})
        wait_until(lambda: len(received) == 2, what="the two order messages")

    assert ended == []
    assert received[0] == {
        "id": "250000000000007",
        "orderTag": "1:ord0abcdefghijklmnop",
        "status": 2,
        "filledQty": 5,
    }
    assert received[1] == {"id": "250000000000008"}
    assert pushed_order_tag(broker=Broker.FYERS, wire_tag=received[0]["orderTag"]) == "ord0abcdefghijklmnop"
    assert stream.connections_opened == 1
    wait_until(lambda: fyers_socket.subscribed(FYERS_USER) == 0, what="the socket to close")
    assert capfd.readouterr().out == ""


def test_fyers_streams_of_two_accounts_are_separate_sockets(fyers_socket):
    """The SDK's class hands out one process-wide instance; each account needs its own."""
    fyers_socket.register_token(f"{FYERS_APP}:other-token", "XJ00043")
    first: list[dict] = []
    second: list[dict] = []

    with (
        streaming(fyers_stream(fyers_socket, first)),
        streaming(fyers_stream(fyers_socket, second, token="other-token")),
    ):
        wait_until(lambda: fyers_socket.subscribed(FYERS_USER) == 1 and fyers_socket.subscribed("XJ00043") == 1)
        fyers_socket.push_message(FYERS_USER, {"s": "ok", "orders": {"id": "1"}})
        fyers_socket.push_message("XJ00043", {"s": "ok", "orders": {"id": "2"}})
        wait_until(lambda: first and second, what="one message each")

    assert first == [{"id": "1"}] and second == [{"id": "2"}]


def test_fyers_stream_pings_and_ignores_the_pongs(fyers_socket):
    received: list[dict] = []
    stream = fyers_stream(fyers_socket, received)
    stream.ping_seconds = 0.05
    with streaming(stream) as ended:
        wait_until(lambda: fyers_socket.pings >= 3, what="pings")
    assert ended == [] and received == []


def test_a_refused_fyers_token_is_an_expired_session_and_stays_out_of_the_logs(fyers_socket, caplog):
    stream = fyers_stream(fyers_socket, [], token="fyers-token-never-issued")
    with pytest.raises(SessionExpired):
        stream.stream(threading.Event())
    assert fyers_socket.handshakes_refused == 1 and stream.connections_opened == 0
    assert "fyers-token-never-issued" not in caplog.text
    log_file = os.path.join(LOG_DIRECTORY, "fyersOrderSocket.log")
    if os.path.exists(log_file):
        with open(log_file) as sdk_log:
            assert "fyers-token-never-issued" not in sdk_log.read()


def test_a_dropped_fyers_socket_is_unavailable(fyers_socket):
    with streaming(fyers_stream(fyers_socket, [])) as ended:
        wait_until(lambda: fyers_socket.subscribed(FYERS_USER) == 1, what="the subscription")
        fyers_socket.drop_connections()
        wait_until(lambda: ended, what="the stream to end")
    [error] = ended
    assert isinstance(error, BrokerUnavailable) and not isinstance(error, SessionExpired)


def test_a_fyers_socket_that_never_opens_is_given_up_after_the_connect_timeout():
    import socket

    with socket.socket() as listener:  # accepts the TCP connection, never answers the handshake
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stream = FyersOrderStream(
            account_id="acc_x",
            identity=FYERS_APP,
            access_token=FYERS_TOKEN,
            url=f"ws://127.0.0.1:{listener.getsockname()[1]}",
            connect_timeout=0.3,
        )
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not open"):
            stream.stream(threading.Event())
        assert time.monotonic() - started < 3


# --- the supervisor ----------------------------------------------------------------------------------------------


def fast_backoff() -> Backoff:
    return Backoff(initial=0.05, maximum=0.2)


def dhan_account(owner, *, token: str = DHAN_TOKEN, client_id: str = DHAN_CLIENT, **fields) -> BrokerAccount:
    account = BrokerAccount(owner=owner, broker=Broker.DHAN, label="Dhan", client_id=client_id, **fields)
    account.credentials = {"client_id": client_id, "access_token": token}
    account.session = {"access_token": token, "broker_user_id": client_id}
    account.status = fields.get("status", AccountStatus.CONNECTED)
    account.save()
    return account


def fyers_account(owner, *, token: str = FYERS_TOKEN) -> BrokerAccount:
    account = BrokerAccount(owner=owner, broker=Broker.FYERS, label="Fyers", client_id=FYERS_USER)
    account.credentials = {"client_id": FYERS_APP, "secret_key": "fyers-secret"}
    account.session = {"access_token": token, "broker_user_id": FYERS_USER}
    account.status = AccountStatus.CONNECTED
    account.save()
    return account


@pytest.fixture
def sockets(settings, dhan_socket, fyers_socket):
    settings.DHAN_ORDER_SOCKET_URL = dhan_socket.url
    settings.FYERS_ORDER_SOCKET_URL = fyers_socket.url
    return dhan_socket, fyers_socket


@pytest.fixture
def supervisor() -> Iterator[OrderStreamSupervisor]:
    running = OrderStreamSupervisor(poll_seconds=60, backoff=fast_backoff, stream_options={"connect_timeout": 2})
    yield running
    running.stop_all()
    running.lease.release()


def state_of(account: BrokerAccount) -> str | None:
    return (order_stream_state(account_id=account.pk) or {}).get("state")


@transactional
def test_one_stream_per_live_dhan_or_fyers_account(sockets, supervisor, trader):
    dhan, fyers = sockets
    streamed = [dhan_account(trader), fyers_account(UserFactory())]
    dhan_account(UserFactory(), status=AccountStatus.EXPIRED, client_id="1100000078")
    dhan_account(UserFactory(), client_id="1100000079", session_expires_at=timezone.now() - timedelta(minutes=1))
    dhan_account(UserFactory(), client_id="1100000080", deleted_at=timezone.now())
    dhan_account(UserFactory(), client_id="1100000081", token="")  # connected, yet no token to stream with
    BrokerAccount.objects.create(owner=trader, broker=Broker.PAPER, label="Paper", status=AccountStatus.CONNECTED)

    supervisor.sync()
    wait_until(lambda: all(state_of(account) == "connected" for account in streamed), what="both streams")
    supervisor.sync()  # nothing changed: nothing restarts

    assert set(supervisor.workers) == {account.pk for account in streamed}
    assert dhan.connections_accepted == 1 and fyers.connections_accepted == 1
    assert dhan.logged_in(DHAN_CLIENT) == 1 and fyers.subscribed(FYERS_USER) == 1
    assert set(order_stream_states()) == {account.pk for account in streamed}
    state = order_stream_state(account_id=streamed[0].pk)
    assert state["broker"] == "dhan" and state["connections"] == 1 and state["last_message_at"] is None
    assert DHAN_TOKEN not in str(state)


@transactional
def test_pushes_go_out_on_the_signal_with_the_account_and_broker(sockets, supervisor, trader):
    dhan, _ = sockets
    account = dhan_account(trader)
    heard: list[tuple[str, str, dict]] = []

    def receiver(sender, *, account_id, broker, data, **kwargs):
        heard.append((account_id, broker, data))

    broker_order_update_received.connect(receiver, weak=False, dispatch_uid="test.order_streams")
    try:
        supervisor.sync()
        wait_until(lambda: dhan.logged_in(DHAN_CLIENT) == 1, what="the login")
        dhan.push_message(DHAN_CLIENT, {"Type": "order_alert", "Data": {"OrderNo": "9"}})
        wait_until(lambda: heard, what="the signal")
    finally:
        broker_order_update_received.disconnect(dispatch_uid="test.order_streams")

    assert heard == [(account.pk, "dhan", {"OrderNo": "9"})]
    wait_until(lambda: (order_stream_state(account_id=account.pk) or {}).get("last_message_at"), what="the report")


@transactional
def test_a_new_token_restarts_the_stream_and_a_gone_account_stops_it(sockets, supervisor, trader):
    dhan, _ = sockets
    account = dhan_account(trader)
    supervisor.sync()
    wait_until(lambda: state_of(account) == "connected", what="the first stream")

    dhan.register_token(DHAN_CLIENT, "dhan-token-of-the-next-day")
    account.session = {"access_token": "dhan-token-of-the-next-day", "broker_user_id": DHAN_CLIENT}
    account.save()
    supervisor.sync()
    wait_until(lambda: dhan.connections_accepted == 2 and dhan.logged_in(DHAN_CLIENT) == 1, what="the new login")
    assert len(supervisor.workers) == 1

    account.status, account.deleted_at = AccountStatus.DISCONNECTED, timezone.now()
    account.save()
    supervisor.sync()
    assert supervisor.workers == {}
    wait_until(lambda: dhan.logged_in(DHAN_CLIENT) == 0, what="the socket to close")
    assert order_stream_state(account_id=account.pk) is None


@transactional
def test_a_refused_token_stops_the_retries_until_the_token_changes(sockets, supervisor, trader):
    dhan, _ = sockets
    account = dhan_account(trader, token="dhan-token-revoked-on-the-web")
    supervisor.sync()
    wait_until(lambda: state_of(account) == "expired", what="the refusal")
    time.sleep(0.5)  # ten backoff periods: a retrying stream would have logged in again by now
    supervisor.sync()

    assert dhan.logins_refused == 1
    account.refresh_from_db()
    assert account.status == AccountStatus.CONNECTED  # the stream marks nothing; the session check decides
    assert "revoked" not in str(order_stream_state(account_id=account.pk))

    account.session = {"access_token": DHAN_TOKEN, "broker_user_id": DHAN_CLIENT}
    account.save()
    supervisor.sync()
    wait_until(lambda: state_of(account) == "connected", what="the stream on the new token")
    assert dhan.logins_refused == 1


@transactional
def test_a_dropped_stream_reconnects_with_backoff(sockets, supervisor, trader):
    _, fyers = sockets
    account = fyers_account(trader)
    supervisor.sync()
    wait_until(lambda: fyers.subscribed(FYERS_USER) == 1, what="the first subscription")

    fyers.drop_connections()
    wait_until(lambda: fyers.connections_accepted == 2 and fyers.subscribed(FYERS_USER) == 1, what="the reconnect")
    wait_until(lambda: (order_stream_state(account_id=account.pk) or {}).get("connections") == 2, what="the report")
    assert state_of(account) == "connected"


@transactional
def test_order_streams_run_until_stopped_and_stop_every_stream(sockets, trader):
    dhan, _ = sockets
    account = dhan_account(trader)
    stop = threading.Event()
    runner = threading.Thread(target=order_streams_run, kwargs={"stop": stop, "poll_seconds": 0.1}, daemon=True)
    runner.start()
    wait_until(lambda: state_of(account) == "connected", what="the stream")

    stop.set()
    runner.join(10)
    assert not runner.is_alive()
    assert dhan.logged_in(DHAN_CLIENT) == 0
    assert order_stream_states() == {} and order_stream_state(account_id=account.pk) is None


def test_run_order_streams_refuses_a_poll_that_is_not_positive():
    with pytest.raises(CommandError, match="--poll"):
        call_command("run_order_streams", "--poll", "0")


def test_backoff_doubles_up_to_its_maximum_and_resets():
    backoff = Backoff(initial=1, maximum=4)
    delays = [backoff.next_delay() for _ in range(4)]
    assert all(base * 0.8 <= delay <= base * 1.2 for delay, base in zip(delays, [1, 2, 4, 4], strict=True))
    backoff.reset()
    assert 0.8 <= backoff.next_delay() <= 1.2


@transactional
def test_a_second_supervisor_streams_nothing_until_the_first_lets_go(sockets, supervisor, trader):
    dhan, _ = sockets
    account = dhan_account(trader)
    standby = OrderStreamSupervisor(poll_seconds=60, backoff=fast_backoff, stream_options={"connect_timeout": 2})
    try:
        supervisor.sync()
        standby.sync()
        wait_until(lambda: state_of(account) == "connected", what="the holder's stream")
        assert set(supervisor.workers) == {account.pk} and standby.workers == {}
        assert dhan.connections_accepted == 1

        supervisor.stop_all()
        supervisor.lease.release()  # the holder stops (a crashed one's lease runs out instead)
        standby.sync()
        wait_until(lambda: state_of(account) == "connected", what="the standby's stream")
        assert set(standby.workers) == {account.pk} and dhan.connections_accepted == 2
    finally:
        standby.stop_all()
        standby.lease.release()
