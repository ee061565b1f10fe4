"""Pushing messages to a user's live WebSocket connections, after the current transaction commits.

Services call `push_to_user`; every /ws/events connection of that user joins the group `user.<id>` and
forwards the message as `{"t": message_type, "p": payload}` if its subscribed topics include it. Services that end a
session (logout, deactivation) call `user_sockets_close`, heard by every socket of the user on any endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from rest_framework.utils.encoders import JSONEncoder

logger = logging.getLogger(__name__)

# Which /ws/events topic carries each server message type.
TOPIC_OF_MESSAGE = {
    "order_update": "orders",
    "trade": "trades",
    "position_update": "positions",
    "rms_alert": "rms",
    "notification": "notifications",
}
EVENT_TOPICS = frozenset(TOPIC_OF_MESSAGE.values())

# What a /ws/events `snapshot` carries beyond the accounts app's own part: the apps above accounts (orders: open
# orders and positions) register theirs from their AppConfig.ready(), so accounts never imports them. A part takes
# `user=` and returns top-level keys rendered as the REST API renders them.
SnapshotPart = Callable[..., dict[str, Any]]
_snapshot_parts: list[SnapshotPart] = []

_server_loop: asyncio.AbstractEventLoop | None = None
_server_thread_id: int | None = None


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Embedded mode: the in-memory channel layer lives on the web server's loop; other threads send via it."""
    global _server_loop, _server_thread_id
    _server_loop, _server_thread_id = loop, threading.get_ident()


def user_group(user_id: str) -> str:
    return f"user.{user_id}"


def to_wire(payload: dict[str, Any]) -> dict[str, Any]:
    """Decimals, datetimes and ids as the REST API renders them, so both channels agree."""
    return json.loads(json.dumps(payload, cls=JSONEncoder))


def _groups_send(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Several group messages in one hop to the event loop (each hop costs more than the Redis commands)."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return

    async def send_all() -> None:
        results = await asyncio.gather(
            *(layer.group_send(group, message) for group, message in messages), return_exceptions=True
        )
        for (group, _), result in zip(messages, results, strict=True):
            if isinstance(result, Exception):
                logger.error("push to %s failed: %r", group, result)

    try:
        if _server_loop is not None and _server_loop.is_running() and threading.get_ident() != _server_thread_id:
            asyncio.run_coroutine_threadsafe(send_all(), _server_loop).result(timeout=5)
        else:
            async_to_sync(send_all)()
    except Exception:  # a push is best effort: the state change it reports has already committed
        logger.exception("pushes to %s failed", sorted({group for group, _ in messages}))


_outboxes = threading.local()


@contextmanager
def pushes_batched() -> Iterator[None]:
    """Within the block, the pushes of each user go out as one channel-layer message (`user.events`, unpacked by
    the socket into the same messages in the same order) once the block has ended and what they report has
    committed. An order's fill makes four pushes (order, trade, position, notification); sent one by one they cost
    more than the fill.

    Each push still waits for its own transaction: it is held back until that transaction commits, and dropped with
    it (or with its savepoint) on a rollback. Blocks nest; the outermost one sends."""
    if getattr(_outboxes, "current", None) is not None:
        yield
        return
    outbox: list[_Held] = []
    _outboxes.current = outbox
    try:
        yield
    finally:
        _outboxes.current = None
        if outbox:
            transaction.on_commit(lambda: _outbox_send(outbox))


class _Held:
    __slots__ = ("user_id", "message", "committed")

    def __init__(self, user_id: str, message: dict[str, Any]) -> None:
        self.user_id, self.message, self.committed = user_id, message, False

    def commit(self) -> None:
        self.committed = True


def _outbox_send(outbox: list[_Held]) -> None:
    by_user: dict[str, list[dict[str, Any]]] = {}
    for held in outbox:
        if held.committed:
            by_user.setdefault(held.user_id, []).append(held.message)
    _groups_send(
        [
            (user_group(user_id), events[0] if len(events) == 1 else {"type": "user.events", "events": events})
            for user_id, events in by_user.items()
        ]
    )


def push_to_user(*, user_id: str, message_type: str, payload: dict[str, Any]) -> None:
    if message_type not in TOPIC_OF_MESSAGE:
        raise ValueError(f"unknown event message type {message_type!r}")
    message = {
        "type": "user.event",
        "topic": TOPIC_OF_MESSAGE[message_type],
        "t": message_type,
        "p": to_wire(payload),
    }
    outbox = getattr(_outboxes, "current", None)
    if outbox is None:
        transaction.on_commit(lambda: _groups_send([(user_group(user_id), message)]))
        return
    held = _Held(user_id, message)
    outbox.append(held)
    # Registered in the push's own transaction (or savepoint), so a rollback drops it: only committed pushes go.
    transaction.on_commit(held.commit)


def user_sockets_group(user_id: str) -> str:
    """Every WebSocket of the user, whatever its endpoint, joins this group to hear that its session ended."""
    return f"sockets.{user_id}"


def user_sockets_close(*, user_id: str, code: str, reason: str, jti: str | None = None) -> None:
    """After commit, end the user's live WebSockets: those authenticated with the access token `jti` (a logout, a
    revoked token), or all of them (deactivation, a revoked token family). Each gets a non-recoverable `error` with
    `code` (an ErrorCode) and `reason`, then close code 4403 for ACCOUNT_DEACTIVATED or PERMISSION_DENIED and 4401
    otherwise. Goes through the channel layer, so it reaches sockets served by any web process.

    Best effort like every push: a socket that misses it still closes when its access token expires."""
    message = {"type": "sockets.close", "code": str(code), "reason": reason, "jti": jti}
    transaction.on_commit(lambda: _groups_send([(user_sockets_group(user_id), message)]))


def user_role_changed(*, user_id: str, role: str) -> None:
    """After commit, tell every live socket of the user its new role: an endpoint that needs a role (/ws/ops: admin)
    ends the session of a user who lost it, at once rather than when the access token expires."""
    message = {"type": "role.changed", "role": str(role)}
    transaction.on_commit(lambda: _groups_send([(user_sockets_group(user_id), message)]))


def snapshot_part_register(part: SnapshotPart) -> None:
    if part not in _snapshot_parts:
        _snapshot_parts.append(part)


def snapshot_parts(*, user) -> dict[str, Any]:
    """Every registered part for this user, merged, in wire form (sync: reads the database)."""
    merged: dict[str, Any] = {}
    for part in _snapshot_parts:
        merged.update(part(user=user))
    return to_wire(merged)


# --- the operators' socket: /ws/ops -------------------------------------------------------------------------------

# Topics an operator can subscribe to on /ws/ops; every app publishes its own through `ops_publish`.
OPS_TOPICS = ("system", "config", "health", "alerts", "signals", "risk", "orders")


def ops_group(topic: str) -> str:
    return f"ops.{topic}"


def ops_publish(*, topic: str, message_type: str, payload: dict[str, Any], now: bool = False) -> None:
    """After the current transaction commits, send `{"t": message_type, "p": payload}` to every /ws/ops connection
    subscribed to `topic`, on any web process. Best effort like every push: the change it reports has committed.
    `now=True` sends at once, without asking the database about a transaction: for reporting that it is down."""
    if topic not in OPS_TOPICS:
        raise ValueError(f"unknown ops topic {topic!r}")
    message = {"type": "ops.event", "topic": topic, "t": message_type, "p": to_wire(payload)}
    if now:
        _groups_send([(ops_group(topic), message)])
    else:
        transaction.on_commit(lambda: _groups_send([(ops_group(topic), message)]))
