"""Failed-login limits per client IP and per email: after N failures in the window, 429 until it ends.

Every attempt takes a slot *before* the password is checked, so a burst of parallel guesses cannot all slip past
the count while the (deliberately slow) hash runs; a successful login hands its slot back. Counters live in the
cache (Redis in production) so every web process sees the same counts.
"""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache


def _keys(*, ip: str | None, email: str) -> tuple[str, str | None]:
    email_digest = hashlib.sha256(email.encode()).hexdigest()[:32]
    return f"login-failures:email:{email_digest}", (f"login-failures:ip:{ip}" if ip else None)


def _window_seconds() -> int:
    return int(settings.LOGIN_FAILURE_WINDOW.total_seconds())


def _take(key: str) -> int:
    window = _window_seconds()
    # add() only sets when absent, so the window starts at the first attempt and the counter expires with it.
    cache.add(f"{key}:started", time.time(), timeout=window)
    cache.add(f"{key}:count", 0, timeout=window)
    try:
        return cache.incr(f"{key}:count")
    except ValueError:  # expired between add and incr
        cache.set(f"{key}:count", 1, timeout=window)
        return 1


def _wait(key: str) -> int:
    started = cache.get(f"{key}:started", time.time())
    return max(1, int(started + _window_seconds() - time.time()) + 1)


def attempt_begin(*, ip: str | None, email: str) -> int:
    """Take a slot for one login attempt; returns 0 when it may proceed, else the seconds to wait."""
    wait = 0
    for key in filter(None, _keys(ip=ip, email=email)):
        if _take(key) > settings.LOGIN_FAILURE_LIMIT:
            wait = max(wait, _wait(key))
    return wait


def attempt_succeeded(*, ip: str | None, email: str) -> None:
    """A correct password: the email's count starts over and the IP gets its slot back (successes are not
    failures), but the IP's earlier failures stay, or one's own account could reset an attack."""
    email_key, ip_key = _keys(ip=ip, email=email)
    cache.delete_many([f"{email_key}:count", f"{email_key}:started"])
    if ip_key:
        try:
            cache.decr(f"{ip_key}:count")
        except ValueError:
            pass
