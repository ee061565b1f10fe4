"""Real market data from brokers: the accounts an operator designated as the platform's market-data sources
(`BrokerAccount.market_data_priority`, set in the admin), one feeding at a time, following what users hold and watch.

`MarketDataSupervisor` runs where the feed runs (`serve` starts it when the `feed` section's source is "broker", in
both modes; `manage.py runfeed --source broker` runs it alone). Every few seconds it:
* keeps the feed of the first designated account whose session is live; when that session expires (the broker
  refuses the socket), the account is marked expired (its owner is told to log in) and the next designated account
  takes over, with no operator in the loop; when the feed brings no tick for MARKET_DATA_STALL_SECONDS while the
  market is open (the broker's socket down, or silent), the next live account takes over too, and the stalled one is
  passed over for MARKET_DATA_BENCH_SECONDS;
* follows the symbols the platform needs (`symbols_wanted`): the indices, what users hold (open positions), what
  they wait on (live orders), what running strategies trade, and what `/ws/market-data` clients subscribed lately,
  in that order of priority, within the broker's per-connection limit;
* records its state (`market_data_source_state`) for the health page, the console and the `feed.source_down` alert.

Other apps say what they need through `market_data_wants_register` (orders and strategies stand above market data).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections
from django.db.models import Q

from algoterm.leases import Lease
from brokers.models import AccountStatus, Broker, BrokerAccount
from brokers.protocol import BrokerError, InvalidInput, SessionExpired
from brokers.selectors import broker_accounts_market_data
from brokers.sessions import broker_session_mark_expired
from marketdata import calendar as market_calendar
from marketdata.feeds.base import Feed
from marketdata.feeds.runner import FeedUnavailable, PublishAndRecord, feed_class_for
from marketdata.models import Instrument, InstrumentType
from marketdata.watched import symbols_watched

logger = logging.getLogger(__name__)

FEED_OF_BROKER = {Broker.ZERODHA.value: "kite", Broker.DHAN.value: "dhan", Broker.FYERS.value: "fyers"}
# Instruments one socket connection may follow, by feed: Kite 3,000 per connection, Dhan 5,000 per connection,
# Fyers 5,000 symbols per data socket.
SOCKET_LIMITS = {"kite": 3000, "dhan": 5000, "fyers": 5000}
# The Instrument column that says a broker can stream a symbol.
_STREAMABLE = {
    "kite": Q(kite_token__isnull=False) & ~Q(kite_token=0),
    "dhan": ~Q(dhan_security_id=""),
    "fyers": ~Q(fyers_symbol=""),
}
STATE_KEY = "marketdata:source-state"
STATE_TTL_SECONDS = 120

WantedProvider = Callable[[], Iterable[str]]
_wanted_providers: dict[str, WantedProvider] = {}


def brokers_of_source(source: str) -> list[str] | None:
    """The brokers whose designated accounts a `feed` source uses: all for "broker" (and "simulated", whose demo
    accounts stream the same simulated market), one for a feed's own name."""
    named = [broker for broker, feed in FEED_OF_BROKER.items() if feed == source]
    return named or None


def market_data_wants_register(name: str, provider: WantedProvider) -> None:
    """An app above market data says which symbols the platform needs live (called from its AppConfig.ready());
    registering a name again replaces its provider."""
    _wanted_providers[name] = provider


def symbols_wanted(*, feed: str, limit: int | None = None) -> list[str]:
    """What the market-data feed should follow, most needed first, only symbols `feed` can stream, at most the
    broker's per-connection limit: the listed indices, then every registered provider's symbols (positions, orders,
    strategies), then what clients watched lately."""
    limit = limit or SOCKET_LIMITS.get(feed, 1000)
    ordered: dict[str, None] = {}
    indices = Instrument.objects.filter(is_active=True, instrument_type=InstrumentType.INDEX).order_by("symbol")
    ordered.update(dict.fromkeys(indices.values_list("symbol", flat=True)))
    for name, provider in list(_wanted_providers.items()):
        try:
            ordered.update(dict.fromkeys(provider()))
        except Exception:  # one app's failing read must not stop the feed following the others
            logger.exception("market-data provider %s failed", name)
    ordered.update(dict.fromkeys(symbols_watched(since=time.time() - settings.MARKET_DATA_WATCHED_SECONDS)))
    streamable = set(
        Instrument.objects.filter(_STREAMABLE[feed], symbol__in=list(ordered)).values_list("symbol", flat=True)
    )
    wanted = [symbol for symbol in ordered if symbol in streamable]
    if len(wanted) > limit:
        logger.warning(
            "%s feed: %d symbols wanted, following the first %d (the socket's limit)", feed, len(wanted), limit
        )
    return wanted[:limit]


def symbols_of_underlyings(underlyings: Iterable[str]) -> list[str]:
    """The spot symbols (index or stock) of underlyings like NIFTY or RELIANCE: what a strategy's legs price from."""
    names = set(underlyings)
    if not names:
        return []
    spots = Instrument.objects.filter(
        is_active=True, underlying__in=names, instrument_type__in=[InstrumentType.INDEX, InstrumentType.EQ]
    )
    return list(spots.order_by("symbol").values_list("symbol", flat=True))


def market_data_source_state() -> dict | None:
    """What the market-data supervisor last recorded: {"live", "account_id", "broker", "feed", "since", "symbols",
    "last_tick_at", "detail", "designated", "updated_at"}; None when no account is designated or none ran lately."""
    state = cache.get(STATE_KEY)
    if state is None or not state.get("designated"):
        return None
    return state


# --- the supervisor ---------------------------------------------------------------------------------------------


@dataclass
class _Running:
    account_id: str
    broker: str
    feed_name: str
    feed: Feed
    thread: threading.Thread
    stop: threading.Event
    since: datetime
    recorder_ticks_at_start: int
    following: set[str] = field(default_factory=set)


class MarketDataSupervisor:
    """Keeps one designated account's feed running and following what the platform needs (see the module)."""

    def __init__(
        self,
        *,
        recorder: PublishAndRecord,
        poll_seconds: float | None = None,
        resubscribe_seconds: float | None = None,
        brokers: Iterable[str] | None = None,
        feed_options: dict[str, dict] | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        self.recorder = recorder
        self.poll_seconds = poll_seconds if poll_seconds is not None else settings.MARKET_DATA_POLL_SECONDS
        self.resubscribe_seconds = (
            resubscribe_seconds if resubscribe_seconds is not None else settings.MARKET_DATA_RESUBSCRIBE_SECONDS
        )
        self.brokers = set(brokers) if brokers else set(FEED_OF_BROKER)
        self.feed_options = feed_options or {}  # by feed name: options for its constructor (tests, the demo)
        self.running: _Running | None = None
        self._benched: dict[str, float] = {}  # account -> monotonic time until which it is passed over
        # One supervisor feeds platform-wide; another started beside it waits and takes over if this one dies.
        self.lease = Lease("market-data", ttl_seconds=lease_seconds or max(15.0, 3 * self.poll_seconds))
        self.detail = ""
        self.failovers = 0
        self._last_resubscribe = 0.0

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.step()
                except Exception:  # the database or Redis may be away for a while: keep the loop alive
                    logger.exception("market-data supervisor step failed")
                    close_old_connections()
                stop.wait(self.poll_seconds)
        finally:
            self._stop_running()
            self.lease.release()

    def step(self) -> None:
        if not self.lease.hold():
            self._stop_running()  # another supervisor feeds: this one stands by and records nothing
            return
        designated = [
            account for account in broker_accounts_market_data(connected_only=False) if account.broker in self.brokers
        ]
        live = self._eligible([account for account in designated if account.status == AccountStatus.CONNECTED])
        retired = self._retire_if_needed(live)
        if self.running is None:
            self._start_first([account for account in live if account.pk != retired], designated=designated)
        if self.running is not None and time.monotonic() - self._last_resubscribe >= self.resubscribe_seconds:
            self._follow_wanted()
        self._record(designated=len(designated))

    # --- choosing and failing over -------------------------------------------------------------------------------

    def _eligible(self, live: list[BrokerAccount]) -> list[BrokerAccount]:
        """The live accounts minus those benched for a stalled feed, unless that leaves none (a stalled feed beats
        no feed)."""
        now = time.monotonic()
        self._benched = {account: until for account, until in self._benched.items() if until > now}
        rested = [account for account in live if account.pk not in self._benched]
        return rested or live

    def _stalled(self, running: _Running) -> float | None:
        """Seconds without a tick while the market is open, once that passes MARKET_DATA_STALL_SECONDS; else None."""
        if not market_calendar.is_open(datetime.now(tz=UTC), simulated=settings.BROKER_SIMULATORS):
            return None
        last = max(running.since, self.recorder.last_tick_at or running.since)
        silent = (datetime.now(tz=UTC) - last).total_seconds()
        return silent if silent >= settings.MARKET_DATA_STALL_SECONDS else None

    def _retire_if_needed(self, live: list[BrokerAccount]) -> str | None:
        """Stops the running feed when it must give way; returns the account it gave up on (session refused or feed
        stalled), which this step must not start again."""
        running = self.running
        if running is None:
            return None
        silent = self._stalled(running)
        if silent is not None and any(account.pk != running.account_id for account in live):
            # The broker's socket is down or quiet while others could feed: hand over, and leave this account out
            # for a while (after that, priority order rules again).
            self._benched[running.account_id] = time.monotonic() + settings.MARKET_DATA_BENCH_SECONDS
            self.detail = f"{running.broker} account {running.account_id}: no ticks for {silent:.0f} s"
            self.failovers += 1
            logger.warning("market-data feed of %s stalled (%s); failing over", running.account_id, self.detail)
            self._stop_running()
            return running.account_id
        failure = getattr(running.feed, "failure", None)
        still_first = bool(live) and live[0].pk == running.account_id
        if isinstance(failure, SessionExpired):
            account = BrokerAccount.objects.filter(pk=running.account_id).first()
            if account is not None:
                broker_session_mark_expired(account=account, reason=f"market-data feed: {failure.detail}")
            self.detail = f"{running.broker} account {running.account_id}: {failure.detail}"
            self.failovers += 1
            logger.warning("market-data feed of %s ended (%s); failing over", running.account_id, failure.detail)
            self._stop_running()
            return running.account_id
        if not running.thread.is_alive() or not still_first:
            # Disconnected, no longer designated, or a higher-priority account came back: start over from the top.
            self._stop_running()
        return None

    def _start_first(self, live: list[BrokerAccount], *, designated: list[BrokerAccount]) -> None:
        if not live:
            accounts = ", ".join(f"{account.broker} {account.pk} {account.status}" for account in designated)
            self.detail = f"no designated account has a live session ({accounts or 'none designated'})"
            return
        for account in live:
            feed_name = FEED_OF_BROKER[account.broker]
            try:
                symbols = symbols_wanted(feed=feed_name)
                feed = feed_class_for(feed_name).from_account(
                    account, symbols, publish=self.recorder, **self.feed_options.get(feed_name, {})
                )
            except (FeedUnavailable, BrokerError) as error:
                self.detail = f"{account.broker} account {account.pk}: {getattr(error, 'detail', error)}"
                logger.warning("market-data account %s cannot feed: %s", account.pk, self.detail)
                continue
            feed.stop_on_session_expired = True
            feed_stop = threading.Event()
            thread = threading.Thread(target=feed.run, args=(feed_stop,), name=f"feed-{feed_name}", daemon=True)
            self.running = _Running(
                account_id=account.pk,
                broker=account.broker,
                feed_name=feed_name,
                feed=feed,
                thread=thread,
                stop=feed_stop,
                since=datetime.now(tz=UTC),
                recorder_ticks_at_start=self.recorder.ticks,
                following=set(symbols),
            )
            self._last_resubscribe = time.monotonic()
            thread.start()
            self.detail = ""
            logger.info("market data now from %s account %s (%d symbols)", account.broker, account.pk, len(symbols))
            return

    def _stop_running(self) -> None:
        running, self.running = self.running, None
        if running is not None:
            running.stop.set()
            running.thread.join(timeout=10)

    # --- following ------------------------------------------------------------------------------------------------

    def _follow_wanted(self) -> None:
        running = self.running
        assert running is not None
        self._last_resubscribe = time.monotonic()
        wanted = set(symbols_wanted(feed=running.feed_name))
        added, removed = sorted(wanted - running.following), sorted(running.following - wanted)
        try:
            if removed:
                running.feed.unsubscribe(removed)
            if added:
                running.feed.subscribe(added)
        except InvalidInput as error:  # an instrument lost its broker id between the two reads: next round
            logger.info("market-data subscriptions not changed yet: %s", error.detail)
            return
        running.following = wanted

    def _record(self, *, designated: int) -> None:
        running = self.running
        state = {
            "designated": designated,
            "live": running is not None and running.thread.is_alive(),
            "account_id": running.account_id if running else None,
            "broker": running.broker if running else None,
            "feed": running.feed_name if running else None,
            "since": running.since.isoformat() if running else None,
            "symbols": len(running.following) if running else 0,
            "ticks": (self.recorder.ticks - running.recorder_ticks_at_start) if running else 0,
            "last_tick_at": self.recorder.last_tick_at.isoformat() if self.recorder.last_tick_at else None,
            "failovers": self.failovers,
            "detail": self.detail,
            "updated_at": datetime.now(tz=UTC).isoformat(),
        }
        try:
            cache.set(STATE_KEY, state, timeout=STATE_TTL_SECONDS)
        except Exception:  # Redis away: the next step records again
            logger.warning("could not record the market-data state", exc_info=True)
