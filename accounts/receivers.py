"""Accounts' own reactions to what its services announce (connected in AccountsConfig.ready())."""

from __future__ import annotations

from accounts.models import Notification
from accounts.presenters import notification_payload
from accounts.signals import notification_created
from algoterm import realtime


def on_notification_created(*, notification: Notification, **_: object) -> None:
    realtime.push_to_user(
        user_id=notification.user_id, message_type="notification", payload=notification_payload(notification)
    )


def receivers_connect() -> None:
    notification_created.connect(on_notification_created, dispatch_uid="accounts.notification_push")
