"""Renewing a Fyers session without the browser: the refresh token from the login plus the user's PIN, against the
Fyers simulator, and every way Fyers can refuse it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import requests

from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.fyers import DEMO_PIN, FyersSimulator
from brokers.adapters.fyers import FyersAdapter
from brokers.protocol import AdapterConfig, BrokerSession, BrokerUnavailable, SessionExpired

from .conftest import serving
from .test_fyers import APP_ID, REDIRECT_URI, SECRET, USER_ID, log_in_at_broker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    app = FyersSimulator()
    app.register_app(APP_ID, SECRET, redirect_uri=REDIRECT_URI)
    with serving(app) as running:
        yield running


def adapter_for(
    server: SimulatorServer,
    *,
    session: BrokerSession | None = None,
    pin: str | None = DEMO_PIN,
    secret: str = SECRET,
    timeout: float = 5.0,
) -> FyersAdapter:
    credentials = {"client_id": APP_ID, "secret_key": secret} | ({"pin": pin} if pin is not None else {})
    return FyersAdapter(
        credentials=credentials,
        session=session,
        config=AdapterConfig(
            base_url=f"{server.url}/api/v3", timeout=timeout, extra={"data_url": f"{server.url}/data"}
        ),
        account_ref="acc_fyers_renew",
    )


def log_in(server: SimulatorServer) -> BrokerSession:
    adapter = adapter_for(server)
    params = log_in_at_broker(adapter.login_url(state="st-1", redirect_uri=REDIRECT_URI))
    return adapter.complete_login(params=params, redirect_uri=REDIRECT_URI)


def stored(session: BrokerSession) -> BrokerSession:
    """The session as the account keeps it (JSON, then `BrokerSession(**session)` when the adapter is built)."""
    return BrokerSession(
        **{"access_token": session.access_token, "broker_user_id": session.broker_user_id, "extra": session.extra}
    )


def test_the_login_keeps_the_refresh_token(server):
    session = log_in(server)
    assert session.broker_user_id == USER_ID
    assert len(session.extra["refresh_token"]) >= 32
    assert FyersAdapter.renews_sessions is True


def test_a_renewed_session_trades_after_the_daily_logout(server, caplog):
    caplog.set_level(logging.DEBUG)
    first = log_in(server)
    server.app.expire_sessions()  # the broker's daily logout: the access token is dead
    with pytest.raises(SessionExpired):
        adapter_for(server, session=stored(first)).funds()

    adapter = adapter_for(server, session=stored(first))
    renewed = adapter.session_renew()
    assert renewed.access_token != first.access_token
    assert renewed.broker_user_id == USER_ID
    assert renewed.extra["refresh_token"] == first.extra["refresh_token"]  # kept for the next renewal
    assert adapter.session == renewed
    assert adapter.funds().available_cash > 0

    # The refresh token renews again (it lives 15 days), from the session as stored after the first renewal.
    again = adapter_for(server, session=stored(renewed)).session_renew()
    assert again.access_token not in (first.access_token, renewed.access_token)
    secrets = (first.extra["refresh_token"], first.access_token, renewed.access_token)
    assert not [secret for secret in secrets if secret in caplog.text]


def test_a_pin_set_for_the_user_is_the_one_that_renews(server):
    session = stored(log_in(server))
    browser = requests.Session()
    browser.trust_env = False  # loopback only
    answer = browser.post(f"{server.url}/__sim__/pin", json={"fy_id": USER_ID, "pin": "9876"}, timeout=5)
    assert answer.status_code == 200
    with pytest.raises(SessionExpired, match=r"Invalid PIN.*log in to Fyers again"):
        adapter_for(server, session=session).session_renew()
    assert adapter_for(server, session=session, pin="9876").session_renew().access_token


def test_refusals_mean_the_user_must_log_in(server):
    session = stored(log_in(server))
    with pytest.raises(SessionExpired, match="Invalid PIN"):
        adapter_for(server, session=session, pin="0000").session_renew()
    with pytest.raises(SessionExpired, match="Invalid appIdHash"):
        adapter_for(server, session=session, secret="another-secret").session_renew()
    forged = BrokerSession(access_token=session.access_token, extra={"refresh_token": "not-one-fyers-issued"})
    with pytest.raises(SessionExpired, match="Invalid refresh token"):
        adapter_for(server, session=forged).session_renew()
    server.app.expire_refresh_tokens()  # 15 days later
    with pytest.raises(SessionExpired, match="refresh token has expired"):
        adapter_for(server, session=session).session_renew()


def test_nothing_to_renew_with(server):
    session = stored(log_in(server))
    served = server.app.requests_served
    without_token = BrokerSession(access_token=session.access_token, broker_user_id=USER_ID)
    with pytest.raises(SessionExpired, match="No Fyers refresh token"):
        adapter_for(server, session=without_token).session_renew()
    with pytest.raises(SessionExpired, match="needs the account's Fyers PIN"):
        adapter_for(server, session=session, pin=None).session_renew()
    with pytest.raises(SessionExpired, match="No Fyers refresh token"):
        adapter_for(server, session=None).session_renew()
    assert server.app.requests_served == served  # refused before asking Fyers


def test_an_unavailable_broker_is_not_a_refusal(server):
    session = stored(log_in(server))
    for status in (500, 503):
        server.app.inject_fault("error", status=status)
        with pytest.raises(BrokerUnavailable, match=f"HTTP {status}"):
            adapter_for(server, session=session).session_renew()
    server.app.inject_fault("garbage")
    with pytest.raises(BrokerUnavailable, match="unreadable"):
        adapter_for(server, session=session).session_renew()
    server.app.inject_fault("delay", seconds=1.0)
    with pytest.raises(BrokerUnavailable, match="ReadTimeout"):
        adapter_for(server, session=session, timeout=0.3).session_renew()
    assert adapter_for(server, session=session).session_renew().access_token  # and it renews once Fyers is back
