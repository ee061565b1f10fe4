"""Run one market-data feed until SIGINT/SIGTERM: ticks go through the tick bus, 1-minute candles into the database."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from brokers.models import BrokerAccount
from brokers.protocol import BrokerError
from brokers.selectors import broker_account_find
from marketdata.candles import MinuteCandleBuilder
from marketdata.feeds.runner import (
    BROKER_SOURCE,
    BROKER_SOURCES,
    FEED_SOURCES,
    FeedUnavailable,
    PublishAndRecord,
    feed_build,
    feed_supervise,
)
from marketdata.sources import MarketDataSupervisor, brokers_of_source


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    return stop


def _account(account_id: str) -> BrokerAccount:
    account = broker_account_find(account_id=account_id)
    if account is None:
        raise CommandError(f"No broker account {account_id}.")
    return account


class Command(BaseCommand):
    help = (
        "Run a market-data feed until interrupted: the simulated market, one broker account's feed (--source "
        "kite|dhan|fyers --account ACC_ID), or the designated market-data accounts with failover (--source broker; "
        "kite|dhan|fyers without --account: that broker's designated accounts)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--source", choices=[BROKER_SOURCE, *sorted(FEED_SOURCES)], default="simulated")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between simulated batches")
        parser.add_argument("--seed", type=int, default=None, help="makes the simulated market reproducible")
        parser.add_argument("--account", default=None, help="broker account id (acc_...) whose session feeds ticks")
        parser.add_argument(
            "--symbols", default="", help="comma-separated symbols a broker feed follows (default: listed spots)"
        )

    def handle(
        self, *args, source: str, interval: float, seed: int | None, account: str | None, symbols: str, **options
    ) -> None:
        if interval <= 0:
            raise CommandError("--interval must be positive.")
        recorder = PublishAndRecord(builder=MinuteCandleBuilder())
        if source == BROKER_SOURCE or (source in BROKER_SOURCES and not account):
            self._designated(source=source, recorder=recorder)
            return
        named = [symbol.strip().upper() for symbol in symbols.split(",") if symbol.strip()]
        try:
            feed = feed_build(
                source=source,
                recorder=recorder,
                interval=interval,
                seed=seed,
                account=_account(account) if account else None,
                symbols=named,
            )
        except (FeedUnavailable, BrokerError) as error:
            raise CommandError(str(getattr(error, "detail", error))) from error
        stop = _stop_on_signals()
        self.stdout.write(f"{source} feed running; Ctrl+C stops it")
        feed_supervise(feed=feed, recorder=recorder, stop=stop, name=source)
        self.stdout.write(f"{source} feed stopped after {recorder.batches} batches")

    def _designated(self, *, source: str, recorder: PublishAndRecord) -> None:
        supervisor = MarketDataSupervisor(recorder=recorder, brokers=brokers_of_source(source))
        stop = _stop_on_signals()
        self.stdout.write(f"market data from the designated {source} accounts; Ctrl+C stops it")
        feed_supervise(feed=supervisor, recorder=recorder, stop=stop, name="market-data")
        self.stdout.write(f"market-data feed stopped after {recorder.batches} batches")
