"""The platform state every order reads: the trading mode (live or paper) and the platform kill switch.

The pre-trade check reads the kill switch and the broker gateway the mode, so the row is cached for a moment; a
change (made only by the operator console's system services) forgets the cached copy at once and again when it
commits, so no reader keeps the old state for longer than the commit takes.
"""

from __future__ import annotations

from django.core.cache import cache
from django.db import transaction

from algoterm.locking import row_locked
from algoterm.models import PlatformState

STATE_CACHE_KEY = "system:platform_state"
STATE_CACHE_SECONDS = 2


def platform_state() -> PlatformState:
    """The one platform state row (created live and trading on first use), cached for ~2 seconds."""
    state = cache.get(STATE_CACHE_KEY)
    if state is None:
        state, _ = PlatformState.objects.get_or_create(pk=1)
        cache.set(STATE_CACHE_KEY, state, timeout=STATE_CACHE_SECONDS)
    return state


def platform_state_forget() -> None:
    cache.delete(STATE_CACHE_KEY)
    # A reader between the delete and the commit could cache the old row again; forget it once more on commit.
    transaction.on_commit(lambda: cache.delete(STATE_CACHE_KEY))


def platform_state_lock() -> PlatformState:
    """The platform state row, locked for the rest of the transaction (created first when missing)."""
    PlatformState.objects.get_or_create(pk=1)
    return row_locked(PlatformState.objects.all(), pk=1)
