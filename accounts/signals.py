"""What the accounts app announces, so the apps built on it react without accounts importing them."""

from __future__ import annotations

import logging

from django.dispatch import Signal

logger = logging.getLogger(__name__)

# A user lost the right to trade: deactivated, or moved to a role that cannot trade. Sent inside the transaction
# that makes the change, with `user`, `actor` (None when the system acted) and `reason`.
trading_revoked = Signal()


def trading_revoked_send(*, user, actor, reason: str) -> None:
    """A receiver that fails must not undo a deactivation: the order pipeline refuses the user's new exposure on
    its own, so its failure is logged and the change stands."""
    for receiver, result in trading_revoked.send_robust(sender=user.__class__, user=user, actor=actor, reason=reason):
        if isinstance(result, Exception):
            logger.error("trading_revoked receiver %s failed for %s", receiver, user.pk, exc_info=result)


# A notification was stored. Sent inside the transaction that stores it, with `notification`; accounts' receivers
# push it to the user's live connections once that transaction commits.
notification_created = Signal()
