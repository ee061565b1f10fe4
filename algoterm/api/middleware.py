"""Request id, client IP, access log, body-size limits, API headers and the last-resort error envelope."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse

from algoterm import request_context
from algoterm.api.errors import (
    ErrorCode,
    PayloadTooLarge,
    app_error_response,
    envelope,
    json_error_response,
    service_unavailable_for,
)

access_logger = logging.getLogger("algoterm.access")
error_logger = logging.getLogger("algoterm.errors")

REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(candidate: str | None) -> str:
    """The client's X-Request-ID when it is a sane token (it ends up in logs), else a fresh one."""
    if candidate and _ACCEPTABLE_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def client_ip(*, remote_addr: str | None, forwarded_for: str | None) -> str | None:
    """The client's address: with NUM_PROXIES trusted proxies in front, the entry they appended; else the peer."""
    if settings.NUM_PROXIES and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if hops:
            return hops[-min(settings.NUM_PROXIES, len(hops))]
    return remote_addr


def request_client_ip(request: HttpRequest) -> str | None:
    return client_ip(
        remote_addr=request.META.get("REMOTE_ADDR"), forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR")
    )


class RequestIdMiddleware:
    """Binds request id and client IP for logs and errors, echoes X-Request-ID, writes one access-log line."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        request_context.clear()
        request.request_id = accepted_request_id(request.headers.get(REQUEST_ID_HEADER))
        request.client_ip = request_client_ip(request)
        request_context.bind(request_id=request.request_id, client_ip=request.client_ip)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request.request_id
        access_logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client_ip": request.client_ip,
            },
        )
        return response


# Unauthenticated machine-to-machine routes: their senders' bodies are small, and anyone can send them.
_SMALL_BODY_ROUTES = re.compile(r"^/api/(strategies/[^/]+/webhook|brokers/postback/[^/]+|billing/webhook)/?$")


def request_body_limit(path: str) -> int:
    """The most bytes a request body to `path` may have."""
    if _SMALL_BODY_ROUTES.match(path):
        return min(settings.WEBHOOK_BODY_MAX_BYTES, settings.REQUEST_BODY_MAX_BYTES)
    return settings.REQUEST_BODY_MAX_BYTES


def _declared_length(value: str | bytes | None) -> int | None:
    try:
        return int(value) if value not in (None, "", b"") else None
    except ValueError:
        return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.", max_bytes=limit)


class RequestBodyLimitMiddleware:
    """413 PAYLOAD_TOO_LARGE for a declared Content-Length over the route's limit, before anything reads the body.
    Bodies without a length are capped while they arrive by RequestBodyLimitASGIMiddleware (the served mode);
    WSGI reads no body without one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = request_body_limit(request.path)
        declared = _declared_length(request.META.get("CONTENT_LENGTH"))
        if declared is not None and declared > limit:
            response = app_error_response(_too_large(limit))
            response["Connection"] = "close"
            return response
        return self.get_response(request)


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class RequestBodyLimitASGIMiddleware:
    """Wraps the HTTP application, because Django's ASGI handler reads the whole body (to a temporary file)
    before any Django middleware runs. A declared Content-Length over the route's limit is answered 413 without
    reading a byte; a body without one (chunked) is read only until it passes the limit, then answered 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = request_body_limit(scope.get("path", ""))
        headers = dict(scope.get("headers") or [])
        declared = _declared_length(headers.get(b"content-length"))
        if declared is not None:
            if declared > limit:
                await self._refuse(scope, send, limit)
            else:  # the server holds the body to its declared length
                await self.app(scope, receive, send)
            return
        received: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the application see it
                await self.app(scope, _replaying([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, send, limit)
                return
            received.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(received), "more_body": False}
        # Django reads as many bytes as Content-Length says (none without it): now the length is known, say it.
        framed = [(name, value) for name, value in scope.get("headers") or [] if name != b"transfer-encoding"]
        framed.append((b"content-length", str(len(whole["body"])).encode()))
        await self.app({**scope, "headers": framed}, _replaying([whole], receive), send)

    async def _refuse(self, scope: dict[str, Any], send, limit: int) -> None:
        headers = dict(scope.get("headers") or [])
        request_id = accepted_request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        error = _too_large(limit)
        body = envelope(code=error.code, detail=error.detail, extra=error.extra)
        body["request_id"] = request_id
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                    (b"cache-control", b"no-store"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        client = scope.get("client") or (None, None)
        access_logger.info(
            "%s %s %s",
            scope.get("method"),
            scope.get("path"),
            error.status_code,
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": error.status_code,
                "client_ip": client_ip(remote_addr=client[0], forwarded_for=_forwarded_for(headers)),
            },
        )


def _forwarded_for(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"x-forwarded-for")
    return value.decode("latin-1") if value else None


def _replaying(messages: list[dict], receive):
    """A receive() that answers the already-read messages first, then the server's."""
    pending = list(messages)

    async def replay() -> dict:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class ApiHeadersMiddleware:
    """API answers are personal and must not be cached by browsers or proxies."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith("/api/") and not response.has_header("Cache-Control"):
            response["Cache-Control"] = "no-store"
        return response


class UnhandledExceptionMiddleware:
    """Outside DRF views (admin, docs, plain Django views) an exception still ends as the envelope."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse:
        if isinstance(exception, Http404):
            return json_error_response(ErrorCode.NOT_FOUND)
        if isinstance(exception, PermissionDenied):
            return json_error_response(ErrorCode.PERMISSION_DENIED)
        if isinstance(exception, RequestDataTooBig):
            return app_error_response(_too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
        if isinstance(exception, SuspiciousOperation):
            return json_error_response(ErrorCode.VALIDATION_ERROR, detail="Bad request.")
        outage = service_unavailable_for(exception)
        if outage is not None:
            return app_error_response(outage)
        error_logger.exception("unhandled exception", extra={"path": request.path}, exc_info=exception)
        return json_error_response(ErrorCode.INTERNAL_ERROR)
