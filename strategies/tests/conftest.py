"""Fixtures of the strategy tests: the order pipeline's, plus a NIFTY universe priced on the paper market."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.utils import timezone

from orders.tests.conftest import eager_tasks, instruments, market, paper, publish_quote  # noqa: F401
from strategies.tests.factories import SPOT_SYMBOL, nifty_universe, option_symbol, trading_day_from


@pytest.fixture
def day() -> date:
    """The trading day the tests' fires happen on (today, or the next trading day)."""
    return trading_day_from(timezone.localdate())


@pytest.fixture
def nifty(db, day, publish_quote):  # noqa: F811
    """The universe around a 24,510 spot, every contract quoted (a CE's premium falls with its strike)."""
    expiries = nifty_universe(day=day)
    publish_quote(SPOT_SYMBOL, Decimal(24510))
    for expiry in sorted(set(expiries["weekly"]) | set(expiries["monthly"])):
        for strike in range(24200, 24850, 50):
            publish_quote(option_symbol(expiry, Decimal(strike), "CE"), Decimal(max(5, 24600 - strike) // 2 + 40))
            publish_quote(option_symbol(expiry, Decimal(strike), "PE"), Decimal(max(5, strike - 24400) // 2 + 40))
    return expiries
