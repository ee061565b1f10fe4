"""Running a feed: build it for a source, send each batch through the tick bus and the candle builder, close
minute candles as the clock passes them. Used by `manage.py runfeed` and by `manage.py serve`'s embedded feed."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from datetime import UTC, datetime

from brokers.prices import REFERENCE_PRICES
from brokers.protocol import InvalidInput, Quote
from marketdata.candles import MinuteCandleBuilder
from marketdata.feeds.base import Feed
from marketdata.models import Instrument, InstrumentType
from marketdata.quotes import QUOTES_KEPT, quotes_prune
from marketdata.ticks import ticks_publish

logger = logging.getLogger(__name__)

FEED_SOURCES = {
    "simulated": "marketdata.feeds.simulated.SimulatedFeed",
    "kite": "marketdata.feeds.kite.KiteFeed",
    "dhan": "marketdata.feeds.dhan.DhanFeed",
    "fyers": "marketdata.feeds.fyers.FyersFeed",
}
BROKER_SOURCES = {"kite", "dhan", "fyers"}
# The designated market-data accounts (marketdata.sources): not a feed of its own but whichever of theirs is live.
BROKER_SOURCE = "broker"
STATUS_EVERY_SECONDS = 60.0
QUOTES_PRUNE_EVERY_SECONDS = 3600.0
CANDLE_CLOSE_EVERY_SECONDS = 5.0
MAX_DEFAULT_BROKER_SYMBOLS = 1000


class FeedUnavailable(Exception):
    pass


def feed_class_for(source: str) -> type[Feed]:
    """The feed class of a source, imported only when asked for (broker feeds bring their SDKs)."""
    dotted = FEED_SOURCES[source]
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise FeedUnavailable(f"The {source} feed ({dotted}) is not installed in this build.") from error
        raise
    feed_class = getattr(module, class_name, None)
    if feed_class is None:
        raise FeedUnavailable(f"{module_name} defines no {class_name}.")
    return feed_class


class PublishAndRecord:
    """What a feed calls with each batch: the tick bus first, then the candle builder; counts for the status line."""

    def __init__(self, *, builder: MinuteCandleBuilder) -> None:
        self.builder = builder
        self.batches = self.ticks = 0
        self.last_tick_at: datetime | None = None

    def __call__(self, quotes: list[Quote]) -> int:
        fills = ticks_publish(quotes)
        try:
            self.builder.ticks_add(quotes)
        except Exception:  # candles must never stop the ticks
            logger.exception("candle building failed")
        self.batches += 1
        self.ticks += len(quotes)
        if quotes:
            self.last_tick_at = datetime.now(tz=UTC)
        return fills


def broker_symbols(*, source: str, named: list[str]) -> list[str]:
    """The symbols named, else the listed indices and stocks this broker has ids for (capped: brokers limit
    instruments per connection)."""
    if named:
        return named
    listed = Instrument.objects.filter(
        is_active=True, instrument_type__in=[InstrumentType.INDEX, InstrumentType.EQ]
    ).order_by("symbol")
    if source == "kite":
        listed = listed.exclude(kite_token=None).exclude(kite_token=0)
    elif source == "dhan":
        listed = listed.exclude(dhan_security_id="")
    elif source == "fyers":
        listed = listed.exclude(fyers_symbol="")
    symbols = list(listed.values_list("symbol", flat=True)[:MAX_DEFAULT_BROKER_SYMBOLS])
    return symbols or list(REFERENCE_PRICES)


def feed_build(
    *,
    source: str,
    recorder: PublishAndRecord,
    interval: float = 1.0,
    seed: int | None = None,
    account=None,
    symbols: list[str] | None = None,
) -> Feed:
    feed_class = feed_class_for(source)
    if source == "simulated":
        return feed_class(interval=interval, seed=seed, publish=recorder)
    if account is None:
        raise InvalidInput(f"The {source} feed needs a connected {source} broker account.")
    return feed_class.from_account(account, broker_symbols(source=source, named=symbols or []), publish=recorder)


def feed_supervise(*, feed: Feed, recorder: PublishAndRecord, stop: threading.Event, name: str) -> None:
    """Runs `feed` in a thread and closes candle minutes here until `stop`; flushes the open minute at the end."""
    runner = threading.Thread(target=feed.run, args=(stop,), name=f"feed-{name}", daemon=True)
    runner.start()
    last_status = last_prune = time.monotonic()
    while not stop.wait(CANDLE_CLOSE_EVERY_SECONDS):
        recorder.builder.minutes_close(now=datetime.now(tz=UTC))
        if time.monotonic() - last_prune >= QUOTES_PRUNE_EVERY_SECONDS:
            last_prune = time.monotonic()
            try:
                quotes_prune(older_than=datetime.now(tz=UTC) - QUOTES_KEPT)
            except Exception:  # housekeeping must never stop the feed
                logger.exception("pruning old quotes failed")
        if time.monotonic() - last_status >= STATUS_EVERY_SECONDS:
            last_status = time.monotonic()
            logger.info(
                "%s feed: %d batches, %d ticks, %d minute candles stored",
                name,
                recorder.batches,
                recorder.ticks,
                recorder.builder.minutes_written,
            )
    runner.join(timeout=15)
    recorder.builder.flush()
