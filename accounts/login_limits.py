"""Failed-login limits: after N failures in the window, 429 until it ends. Three counts, so that nobody can lock a
user out by failing logins for their email from somewhere else:

- per (email, client IP), LOGIN_FAILURE_LIMIT: guessing one account's password from one address;
- per client IP over all emails, LOGIN_FAILURE_IP_LIMIT: one address trying many accounts;
- per email over all IPs, LOGIN_FAILURE_EMAIL_LIMIT (far higher): a distributed guess at one account. Reaching it
  does not lock the email; it leaves each address a single attempt at it in the window, so a bot network gets one
  guess per address while the owner, from an address that has not failed, still logs in.

Every attempt takes a slot *before* the password is checked, so a burst of parallel guesses cannot all slip past
the count while the (deliberately slow) hash runs; a successful login hands its slots back. Counters live in the
cache (Redis in production) so every web process sees the same counts.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache


@dataclass(frozen=True)
class _Keys:
    email_from_ip: str
    ip: str | None
    email: str


def _keys(*, ip: str | None, email: str) -> _Keys:
    email_digest = hashlib.sha256(email.encode()).hexdigest()[:32]
    return _Keys(
        email_from_ip=f"login-failures:email-ip:{email_digest}:{ip or 'unknown'}",
        ip=f"login-failures:ip:{ip}" if ip else None,
        email=f"login-failures:email:{email_digest}",
    )


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


def _give_back(key: str) -> None:
    try:
        cache.decr(f"{key}:count")
    except ValueError:  # the window ended meanwhile
        pass


def _wait(key: str) -> int:
    started = cache.get(f"{key}:started", time.time())
    return max(1, int(started + _window_seconds() - time.time()) + 1)


def attempt_begin(*, ip: str | None, email: str) -> int:
    """Take a slot for one login attempt; returns 0 when it may proceed, else the seconds to wait."""
    keys = _keys(ip=ip, email=email)
    email_wide = _take(keys.email)
    # Past the email-wide limit, each address gets a single attempt at this email (a success resets it).
    pair_limit = 1 if email_wide > settings.LOGIN_FAILURE_EMAIL_LIMIT else settings.LOGIN_FAILURE_LIMIT
    wait = 0
    if _take(keys.email_from_ip) > pair_limit:
        wait = _wait(keys.email_from_ip)
    if keys.ip and _take(keys.ip) > settings.LOGIN_FAILURE_IP_LIMIT:
        wait = max(wait, _wait(keys.ip))
    return wait


def attempt_succeeded(*, ip: str | None, email: str) -> None:
    """A correct password: the email's counts start over and the IP gets its slot back (successes are not
    failures), but the IP's earlier failures stay, or one's own account could reset an attack on others."""
    keys = _keys(ip=ip, email=email)
    cache.delete_many(
        [f"{keys.email}:count", f"{keys.email}:started", f"{keys.email_from_ip}:count", f"{keys.email_from_ip}:started"]
    )
    if keys.ip:
        _give_back(keys.ip)
