"""Run the order streams until SIGINT/SIGTERM: one order socket per connected Dhan or Fyers account, whose pushes
make the orders app read the named order from the broker."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from brokers.streams.supervisor import order_streams_run


class Command(BaseCommand):
    help = "Keep an order-update socket open for every connected Dhan and Fyers account until interrupted."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--poll", type=float, default=15.0, help="seconds between looks for connected, changed or gone accounts"
        )

    def handle(self, *args, poll: float, **options) -> None:
        if poll <= 0:
            raise CommandError("--poll must be positive.")
        stop = threading.Event()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, lambda *_: stop.set())
        self.stdout.write("order streams running; Ctrl+C stops them")
        order_streams_run(stop=stop, poll_seconds=poll)
        self.stdout.write("order streams stopped")
