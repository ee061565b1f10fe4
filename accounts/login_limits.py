"""Failed-login limits per client IP and per email: after N failures in the window, 429 until it ends.

Counters live in the cache (Redis in production) so every web process sees the same counts.
"""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache


def _keys(*, ip: str | None, email: str) -> list[str]:
    email_digest = hashlib.sha256(email.encode()).hexdigest()[:32]
    keys = [f"login-failures:email:{email_digest}"]
    if ip:
        keys.append(f"login-failures:ip:{ip}")
    return keys


def _window_seconds() -> int:
    return int(settings.LOGIN_FAILURE_WINDOW.total_seconds())


def seconds_until_allowed(*, ip: str | None, email: str) -> int:
    """0 when a login attempt may proceed, else how long the caller must wait."""
    now = time.time()
    wait = 0
    for key in _keys(ip=ip, email=email):
        count = cache.get(f"{key}:count", 0)
        if count >= settings.LOGIN_FAILURE_LIMIT:
            started = cache.get(f"{key}:started", now)
            wait = max(wait, int(started + _window_seconds() - now) + 1)
    return wait


def record_failure(*, ip: str | None, email: str) -> None:
    window = _window_seconds()
    for key in _keys(ip=ip, email=email):
        # add() only sets when absent, so the window starts at the first failure and the counter expires with it.
        cache.add(f"{key}:started", time.time(), timeout=window)
        cache.add(f"{key}:count", 0, timeout=window)
        try:
            cache.incr(f"{key}:count")
        except ValueError:  # expired between add and incr
            cache.set(f"{key}:count", 1, timeout=window)


def clear_email_failures(*, email: str) -> None:
    """A successful login clears the email's count; the IP's stays, or one's own account could reset an attack."""
    key = _keys(ip=None, email=email)[0]
    cache.delete_many([f"{key}:count", f"{key}:started"])
