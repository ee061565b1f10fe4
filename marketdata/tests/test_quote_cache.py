"""The shared quote cache: one Redis hash, written a batch at a time, and forgetting what no feed renews."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings

from brokers.prices import quote_at
from marketdata.quotes import quote_get, quotes_get, quotes_prune, quotes_put

pytestmark = pytest.mark.skipif(settings.EMBEDDED, reason="embedded, each quote is a key that expires by itself")


def test_quotes_no_feed_renewed_for_days_are_forgotten_and_the_rest_kept():
    now = datetime(2026, 12, 8, 5, 0, tzinfo=UTC)
    expired = replace(quote_at("NFO:NIFTY26DEC24000CE", "12.5"), timestamp=now - timedelta(days=4))
    live = replace(quote_at("NSE:INFY", "1890"), timestamp=now - timedelta(minutes=1))
    quotes_put([expired, live])
    assert set(quotes_get(["NFO:NIFTY26DEC24000CE", "NSE:INFY"])) == {"NFO:NIFTY26DEC24000CE", "NSE:INFY"}

    assert quotes_prune(older_than=now - timedelta(days=3)) == 1

    assert quote_get("NFO:NIFTY26DEC24000CE") is None
    assert quote_get("NSE:INFY").last_price == live.last_price
