"""Exactly one order stream per live Dhan or Fyers account, for as long as the process runs (`manage.py
run_order_streams`).

Every `poll_seconds` the supervisor reads which accounts are connected with a live session, starts a stream (a
thread) for each new one, stops the streams of accounts that were disconnected or expired, and restarts the stream of
an account whose access token changed. A stream that drops reconnects with backoff in its own thread. A stream whose
token the broker refused stops retrying until the token changes: the account is marked nothing here (the session
check does that on the broker's word over HTTP), so a refused socket never logs a user out.

The supervisor reports each stream's state in the cache for the health endpoint, refreshed every poll and on every
change, so a stale entry expires with the supervisor (`STATE_TTL_SECONDS`, at least three polls):

* `brokers:order-stream:<account id>`: {"account_id", "broker", "state": "connecting" | "connected" | "retrying" |
  "expired", "since" (ISO time of the last state change), "last_message_at" (ISO time or null), "connections"
  (opened so far), "detail" (why it is retrying or expired; never a secret)};
* `brokers:order-streams`: {"updated_at", "poll_seconds", "accounts": [account ids with a stream]}.

`order_stream_state` and `order_stream_states` read them back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.core.cache import cache
from django.db import connections
from django.db.models import Q
from django.utils import timezone

from algoterm.backoff import Backoff
from algoterm.leases import Lease
from brokers.models import AccountStatus, BrokerAccount
from brokers.protocol import BrokerError, SessionExpired
from brokers.streams import STREAMED_BROKERS, OrderStream, order_stream_class, order_update_announce

logger = logging.getLogger(__name__)

STATE_KEY = "brokers:order-stream:{account_id}"
INDEX_KEY = "brokers:order-streams"
STATE_TTL_SECONDS = 60
JOIN_SECONDS = 10


class StreamState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RETRYING = "retrying"
    EXPIRED = "expired"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def order_stream_state(*, account_id: str) -> dict[str, Any] | None:
    """The last reported state of `account_id`'s order stream; None when no supervisor streams it."""
    return cache.get(STATE_KEY.format(account_id=account_id))


def order_stream_states() -> dict[str, dict[str, Any]]:
    """Every stream the running supervisor reported, by account id; empty when none runs."""
    index = cache.get(INDEX_KEY) or {}
    keys = {STATE_KEY.format(account_id=account_id): account_id for account_id in index.get("accounts", [])}
    return {keys[key]: state for key, state in cache.get_many(list(keys)).items()}


def order_streamed_accounts(*, now: datetime | None = None) -> list[BrokerAccount]:
    """The accounts that should have an order stream: Dhan and Fyers, connected, not disconnected, within their
    session's day, with an access token."""
    now = now or timezone.now()
    accounts = BrokerAccount.objects.filter(
        Q(session_expires_at__isnull=True) | Q(session_expires_at__gt=now),
        broker__in=STREAMED_BROKERS,
        status=AccountStatus.CONNECTED,
        deleted_at__isnull=True,
    ).order_by("created_at", "id")
    return [account for account in accounts if order_stream_class(account.broker).credentials(account)[1]]


class _StreamWorker:
    """One account's stream in a thread of its own, reconnecting with backoff until stopped or refused."""

    def __init__(
        self,
        account: BrokerAccount,
        *,
        backoff: Backoff,
        state_ttl: float,
        stream_options: dict[str, Any],
    ) -> None:
        stream_class = order_stream_class(account.broker)
        self.account_id, self.broker = account.pk, account.broker
        self.fingerprint = stream_class.fingerprint(account)
        self.backoff = backoff
        self.state_ttl = state_ttl
        self.stop = threading.Event()
        self.state = StreamState.CONNECTING
        self.since = timezone.now()
        self.last_message_at: datetime | None = None
        self.detail = ""
        self.stream: OrderStream = stream_class.from_account(
            account, on_update=self._update, on_connected=self._connected, **stream_options
        )
        self.thread = threading.Thread(target=self._run, name=f"order-stream-{account.pk}", daemon=True)

    def start(self) -> None:
        self.report()
        self.thread.start()

    def halt(self) -> None:
        self.stop.set()

    def join(self) -> None:
        if self.thread.is_alive():
            self.thread.join(JOIN_SECONDS)

    @property
    def refused(self) -> bool:
        return self.state == StreamState.EXPIRED

    # --- the thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self.stream.stream(self.stop)
                except SessionExpired as error:
                    self._set(StreamState.EXPIRED, detail=str(error.detail))
                    logger.warning(
                        "%s order stream of %s refused its token; waiting for a new one", self.broker, self.account_id
                    )
                    return
                except Exception as error:
                    delay = self.backoff.next_delay()
                    detail = str(error.detail) if isinstance(error, BrokerError) else type(error).__name__
                    self._set(StreamState.RETRYING, detail=detail)
                    logger.warning(
                        "%s order stream of %s dropped (%s); reconnecting in %.1fs",
                        self.broker,
                        self.account_id,
                        detail,
                        delay,
                        exc_info=not isinstance(error, BrokerError),
                    )
                    self.stop.wait(delay)
        finally:
            connections.close_all()  # this thread's own database connections

    def _connected(self) -> None:
        self.backoff.reset()
        self._set(StreamState.CONNECTED)

    def _update(self, data: dict[str, Any]) -> None:
        self.last_message_at = timezone.now()
        self.report()
        order_update_announce(account_id=self.account_id, broker=self.broker, data=data)

    def _set(self, state: StreamState, *, detail: str = "") -> None:
        self.state, self.detail, self.since = state, detail, timezone.now()
        self.report()

    # --- health --------------------------------------------------------------------------------------------------

    def report(self) -> None:
        try:
            cache.set(
                STATE_KEY.format(account_id=self.account_id),
                {
                    "account_id": self.account_id,
                    "broker": self.broker,
                    "state": str(self.state),
                    "since": _iso(self.since),
                    "last_message_at": _iso(self.last_message_at),
                    "connections": self.stream.connections_opened,
                    "detail": self.detail[:300],
                },
                timeout=self.state_ttl,
            )
        except Exception:  # the cache is for the health page; a stream keeps running without it
            logger.warning("could not report the order stream state of %s", self.account_id, exc_info=True)

    def forget(self) -> None:
        try:
            cache.delete(STATE_KEY.format(account_id=self.account_id))
        except Exception:
            logger.warning("could not clear the order stream state of %s", self.account_id, exc_info=True)


class OrderStreamSupervisor:
    """See the module docstring. `backoff` makes each stream's backoff; `stream_options` go to every stream
    (`url`, `connect_timeout`: tests point streams at simulators)."""

    def __init__(
        self,
        *,
        poll_seconds: float = 15,
        backoff: Callable[[], Backoff] = Backoff,
        stream_options: dict[str, Any] | None = None,
    ) -> None:
        self.poll_seconds = poll_seconds
        self.backoff = backoff
        self.stream_options = stream_options or {}
        self.state_ttl = max(STATE_TTL_SECONDS, 3 * poll_seconds)
        self.workers: dict[str, _StreamWorker] = {}
        # One supervisor streams platform-wide; another started beside it waits and takes over if this one dies.
        self.lease = Lease("order-streams", ttl_seconds=3 * poll_seconds)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except Exception:  # a database or cache hiccup: the running streams go on, the next poll retries
                    logger.exception("order stream supervision failed; trying again in %.0fs", self.poll_seconds)
                stop.wait(self.poll_seconds)
        finally:
            self.stop_all()
            self.lease.release()
            connections.close_all()

    def sync(self) -> None:
        """Bring the running streams in line with the accounts that should have one (none while another supervisor
        holds the lease)."""
        if not self.lease.hold():
            if self.workers:
                self.stop_all()
            return
        wanted = {account.pk: account for account in order_streamed_accounts()}
        leaving = []
        for account_id, worker in list(self.workers.items()):
            account = wanted.get(account_id)
            if account is None or order_stream_class(account.broker).fingerprint(account) != worker.fingerprint:
                leaving.append(self.workers.pop(account_id))
            elif not worker.thread.is_alive() and not worker.refused:
                leaving.append(self.workers.pop(account_id))  # died of something unforeseen: start it afresh
        self._stop(leaving, forget={worker.account_id for worker in leaving} - set(wanted))
        for account_id, account in wanted.items():
            if account_id not in self.workers:
                worker = _StreamWorker(
                    account, backoff=self.backoff(), state_ttl=self.state_ttl, stream_options=self.stream_options
                )
                self.workers[account_id] = worker
                worker.start()
                logger.info("%s order stream of %s started", account.broker, account_id)
        for worker in self.workers.values():
            worker.report()
        cache.set(
            INDEX_KEY,
            {"updated_at": _iso(timezone.now()), "poll_seconds": self.poll_seconds, "accounts": sorted(self.workers)},
            timeout=self.state_ttl,
        )

    def stop_all(self) -> None:
        workers, self.workers = list(self.workers.values()), {}
        self._stop(workers, forget={worker.account_id for worker in workers})
        cache.delete(INDEX_KEY)

    @staticmethod
    def _stop(workers: list[_StreamWorker], *, forget: set[str]) -> None:
        for worker in workers:
            worker.halt()
        for worker in workers:
            worker.join()
            if worker.account_id in forget:
                worker.forget()


def order_streams_run(*, stop: threading.Event, poll_seconds: float = 15) -> None:
    """Supervise the order streams until `stop` is set; every stream is stopped before this returns."""
    OrderStreamSupervisor(poll_seconds=poll_seconds).run(stop)
