"""The demo's simulated brokers: each REST simulator with its live-feed socket sharing its sessions."""

import socket

import pytest
from websockets.sync.client import connect

from algoterm.sandbox.demo import DEMO_CREDENTIALS, FEED_PORT_OFFSET, demo_simulators_start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def started():
    running = []

    def start(name: str):
        servers = demo_simulators_start(name, port=free_port())
        running.extend(servers)
        return servers

    yield start
    for server in running:
        server.stop()


def test_the_kite_ticker_accepts_sessions_issued_by_the_kite_simulator_only(started):
    rest, ticker = started("kite")
    api_key = DEMO_CREDENTIALS["kite"]["api_key"]
    token = rest.app.issue_session(api_key, "AB1234")

    with connect(f"{ticker.url}/?api_key={api_key}&access_token={token}", open_timeout=5):
        pass
    with pytest.raises(Exception, match="403"):
        connect(f"{ticker.url}/?api_key={api_key}&access_token=not-issued", open_timeout=5)
    assert ticker.url.endswith(str(rest.port + FEED_PORT_OFFSET))


def test_the_dhan_feed_knows_the_dhan_simulators_tokens(started):
    rest, feed, *_ = started("dhan")
    credentials = DEMO_CREDENTIALS["dhan"]
    assert rest.app.client_for_token(credentials["access_token"]) == credentials["client_id"]
    assert feed.authorize(credentials["access_token"]) == credentials["client_id"]
    assert feed.authorize("unknown") is None


def test_the_fyers_data_socket_knows_the_fyers_simulators_tokens(started):
    from algoterm.sandbox.simulators.fyers_feed import token_claims

    rest, feed, *_ = started("fyers")
    token = rest.app._issue_token(DEMO_CREDENTIALS["fyers"]["client_id"], "XJ00001")
    assert feed.authorize(token_claims(token)["hsm_key"]) == "XJ00001"  # the socket's credential
    assert feed.authorize(token) == "XJ00001"  # the symbol-token lookup's
    assert feed.authorize("unknown") is None
    assert feed.url.endswith(str(rest.port + FEED_PORT_OFFSET))
    rest.app.expire_sessions()
    assert feed.authorize(token_claims(token)["hsm_key"]) is None
