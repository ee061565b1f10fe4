"""What accounts pushes on the user's sockets, rendered as the REST API renders the same things."""

from __future__ import annotations

from typing import Any

from accounts.models import Notification
from accounts.serializers import NotificationOutput
from algoterm.api.serializers import rendered


def notification_payload(notification: Notification) -> dict[str, Any]:
    """The `notification` message's payload: the same shape as an item of `GET /api/notifications`."""
    return rendered(NotificationOutput, notification)
