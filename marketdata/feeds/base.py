"""What every feed shares: the loop that survives drops (reconnect with backoff, resubscribe), and the one way
ticks leave a feed (`marketdata.ticks.ticks_publish`)."""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable

from django.conf import settings

from algoterm.backoff import Backoff
from brokers.protocol import InvalidInput, Quote, SessionExpired
from marketdata.ticks import ticks_publish

logger = logging.getLogger(__name__)


class Feed(abc.ABC):
    """A source of ticks. `run` blocks until `stop` is set, reconnecting by itself after any failure."""

    source: str = ""
    # A supervisor that can fail over to another account sets this: a session the broker refused ends `run` (with
    # the error in `failure`) instead of retrying a token that cannot work.
    stop_on_session_expired: bool = False

    def __init__(self, *, publish: Callable[[list[Quote]], int] = ticks_publish, backoff: Backoff | None = None):
        self.publish = publish
        self.backoff = backoff or Backoff()
        self.failure: Exception | None = None

    @abc.abstractmethod
    def stream(self, stop: threading.Event) -> None:
        """Connect, subscribe, and publish ticks until `stop` is set or the connection fails (raise)."""

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.stream(stop)
                self.backoff.reset()
            except SessionExpired as error:
                if self.stop_on_session_expired:
                    self.failure = error
                    logger.warning("%s feed stopped: %s", self.source, error.detail)
                    return
                delay = self.backoff.next_delay()
                logger.warning("%s feed refused (%s); retrying in %.1fs", self.source, error.detail, delay)
                stop.wait(delay)
            except Exception:
                delay = self.backoff.next_delay()
                logger.warning("%s feed dropped; reconnecting in %.1fs", self.source, delay, exc_info=True)
                stop.wait(delay)


class BrokerFeed(Feed):
    """A feed from a broker's live socket: one account's credentials, a mode, the socket URL (a setting, so tests
    and the demo can point it at a simulator) and a connect timeout."""

    modes: tuple[str, ...] | dict = ()
    url_setting: str = ""
    default_url: str = ""
    connect_timeout_seconds: float = 15

    def __init__(
        self,
        *,
        mode: str,
        url: str | None = None,
        connect_timeout: float | None = None,
        publish: Callable[[list[Quote]], int] = ticks_publish,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(publish=publish, backoff=backoff)
        if mode not in self.modes:
            raise InvalidInput(f"{self.source} feed modes are {', '.join(self.modes)}; got {mode!r}.")
        self.mode = mode
        self.url = url or getattr(settings, self.url_setting, self.default_url)
        self.connect_timeout = self.connect_timeout_seconds if connect_timeout is None else connect_timeout
        self._lock = threading.Lock()
        self.connections_opened = 0
