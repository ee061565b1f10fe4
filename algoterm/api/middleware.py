"""Request id, client IP, access log, API headers and the last-resort error envelope."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse

from algoterm import request_context
from algoterm.api.errors import ErrorCode, app_error_response, json_error_response, service_unavailable_for

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
        if isinstance(exception, SuspiciousOperation):
            return json_error_response(ErrorCode.VALIDATION_ERROR, detail="Bad request.")
        outage = service_unavailable_for(exception)
        if outage is not None:
            return app_error_response(outage)
        error_logger.exception("unhandled exception", extra={"path": request.path}, exc_info=exception)
        return json_error_response(ErrorCode.INTERNAL_ERROR)
