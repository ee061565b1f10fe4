import contextlib
from collections.abc import Iterator

import pytest

from algoterm.sandbox.simulators.base import SimulatorApp, SimulatorServer


@contextlib.contextmanager
def serving(app: SimulatorApp) -> Iterator[SimulatorServer]:
    """A simulator on a free 127.0.0.1 port for the duration of the block."""
    server = SimulatorServer(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def publish_quote(db):
    """Move the simulated market: publish a quote for `symbol` at `price` (resting orders may fill)."""
    from brokers.prices import quote_at, quote_publish

    def publish(symbol: str, price, depth: int = 1000) -> int:
        return quote_publish(quote_at(symbol, price, depth=depth))

    return publish
