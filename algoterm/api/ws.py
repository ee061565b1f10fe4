"""The WebSocket side of the API: JWT auth, origin check and the `{t, p}` protocol shared by every endpoint.

Close codes a client can act on: 4401/4403/4404/4429 (see below) mean "do not retry as is"; 1013 (Try Again Later)
means a dependency (Redis, the database) is down and the client should reconnect with backoff; 1012 (Service
Restart) is sent by the web server (uvicorn) to every open socket when it shuts down, and means reconnect now. Every
(re)connection starts with `server_ready`, and subscribing (or, on /ws/events, connecting) sends a `snapshot` of the
current state, so a client that reconnects never needs what it missed while away.

A socket lives as long as the session that opened it: it closes with 4401 when its access token expires (AUTH_EXPIRED)
or is logged out (AUTH_INVALID), and with 4403 when the account is deactivated, each time after a non-recoverable
`error` saying why. `{"t": "auth", "p": {"token": <access JWT>}}` renews the token in-band (answered by
`auth_renewed` with the new expiry); a token that is invalid or another user's closes the socket with 4401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.fields import DateTimeField
from rest_framework.utils.encoders import JSONEncoder

from algoterm import metrics
from algoterm.api.errors import AppError, ErrorCode, ValidationFailed
from algoterm.api.socket_auth import socket_token_authenticate
from algoterm.outages import DEPENDENCY_ERRORS, outage_report
from algoterm.realtime import user_sockets_group

logger = logging.getLogger(__name__)

CLOSE_AUTH_FAILED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455's "Try Again Later": a dependency is down, reconnect with backoff
OUTAGE_MESSAGE = "A required service is unavailable; reconnect in a few seconds."
EXPIRED_MESSAGE = "The access token expired; refresh it and reconnect (renew it in-band before it expires)."
# An ended session closes with 4403 when the account may no longer use the socket at all, else 4401 (log in again).
CLOSE_FORBIDDEN_FOR = frozenset({ErrorCode.ACCOUNT_DEACTIVATED, ErrorCode.PERMISSION_DENIED})


@dataclass(frozen=True)
class SocketToken:
    """The access token a socket is authenticated with: its id (a logout names it) and when it expires."""

    jti: str
    expires_at: datetime

    @classmethod
    def from_access_token(cls, token) -> SocketToken:
        return cls(jti=str(token["jti"]), expires_at=datetime.fromtimestamp(token["exp"], tz=UTC))

    def wire(self) -> dict[str, Any]:
        """As the REST API renders an expiry: a timestamp and seconds from now."""
        remaining = (self.expires_at - datetime.now(tz=UTC)).total_seconds()
        return {"expires_at": DateTimeField().to_representation(self.expires_at), "expires_in": max(0, int(remaining))}


def _token_from_scope(scope: dict[str, Any]) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials:
                return credentials.strip()
    return None


class JwtAuthMiddleware(BaseMiddleware):
    """Sets scope["user"] from `?token=` or `Authorization: Bearer`; scope["auth_error"] says why it is anonymous."""

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        raw_token = _token_from_scope(scope)
        if raw_token is None:
            scope["user"], scope["auth_error"], scope["auth_token"] = AnonymousUser(), ErrorCode.AUTH_REQUIRED, None
        else:
            scope["user"], scope["auth_error"], scope["auth_token"] = await _user_for_token(raw_token)
        return await self.inner(scope, receive, send)


@database_sync_to_async
def _authenticated(raw_token: str):
    """(user, SocketToken); raises AppError for a bad token and the database's errors when it is down."""
    user, token = socket_token_authenticate(raw_token)
    return user, SocketToken.from_access_token(token)


async def _user_for_token(raw_token: str):
    try:
        user, token = await _authenticated(raw_token)
    except AppError as error:
        return AnonymousUser(), error.code, None
    except DEPENDENCY_ERRORS as error:  # the database is down: the token may be fine, so not 4401
        outage_report(error)
        return AnonymousUser(), ErrorCode.SERVICE_UNAVAILABLE, None
    return user, None, token


class TokenClientOriginValidator(OriginValidator):
    """Browsers must come from an allowed origin; native apps send no Origin and authenticate by token alone."""

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or self.validate_origin(parsed_origin)


def server_ping_options() -> dict[str, float]:
    """uvicorn's keepalive for every WebSocket, from WS_PING_INTERVAL_SECONDS and WS_PING_TIMEOUT_SECONDS (interval
    0: no pings). As `uvicorn.Config` keywords; `server_ping_args` gives the same as command-line options."""
    return {
        "ws_ping_interval": max(0.0, float(settings.WS_PING_INTERVAL_SECONDS)),
        "ws_ping_timeout": max(1.0, float(settings.WS_PING_TIMEOUT_SECONDS)),
    }


def server_ping_args() -> list[str]:
    options = server_ping_options()
    return [
        "--ws-ping-interval",
        str(options["ws_ping_interval"]),
        "--ws-ping-timeout",
        str(options["ws_ping_timeout"]),
    ]


def topic_subscription(payload: dict[str, Any], *, known: Sequence[str]) -> tuple[str, set[str]]:
    """A `subscription` `{"action": "subscribe"|"unsubscribe", "topics": [...]}` checked against the endpoint's
    topics: (action, topics), or ValidationFailed saying what is wrong."""
    action = payload.get("action")
    topics = payload.get("topics")
    if action not in ("subscribe", "unsubscribe"):
        raise ValidationFailed('"action" must be "subscribe" or "unsubscribe".')
    if not isinstance(topics, list) or not topics or not all(isinstance(topic, str) for topic in topics):
        raise ValidationFailed('"topics" must be a non-empty list of topic names.')
    unknown = sorted(set(topics) - set(known))
    if unknown:
        raise ValidationFailed(f"Unknown topics {unknown}; known: {list(known)}.")
    return action, set(topics)


def websocket_stack(inner):
    allowed = list(settings.ALLOWED_HOSTS) + list(settings.CORS_ALLOWED_ORIGINS)
    return TokenClientOriginValidator(JwtAuthMiddleware(inner), allowed)


class ProtocolConsumer(AsyncJsonWebsocketConsumer):
    """Speaks `{"t": type, "p": payload}`: authenticates, says server_ready, answers ping, reports bad input
    with a recoverable `error` and keeps the connection. Subclasses add `handle_<type>(payload)` methods.

    A dependency outage anywhere in the connection's life (the channel layer's Redis, the database) ends it with a
    recoverable SERVICE_UNAVAILABLE `error` and close code 1013, whether or not the handshake was accepted yet."""

    async def __call__(self, scope, receive, send) -> None:
        self._accepted = self._closed = False

        async def observed_receive():
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self._closed = True
            return message

        async def observed_send(message) -> None:
            if message["type"] == "websocket.accept":
                self._accepted = True
            elif message["type"] == "websocket.close":
                self._closed = True
            await send(message)

        try:
            await super().__call__(scope, observed_receive, observed_send)
        except DEPENDENCY_ERRORS as error:
            # Raised by the channel layer's receive loop or a handler; channels' dispatch loop is gone by now.
            outage_report(error)
            await self._close_for_outage()
            await self._release_after_outage()

    async def _close_for_outage(self) -> None:
        if self._closed:
            return
        frames = [
            {"type": "websocket.send", "text": json.dumps({"t": "error", "p": self._outage_error()})},
            {"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER},
        ]
        if not self._accepted:  # accept first: a refused handshake would reach the client as a bare HTTP error
            frames.insert(0, {"type": "websocket.accept"})
        with contextlib.suppress(OSError):  # the client left meanwhile (uvicorn's ClientDisconnected)
            for frame in frames:
                await self.base_send(frame)

    @staticmethod
    def _outage_error() -> dict[str, Any]:
        return {"message": OUTAGE_MESSAGE, "code": str(ErrorCode.SERVICE_UNAVAILABLE), "recoverable": True}

    async def _release_after_outage(self) -> None:
        """What websocket_disconnect would have released; failing again in the same outage is expected, and what
        stays behind in Redis (a group membership, a connection count) expires or is overwritten later."""
        with contextlib.suppress(StopConsumer, *DEPENDENCY_ERRORS):
            await self.websocket_disconnect({"type": "websocket.disconnect", "code": CLOSE_TRY_AGAIN_LATER})

    async def connect(self) -> None:
        await self.accept()
        if await self._refused_at_handshake(self.scope.get("user"), self.scope.get("auth_error")):
            return
        self.token: SocketToken = self.scope["auth_token"]
        self._session_ended = False
        self._sockets_group = user_sockets_group(self.scope["user"].pk)
        await self.channel_layer.group_add(self._sockets_group, self.channel_name)
        # A logout or deactivation that committed after the handshake's check was announced before this socket could
        # hear it; from now on it hears them, so check once more.
        user, error, _ = await _user_for_token(_token_from_scope(self.scope) or "")
        if await self._refused_at_handshake(user, error):
            return
        self.user = user
        self._expiry_task = asyncio.create_task(self._close_at_expiry())
        self.connection_id = uuid.uuid4().hex
        self._window_started = time.monotonic()
        self._window_count = 0
        await self.on_authenticated()
        self._counted_endpoint = metrics.ws_endpoint(self.scope.get("path", ""))
        await metrics.ws_connection_opened(self._counted_endpoint)
        await self.send_message(
            "server_ready",
            {
                "connection_id": self.connection_id,
                "protocol_version": settings.WS_PROTOCOL_VERSION,
                "token_expires_at": self.token.wire()["expires_at"],
            },
        )
        await self.on_ready()

    async def _refused_at_handshake(self, user, auth_error: str | None) -> bool:
        if auth_error == ErrorCode.SERVICE_UNAVAILABLE:
            await self.send_message("error", self._outage_error())
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return True
        if user is None or not user.is_authenticated:
            code = auth_error or ErrorCode.AUTH_INVALID
            message = "Account deactivated." if code == ErrorCode.ACCOUNT_DEACTIVATED else "Authentication failed."
            await self.send_error(message, code=code, recoverable=False)
            await self.close(code=CLOSE_AUTH_FAILED)
            return True
        return False

    async def websocket_disconnect(self, message) -> None:
        endpoint, self._counted_endpoint = getattr(self, "_counted_endpoint", None), None
        if endpoint is not None:
            await metrics.ws_connection_closed(endpoint)
        if getattr(self, "_expiry_task", None) is not None:
            self._expiry_task.cancel()
        group, self._sockets_group = getattr(self, "_sockets_group", None), None
        if group is not None:
            # In a Redis outage the membership stays behind and expires with the channel layer's group expiry.
            with contextlib.suppress(*DEPENDENCY_ERRORS):
                await self.channel_layer.group_discard(group, self.channel_name)
        await super().websocket_disconnect(message)

    # --- the session: expiry, in-band renewal, logout and deactivation -------------------------------------------

    async def _close_at_expiry(self) -> None:
        await asyncio.sleep(max(0.0, (self.token.expires_at - datetime.now(tz=UTC)).total_seconds()))
        with contextlib.suppress(OSError):  # the client left meanwhile
            await self.session_end(code=ErrorCode.AUTH_EXPIRED, message=EXPIRED_MESSAGE)

    async def session_end(self, *, code: str, message: str) -> None:
        """Tell the client why in a non-recoverable `error`, then close: 4403 if the account may not use the socket,
        else 4401."""
        if self._session_ended or self._closed:
            return
        self._session_ended = True
        await self.send_last(json.dumps({"t": "error", "p": {"message": message, "code": code, "recoverable": False}}))
        await self.close(code=CLOSE_FORBIDDEN if code in CLOSE_FORBIDDEN_FOR else CLOSE_AUTH_FAILED)

    async def send_last(self, text: str) -> None:
        """The last message before closing; a consumer that queues what it sends overrides this to skip its queue."""
        await self.send(text_data=text)

    async def handle_auth(self, payload: dict[str, Any]) -> None:
        raw_token = payload.get("token")
        if not isinstance(raw_token, str) or not raw_token:
            raise ValidationFailed('"token" must be an access token.')
        try:
            user, token = await _authenticated(raw_token)
        except AppError as error:
            await self.session_end(code=error.code, message=error.detail)
            return
        if self._session_ended:  # the old token expired or was logged out while this one was being checked
            return
        if user.pk != self.user.pk:
            await self.session_end(code=ErrorCode.AUTH_INVALID, message="The token belongs to another account.")
            return
        self.user, self.token = user, token
        self._expiry_task.cancel()
        self._expiry_task = asyncio.create_task(self._close_at_expiry())
        # Joining again renews the membership, which the Redis layer otherwise drops after its group expiry (a day).
        await self.channel_layer.group_add(self._sockets_group, self.channel_name)
        await self.send_message("auth_renewed", self.token.wire())

    async def sockets_close(self, event: dict[str, Any]) -> None:
        """From `realtime.user_sockets_close`: the session ended elsewhere (logout, deactivation)."""
        if event.get("jti") is None or event["jti"] == self.token.jti:
            await self.session_end(code=event["code"], message=event["reason"])

    async def role_changed(self, event: dict[str, Any]) -> None:
        """From `realtime.user_role_changed`: the user's role changed while connected."""
        await self.on_role_changed(event["role"])

    async def on_role_changed(self, role: str) -> None:
        """An endpoint that needs a role ends the session here when the user no longer has it."""

    async def on_authenticated(self) -> None:
        """Join groups and set up state; the user is in self.user."""

    async def on_ready(self) -> None:
        """After `server_ready`: send what a (re)connecting client needs first, e.g. a snapshot."""

    @classmethod
    async def encode_json(cls, content) -> str:
        return json.dumps(content, cls=JSONEncoder)

    async def send_message(self, message_type: str, payload: dict[str, Any]) -> None:
        if self._closed:  # a group message racing the close; the web server refuses sends after it
            return
        await self.send_json({"t": message_type, "p": payload})

    async def send_error(self, message: str, *, code: ErrorCode | str, recoverable: bool = True) -> None:
        await self.send_message("error", {"message": message, "code": str(code), "recoverable": recoverable})

    def _over_rate_limit(self) -> bool:
        now = time.monotonic()
        if now - self._window_started >= 1.0:
            self._window_started, self._window_count = now, 0
        self._window_count += 1
        return self._window_count > settings.WS_MAX_MESSAGES_PER_SECOND

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not hasattr(self, "user") or self._session_ended:
            return
        if self._over_rate_limit():
            await self.send_error("Too many messages; slow down.", code=ErrorCode.RATE_LIMITED)
            return
        if text_data is None:
            await self.send_error("Binary frames are not supported; send JSON text.", code=ErrorCode.VALIDATION_ERROR)
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            await self.send_error("Malformed JSON.", code=ErrorCode.VALIDATION_ERROR)
            return
        if not isinstance(message, dict) or not isinstance(message.get("t"), str):
            await self.send_error('Messages are {"t": type, "p": payload}.', code=ErrorCode.VALIDATION_ERROR)
            return
        payload = message.get("p", {})
        if not isinstance(payload, dict):
            await self.send_error('"p" must be an object.', code=ErrorCode.VALIDATION_ERROR)
            return
        handler = getattr(self, f"handle_{message['t']}", None)
        if handler is None:
            await self.send_error(f"Unknown message type {message['t'][:40]!r}.", code=ErrorCode.VALIDATION_ERROR)
            return
        try:
            await handler(payload)
        except AppError as error:
            await self.send_error(error.detail, code=error.code)
        except DEPENDENCY_ERRORS as error:
            # The message was not applied; the socket stays (if the channel layer's Redis is down, its receive loop
            # closes it with 1013 anyway).
            outage_report(error)
            await self.send_message("error", self._outage_error())
        except Exception:
            # A bug must not kill the socket silently (and strand its group memberships).
            logger.exception("websocket message handler failed", extra={"message_type": message["t"][:40]})
            await self.send_error("Internal error; the message was not applied.", code=ErrorCode.INTERNAL_ERROR)

    async def handle_ping(self, payload: dict[str, Any]) -> None:
        await self.send_message("pong", {"server_time": time.time()})


class NotFoundConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        await self.send_json(
            {"t": "error", "p": {"message": "No such WebSocket endpoint.", "code": "NOT_FOUND", "recoverable": False}}
        )
        await self.close(code=CLOSE_NOT_FOUND)
