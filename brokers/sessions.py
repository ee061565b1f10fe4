"""A broker session ending: below both the gateway (which marks a session expired the moment the broker says so) and
the brokers services (the daily expiry, an operator's action), so neither imports the other for it."""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from accounts.services import audit_record, notification_create
from algoterm.locking import row_locked
from brokers.models import AccountStatus, BrokerAccount


@transaction.atomic
def broker_session_mark_expired(*, account: BrokerAccount, reason: str, actor: User | None = None) -> bool:
    """Mark one connected account expired and tell its owner; False if it was not connected (nothing to do)."""
    locked = row_locked(BrokerAccount.objects.all(), pk=account.pk)
    if locked.status != AccountStatus.CONNECTED:
        return False
    locked.status = AccountStatus.EXPIRED
    refresh_token = (locked.session.get("extra") or {}).get("refresh_token")
    # With the owner's consent, a refresh token outlives the day's access token: the session can still be renewed
    # without a login (a renewal missed before the cut-off, or consent given after it). Nothing else is kept.
    keep = refresh_token and locked.session_renewal_consented_at is not None
    locked.session = {"access_token": "", "extra": {"refresh_token": refresh_token}} if keep else {}
    locked.save(update_fields=["status", "session_encrypted"])
    account.status = AccountStatus.EXPIRED
    audit_record(action="broker.session_expire", actor=actor, target=locked, details={"reason": reason})
    notification_create(
        user=locked.owner,
        kind="broker.session_expired",
        title=f"Log in to {locked.label} again",
        body="Broker sessions end every day; log in before the market opens to keep trading.",
        level="warning",
        data={"account_id": locked.pk},
    )
    return True
