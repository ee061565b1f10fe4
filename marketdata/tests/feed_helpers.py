"""What the broker-feed tests share: a stand-in for the tick bus and a feed running in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from brokers.protocol import Quote
from marketdata.feeds.base import Feed

WAIT = 10.0


class Collector:
    """Stands in for the tick bus: keeps every published batch."""

    def __init__(self) -> None:
        self.quotes: list[Quote] = []
        self._changed = threading.Condition()

    def __call__(self, quotes: list[Quote]) -> int:
        with self._changed:
            self.quotes.extend(quotes)
            self._changed.notify_all()
        return 0

    def wait_for(self, condition: Callable[[list[Quote]], bool], timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: condition(self.quotes), timeout)

    def latest(self, symbol: str) -> Quote | None:
        return next((quote for quote in reversed(self.quotes) if quote.symbol == symbol), None)


@contextlib.contextmanager
def running(feed: Feed) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=feed.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(WAIT)
        assert not thread.is_alive(), "the feed did not stop"
