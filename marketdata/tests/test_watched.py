"""What `/ws/market-data` clients watch reaches the market-data feed: noted when first subscribed in a process, noted
again while sockets hold it, forgotten after MARKET_DATA_WATCHED_SECONDS."""

from __future__ import annotations

import asyncio

import pytest
from django.core.cache import cache

from marketdata import tickhub, watched
from marketdata.watched import symbols_watched, symbols_watched_touch


@pytest.fixture(autouse=True)
def _forget_watched():
    cache.delete(watched._CACHE_KEY)
    yield
    cache.delete(watched._CACHE_KEY)


def test_recent_notes_come_first_and_old_ones_are_forgotten(settings):
    settings.MARKET_DATA_WATCHED_SECONDS = 3600
    symbols_watched_touch(["NSE:SBIN"], now=1000.0)
    symbols_watched_touch(["NSE:INFY", "NSE:TCS"], now=5000.0)
    symbols_watched_touch(["NSE:RELIANCE"], now=5500.0)  # also drops notes older than an hour before it

    assert symbols_watched(since=4000.0)[0] == "NSE:RELIANCE"
    assert set(symbols_watched(since=4000.0)) == {"NSE:RELIANCE", "NSE:INFY", "NSE:TCS"}
    assert "NSE:SBIN" not in symbols_watched(since=0.0)


async def test_a_hub_notes_its_symbols_again_while_its_sockets_hold_them(monkeypatch):
    class Outlet:
        modes: dict[str, str] = {}

        def tick_offer(self, symbol: str, text: str, now: float) -> None:
            pass

    hub = tickhub.TickHub()
    hub.outlets_of["NSE:INFY"] = {Outlet()}  # a socket subscribed long ago, past its first note
    hub.deliver([])
    await asyncio.sleep(0.2)
    assert await asyncio.to_thread(symbols_watched, since=0.0) == []  # not due yet

    monkeypatch.setattr(tickhub, "WATCHED_RENOTE_SECONDS", 0.0)
    hub.deliver([])
    for _ in range(50):
        if await asyncio.to_thread(symbols_watched, since=0.0):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(symbols_watched, since=0.0) == ["NSE:INFY"]
