"""One holder at a time, platform-wide, for a role only one process may play (the market-data supervisor, the
order-stream supervisor): a lease in the cache that its holder renews on every round. A second process started for
the same role waits as a standby and takes the role over once the holder stops renewing (it died, or lost Redis),
within the lease's time to live."""

from __future__ import annotations

import logging
import uuid

from django.core.cache import cache

logger = logging.getLogger(__name__)


class Lease:
    def __init__(self, role: str, *, ttl_seconds: float) -> None:
        self.key = f"lease:{role}"
        self.ttl = max(1, int(ttl_seconds + 0.999))
        self.token = uuid.uuid4().hex
        self.held = False

    def hold(self) -> bool:
        """Take the lease or renew ours; whether we hold it now. A cache that does not answer counts as not held:
        two holders would do the role twice."""
        try:
            if cache.add(self.key, self.token, timeout=self.ttl):
                held = True
            elif cache.get(self.key) == self.token:
                held = bool(cache.touch(self.key, timeout=self.ttl))
            else:
                held = False
        except Exception:
            logger.warning("the %s lease could not be read", self.key, exc_info=True)
            held = False
        if held != self.held:
            logger.info("%s %s", "took" if held else "lost", self.key)
        self.held = held
        return held

    def release(self) -> None:
        try:
            if cache.get(self.key) == self.token:
                cache.delete(self.key)
        except Exception:
            logger.warning("the %s lease could not be released", self.key, exc_info=True)
        self.held = False
