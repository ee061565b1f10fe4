"""A client whose TCP socket stops reading, against a real uvicorn process: it is told and closed with 4429, and a
client beside it keeps getting every batch's latest prices meanwhile.

The stalled client is a raw socket with a small receive buffer driven by websockets' sans-I/O client, so the test
decides exactly when it reads; ticks come from this process's tick bus (the web process shares its Redis prefix)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from decimal import Decimal

import pytest
from django.conf import settings
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.sync.client import connect as ws_connect
from websockets.uri import parse_uri

from algoterm.tests.test_websocket_lifecycle import register, stack_database, web_process
from brokers.prices import quote_at
from marketdata.quotes import quote_encode, quote_text, quotes_put, quotes_store
from marketdata.ticks import ticks_fan_out

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(settings.EMBEDDED, reason="a web process of its own hears ticks only over Redis"),
]

SYMBOLS = [f"NSE:STALL{index:03d}" for index in range(100)]


class RawClient:
    """A WebSocket client on a plain socket: nothing is read unless `read` is called."""

    def __init__(self, url: str) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri)
        host, port = uri.host, uri.port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a phone on a bad network, not a LAN
        self.sock.connect((host, port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.frames: list = []
        while self.protocol.handshake_exc is None and not self._handshake_done():
            self.read(timeout=5)
        assert self.protocol.handshake_exc is None

    def _handshake_done(self) -> bool:
        return self.protocol.state.name == "OPEN"

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send_json(self, message: dict) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    def read(self, *, timeout: float) -> bool:
        """Read what has arrived (up to `timeout`); False once the server has closed the connection."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        if not data:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if not hasattr(event, "opcode"):
                continue  # the handshake's response
            self.frames.append(event)
        self._flush()
        return True

    def messages(self) -> list[dict]:
        return [json.loads(frame.data) for frame in self.frames if frame.opcode == Opcode.TEXT]

    def close_code(self) -> int | None:
        closes = [frame for frame in self.frames if frame.opcode == Opcode.CLOSE]
        return int.from_bytes(closes[0].data[:2], "big") if closes else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def test_a_stalled_tcp_client_is_told_and_closed_with_4429_while_another_keeps_up():
    # Quote mode, 100 symbols: every batch is tens of kilobytes for each subscriber.
    subscription = {"t": "subscription", "p": {"action": "subscribe", "symbols": SYMBOLS, "mode": "quote"}}
    quotes_put([quote_at(symbol, "100") for symbol in SYMBOLS])
    with contextlib.ExitStack() as cleanup:
        env = cleanup.enter_context(stack_database())
        env = {**env, "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX, "WS_SLOW_CLIENT_SECONDS": "1"}
        web = cleanup.enter_context(web_process(env, ping_seconds=60))
        token = register(web.base)["access"]
        url = f"{web.ws_base}/ws/market-data?token={token}"

        stalled = RawClient(url)
        cleanup.callback(stalled.close)
        stalled.read(timeout=5)
        assert [message["t"] for message in stalled.messages()] == ["server_ready"]
        stalled.send_json(subscription)
        while not any(message["t"] == "snapshot" for message in stalled.messages()):
            assert stalled.read(timeout=5)

        fast = cleanup.enter_context(ws_connect(url, open_timeout=10, ping_interval=None, max_size=None))
        assert json.loads(fast.recv(timeout=5))["t"] == "server_ready"
        fast.send(json.dumps(subscription))
        assert json.loads(fast.recv(timeout=5))["t"] == "snapshot"
        latest: dict[str, float] = {}
        batches_seen = []

        def read_fast() -> None:
            with contextlib.suppress(Exception):
                while True:
                    message = json.loads(fast.recv(timeout=10))
                    if message["t"] == "ticks":
                        batches_seen.append(time.monotonic())
                        latest.update({tick["symbol"]: tick["ltp"] for tick in message["p"]["ticks"]})

        reader = threading.Thread(target=read_fast, daemon=True)
        reader.start()

        # The stalled client reads nothing from here on, while batches flow: enough to fill the kernel's buffers
        # (megabytes on loopback) and then some.
        price = Decimal("100")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            price += Decimal("0.05")
            encoded = [quote_encode(quote_at(symbol, price)) for symbol in SYMBOLS]
            texts = [quote_text(quote) for quote in encoded]
            quotes_store(encoded, texts)
            ticks_fan_out(texts)
            time.sleep(0.005)
        final = float(price)

        # The other client kept up: batches all along, and the last prices.
        time.sleep(1)
        assert {latest.get(symbol) for symbol in SYMBOLS} == {final}
        assert len(batches_seen) > 50 and batches_seen[-1] - batches_seen[0] > 5

        # The stalled one reads again: the ticks already on their way, then why it was dropped, then 4429.
        still_open, started = True, time.monotonic()
        while still_open and time.monotonic() - started < 15:
            still_open = stalled.read(timeout=1) and stalled.close_code() is None
        errors = [message["p"] for message in stalled.messages() if message["t"] == "error"]
        assert errors and errors[-1]["code"] == "RATE_LIMITED" and errors[-1]["recoverable"] is False
        assert stalled.close_code() == 4429
        # It was dropped long before the end: most of the batches never went to it.
        delivered = sum(1 for message in stalled.messages() if message["t"] == "ticks")
        assert delivered < len(batches_seen) / 2
