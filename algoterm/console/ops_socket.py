"""/ws/ops: the operators' live view of the whole platform, on the `{t, p}` protocol of every socket (admins only).

An operator subscribes to topics (`algoterm.realtime.OPS_TOPICS`); each subscription is answered with a `snapshot` of
the topics' current state, then every message published on them (`algoterm.realtime.ops_publish`, from the service
that made the change, after it commits) arrives as it happens. A reconnecting client subscribes again and replaces its
state from the snapshot instead of replaying what it missed.

Each topic's snapshot comes from the one registry below (`ops_snapshot_register`): the console registers its own
parts here, and a module that owns another part (the alerts) registers it the same way. A topic with no part
registered answers an empty list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone

from accounts.models import Role
from algoterm import config
from algoterm.api.errors import ErrorCode
from algoterm.api.ws import CLOSE_FORBIDDEN, ProtocolConsumer, topic_subscription
from algoterm.console.metrics import components_health
from algoterm.console.order_rates import order_rates_now
from algoterm.console.system import system_status
from algoterm.realtime import OPS_TOPICS, ops_group, to_wire
from rms.selectors import rms_platform_events_recent
from strategies.selectors import signal_platform_recent

# How many of the latest signals and risk events a snapshot carries.
RECENT_EVENTS = 20
ADMINS_ONLY = "Only administrators can use /ws/ops."

OpsSnapshotPart = Callable[[], Any]
_snapshot_parts: dict[str, OpsSnapshotPart] = {}


def ops_snapshot_register(topic: str, part: OpsSnapshotPart) -> None:
    """`part()` (sync: it may read the database) answers `topic`'s current state for a /ws/ops snapshot; the latest
    registration of a topic wins."""
    if topic not in OPS_TOPICS:
        raise ValueError(f"unknown ops topic {topic!r}")
    _snapshot_parts[topic] = part


def ops_snapshot(*, topics: Iterable[str]) -> dict[str, Any]:
    """The `snapshot` payload for these topics, in wire form: `{"topics": {topic: state}}`."""
    states = {}
    for topic in sorted(topics, key=OPS_TOPICS.index):
        part = _snapshot_parts.get(topic)
        states[topic] = part() if part is not None else []
    return to_wire({"topics": states})


# --- the console's own parts ---------------------------------------------------------------------------------------


def _config_state() -> dict[str, Any]:
    return {
        name: {
            "version": state["version"],
            "stored": state["stored"],
            "updated_by": state["updated_by"],
            "updated_at": state["updated_at"],
        }
        for name, state in config.config_all().items()
    }


def _health_state() -> dict[str, Any]:
    return {
        name: {
            "state": component.status,
            "required": component.required,
            "latency_ms": component.latency_ms,
            "detail": component.detail,
            "info": component.info,
        }
        for name, component in components_health().items()
    }


ops_snapshot_register("system", system_status)
ops_snapshot_register("config", _config_state)
ops_snapshot_register("health", _health_state)
ops_snapshot_register("signals", lambda: signal_platform_recent(limit=RECENT_EVENTS))
ops_snapshot_register("risk", lambda: rms_platform_events_recent(limit=RECENT_EVENTS))
ops_snapshot_register("orders", lambda: order_rates_now(now=timezone.now()))


# --- the consumer --------------------------------------------------------------------------------------------------


class OpsConsumer(ProtocolConsumer):
    """Subscribed to nothing on connect; `subscription` adds or drops topics, each subscribe answered by a snapshot
    of the topics it named."""

    async def _refused_at_handshake(self, user, auth_error: str | None) -> bool:
        if await super()._refused_at_handshake(user, auth_error):
            return True
        if not user.is_admin:
            await self.send_error(ADMINS_ONLY, code=ErrorCode.PERMISSION_DENIED, recoverable=False)
            await self.close(code=CLOSE_FORBIDDEN)
            return True
        return False

    async def on_authenticated(self) -> None:
        self.topics: set[str] = set()

    async def disconnect(self, code: int) -> None:
        for topic in getattr(self, "topics", ()):
            await self.channel_layer.group_discard(ops_group(topic), self.channel_name)

    async def handle_auth(self, payload: dict[str, Any]) -> None:
        await super().handle_auth(payload)
        # The renewed token reloads the user: one no longer an admin keeps no operators' socket.
        if not self._session_ended and not self.user.is_admin:
            await self.session_end(code=ErrorCode.PERMISSION_DENIED, message=ADMINS_ONLY)

    async def on_role_changed(self, role: str) -> None:
        # Demoted while connected: the operators' view of every user ends now, not when the token expires.
        if role != Role.ADMIN:
            await self.session_end(code=ErrorCode.PERMISSION_DENIED, message=ADMINS_ONLY)

    async def handle_subscription(self, payload: dict[str, Any]) -> None:
        action, topics = topic_subscription(payload, known=OPS_TOPICS)
        if action == "unsubscribe":
            for topic in topics & self.topics:
                await self.channel_layer.group_discard(ops_group(topic), self.channel_name)
            self.topics -= topics
            return
        for topic in topics:
            # Joined again even when already subscribed: that renews the Redis layer's group membership.
            await self.channel_layer.group_add(ops_group(topic), self.channel_name)
        self.topics |= topics
        # Read after joining: a message racing the snapshot arrives after it (perhaps repeating it), never lost.
        await self._send_snapshot(topics)

    async def handle_request_snapshot(self, payload: dict[str, Any]) -> None:
        await self._send_snapshot(self.topics)

    async def _send_snapshot(self, topics: set[str]) -> None:
        await self.send_message("snapshot", await database_sync_to_async(ops_snapshot)(topics=topics))

    async def ops_event(self, event: dict[str, Any]) -> None:
        """From `realtime.ops_publish`."""
        if event["topic"] in self.topics:
            await self.send_message(event["t"], event["p"])
