"""Renewing a Dhan session (GET /v2/RenewToken) against the Dhan simulator: a new token for a valid one, refusals
as SessionExpired, outages as BrokerUnavailable, and the token never in an error."""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from algoterm.sandbox.simulators.dhan import DhanSimulator
from brokers.adapters.dhan import DhanAdapter
from brokers.protocol import (
    AdapterConfig,
    BrokerError,
    BrokerRateLimited,
    BrokerSession,
    BrokerUnavailable,
    SessionExpired,
)
from brokers.tests.conftest import serving

CLIENT_ID = "1100000001"
TOKEN = "dhan-access-token-7f3a9c1e5b"
RELAXED_LIMITS = {"orders": [(1000, 1.0)], "quotes": [(1000, 1.0)], "data": [(1000, 1.0)]}
NOW = datetime(2026, 3, 2, 2, 30, tzinfo=UTC)  # 08:00 in Mumbai

sdk_test = pytest.mark.django_db(transaction=True)


def make_adapter(server, *, token: str = TOKEN, timeout: float = 5.0, client_id: str = CLIENT_ID) -> DhanAdapter:
    return DhanAdapter(
        credentials={"client_id": client_id},
        session=BrokerSession(access_token=token, broker_user_id=client_id),
        config=AdapterConfig(base_url=f"{server.url}/v2", timeout=timeout),
        account_ref="acc_dhan_test",
    )


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(NOW, tick=False)
    return time_machine


@pytest.fixture
def simulator(clock):
    app = DhanSimulator(rate_limits=RELAXED_LIMITS)
    app.register_client(CLIENT_ID, TOKEN, expires_at=NOW + timedelta(hours=3))
    with serving(app) as server:
        yield app, server


@pytest.fixture
def adapter(simulator):
    return make_adapter(simulator[1])


@sdk_test
def test_renewal_gives_a_new_token_for_another_day(adapter):
    assert adapter.renews_sessions
    session = adapter.session_renew()
    assert session.access_token and session.access_token != TOKEN
    assert session.broker_user_id == CLIENT_ID
    expires_at = datetime.fromisoformat(session.extra["expires_at"])
    assert expires_at.tzinfo is not None
    assert expires_at == NOW + timedelta(hours=24)
    # The adapter goes on with the new token.
    assert adapter.session == session
    assert adapter._sdk().dhan_http.header["access-token"] == session.access_token
    assert adapter.funds().opening_balance == Decimal("1000000.00")


@sdk_test
def test_the_new_token_outlives_the_old_one_which_renewal_leaves_alone(adapter, simulator, clock):
    _, server = simulator
    renewed = adapter.session_renew()
    assert make_adapter(server).funds()  # the old token still works until it expires
    clock.shift(timedelta(hours=4))
    with pytest.raises(SessionExpired):
        make_adapter(server).funds()
    assert make_adapter(server, token=renewed.access_token).funds()
    # A renewed token renews in turn; past its day it is refused.
    again = make_adapter(server, token=renewed.access_token).session_renew()
    assert datetime.fromisoformat(again.extra["expires_at"]) == NOW + timedelta(hours=28)
    clock.shift(timedelta(hours=21))
    with pytest.raises(SessionExpired):
        make_adapter(server, token=renewed.access_token).session_renew()
    assert make_adapter(server, token=again.access_token).funds()


@sdk_test
def test_an_expired_token_cannot_be_renewed(adapter, clock):
    clock.shift(timedelta(hours=3))
    with pytest.raises(SessionExpired, match="DH-901"):
        adapter.session_renew()
    assert adapter.session.access_token == TOKEN  # nothing changed


@sdk_test
def test_an_unknown_token_or_another_clients_token_is_refused(simulator):
    _, server = simulator
    with pytest.raises(SessionExpired):
        make_adapter(server, token="not-a-token").session_renew()
    with pytest.raises(SessionExpired):
        make_adapter(server, client_id="1100000002").session_renew()


@sdk_test
def test_the_simulator_answers_renewal_in_dhans_shapes(simulator):
    _, server = simulator
    response = requests.get(
        f"{server.url}/v2/RenewToken", headers={"access-token": TOKEN, "dhanClientId": CLIENT_ID}, timeout=5
    )
    assert response.status_code == 200
    body = response.json()
    assert body["dhanClientId"] == CLIENT_ID and body["accessToken"]
    assert body["expiryTime"] == "2026-03-03T08:00:00"  # Dhan writes exchange time without an offset
    refused = requests.get(
        f"{server.url}/v2/RenewToken", headers={"access-token": "nope", "dhanClientId": CLIENT_ID}, timeout=5
    )
    assert refused.status_code == 401
    assert refused.json() == {
        "errorType": "Invalid_Authentication",
        "errorCode": "DH-901",
        "errorMessage": "Client ID or user generated access token is invalid or expired.",
    }


@pytest.mark.parametrize("status", [500, 503])
@sdk_test
def test_server_errors_are_unavailable(adapter, simulator, status):
    simulator[0].inject_fault("error", status=status)
    with pytest.raises(BrokerUnavailable, match="DH-908"):
        adapter.session_renew()
    assert adapter.session.access_token == TOKEN
    assert adapter.session_renew().access_token != TOKEN


@sdk_test
def test_a_garbage_answer_is_unavailable(adapter, simulator):
    simulator[0].inject_fault("garbage")
    with pytest.raises(BrokerUnavailable, match="unreadable"):
        adapter.session_renew()


@sdk_test
def test_renewal_is_rate_limited_like_other_data(clock):
    app = DhanSimulator(rate_limits={"data": [(1, 1.0)]})
    app.register_client(CLIENT_ID, TOKEN)
    with serving(app) as server:
        adapter = make_adapter(server)
        adapter.session_renew()
        with pytest.raises(BrokerRateLimited, match="DH-904"):
            make_adapter(server).session_renew()


@sdk_test
def test_a_slow_broker_times_out_as_unavailable(simulator, time_machine):
    time_machine.move_to(NOW, tick=True)  # the delay is real time
    app, server = simulator
    adapter = make_adapter(server, timeout=0.3)
    app.inject_fault("delay", seconds=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="no answer"):
        adapter.session_renew()
    assert time.monotonic() - started < 0.9
    time.sleep(1.0)  # let the delayed request finish before the test database is flushed


def test_an_unreachable_broker_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = DhanAdapter(
        credentials={"client_id": CLIENT_ID},
        session=BrokerSession(access_token=TOKEN, broker_user_id=CLIENT_ID),
        config=AdapterConfig(base_url=f"http://127.0.0.1:{port}/v2", timeout=2.0),
        account_ref="acc_dhan_test",
    )
    with pytest.raises(BrokerUnavailable):
        adapter.session_renew()


def test_renewal_without_a_token_needs_a_login():
    adapter = DhanAdapter(
        credentials={"client_id": CLIENT_ID}, session=None, config=AdapterConfig(), account_ref="acc_dhan_test"
    )
    with pytest.raises(SessionExpired):
        adapter.session_renew()


@sdk_test
def test_renewal_goes_through_the_egress_guard(simulator):
    """The account's proxy is used, and one on our own network is refused before any request reaches it."""
    app, server = simulator
    adapter = DhanAdapter(
        credentials={"client_id": CLIENT_ID},
        session=BrokerSession(access_token=TOKEN, broker_user_id=CLIENT_ID),
        config=AdapterConfig(base_url=f"{server.url}/v2", timeout=3.0, proxy_url=f"http://127.0.0.1:{server.port}"),
        account_ref="acc_dhan_test",
    )
    with pytest.raises(BrokerUnavailable):
        adapter.session_renew()
    assert app.requests_served == 0


@sdk_test
def test_the_token_never_leaks(simulator, caplog):
    app, server = simulator
    caplog.set_level(logging.DEBUG)
    errors: list[BrokerError] = []
    for fault in ("error", "garbage"):
        app.inject_fault(fault)
        with pytest.raises(BrokerError) as raised:
            make_adapter(server).session_renew()
        errors.append(raised.value)
    app.expire_sessions()
    with pytest.raises(BrokerError) as raised:
        make_adapter(server).session_renew()
    errors.append(raised.value)
    for error in errors:
        for text in (error.detail, str(error), repr(error), repr(error.extra)):
            assert TOKEN not in text
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
