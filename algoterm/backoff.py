"""Reconnect delays for the sockets we hold open to brokers (market feeds, order streams)."""

from __future__ import annotations

import random


class Backoff:
    """1, 2, 4 ... seconds up to `maximum`, with jitter so many sockets do not reconnect in step; reset once a
    connection holds."""

    def __init__(self, *, initial: float = 1.0, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempt = 0
