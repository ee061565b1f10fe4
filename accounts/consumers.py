"""/ws/events: the user's orders, trades, positions, RMS alerts and notifications as they happen.

Every connection starts with `server_ready` then a `snapshot` (open orders, open positions, unread notifications),
so a client reconnecting after a drop, a 1013 or a 1012 replaces its state from it instead of replaying events."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from accounts import selectors
from algoterm.api.ws import ProtocolConsumer, topic_subscription
from algoterm.realtime import EVENT_TOPICS, user_group


class EventsConsumer(ProtocolConsumer):
    """Subscribed to every topic on connect; `subscription` narrows or widens the set."""

    async def on_authenticated(self) -> None:
        self.topics: set[str] = set(EVENT_TOPICS)
        self.group = user_group(self.user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def on_ready(self) -> None:
        # Read after joining the group: an event racing the snapshot is delivered after it (perhaps repeating what
        # it shows; every event carries the whole resource), never lost between the two.
        await self.handle_request_snapshot({})

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def handle_subscription(self, payload: dict[str, Any]) -> None:
        action, topics = topic_subscription(payload, known=sorted(EVENT_TOPICS))
        if action == "subscribe":
            self.topics |= topics
        else:
            self.topics -= topics

    async def handle_request_snapshot(self, payload: dict[str, Any]) -> None:
        state = await database_sync_to_async(selectors.events_snapshot)(user=self.user)
        await self.send_message("snapshot", {"topics": sorted(self.topics), **state})

    async def user_event(self, event: dict[str, Any]) -> None:
        if event["topic"] in self.topics:
            await self.send_message(event["t"], event["p"])

    async def user_events(self, event: dict[str, Any]) -> None:
        """Several events of one commit, sent as one channel-layer message (`realtime.pushes_batched`)."""
        for each in event["events"]:
            await self.user_event(each)
