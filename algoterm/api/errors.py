"""The one error envelope and the one error-code registry.

Every response with status >= 400 has the shape
    {"detail": str, "error_code": ErrorCode, "errors": {field: [message]}?, "request_id": str, ...extra}
whether it comes from a DRF view, Django's 404/500 handlers or an uncaught exception. Services raise
`AppError` (or a subclass) with a registry code; the status follows from the code.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from algoterm.outages import DEPENDENCY_ERRORS, outage_report
from algoterm.request_context import current_request_id

logger = logging.getLogger("algoterm.errors")


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    AUTH_INVALID = "AUTH_INVALID"
    AUTH_EXPIRED = "AUTH_EXPIRED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    ACCOUNT_DEACTIVATED = "ACCOUNT_DEACTIVATED"
    PLAN_REQUIRED = "PLAN_REQUIRED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    INVALID_STATE = "INVALID_STATE"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    CONFLICT = "CONFLICT"
    ORDER_LOCKED = "ORDER_LOCKED"
    BROKER_SESSION_EXPIRED = "BROKER_SESSION_EXPIRED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RISK_REJECTED = "RISK_REJECTED"
    ORDER_REJECTED = "ORDER_REJECTED"
    RATE_LIMITED = "RATE_LIMITED"
    BACKTEST_LIMIT_REACHED = "BACKTEST_LIMIT_REACHED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    BROKER_ERROR = "BROKER_ERROR"
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


# status, default human message
ERROR_REGISTRY: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.VALIDATION_ERROR: (400, "The request is invalid."),
    ErrorCode.AUTH_REQUIRED: (401, "Authentication credentials were not provided."),
    ErrorCode.AUTH_INVALID: (401, "The credentials are invalid or have expired."),
    ErrorCode.AUTH_EXPIRED: (401, "The access token has expired; refresh it and authenticate again."),
    ErrorCode.PERMISSION_DENIED: (403, "You do not have permission to perform this action."),
    ErrorCode.ACCOUNT_DEACTIVATED: (403, "This account has been deactivated."),
    ErrorCode.PLAN_REQUIRED: (403, "Your subscription plan does not include this."),
    ErrorCode.NOT_FOUND: (404, "Not found."),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "Method not allowed."),
    ErrorCode.NOT_ACCEPTABLE: (406, "Cannot satisfy the request's Accept header."),
    ErrorCode.INVALID_STATE: (409, "The resource is not in a state that allows this."),
    ErrorCode.IDEMPOTENCY_KEY_REUSED: (409, "This Idempotency-Key was already used with a different request."),
    ErrorCode.CONFLICT: (409, "The request conflicts with the current state."),
    ErrorCode.ORDER_LOCKED: (409, "The risk engine placed this order to close positions; it cannot be changed."),
    ErrorCode.BROKER_SESSION_EXPIRED: (409, "The broker session has expired; log in to the broker again."),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "The request body is too large."),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported media type; send application/json."),
    ErrorCode.RISK_REJECTED: (422, "The risk engine rejected the order."),
    ErrorCode.ORDER_REJECTED: (422, "The broker rejected the order."),
    ErrorCode.RATE_LIMITED: (429, "Too many requests; retry later."),
    ErrorCode.BACKTEST_LIMIT_REACHED: (429, "Your plan's backtests are all in use; retry when one finishes."),
    ErrorCode.INTERNAL_ERROR: (500, "An internal error occurred. It has been logged."),
    ErrorCode.BROKER_ERROR: (502, "The broker answered with an error."),
    ErrorCode.BROKER_UNAVAILABLE: (503, "The broker is unavailable; retry later."),
    ErrorCode.SERVICE_UNAVAILABLE: (503, "A required service is unavailable; retry later."),
}


class AppError(Exception):
    """An expected failure with a registry code, raised by services and rendered as the envelope."""

    code: ErrorCode = ErrorCode.CONFLICT

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: ErrorCode | None = None,
        errors: dict[str, list[str]] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.status_code, default_detail = ERROR_REGISTRY[self.code]
        self.detail = detail or default_detail
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers or {}
        super().__init__(self.detail)


class ValidationFailed(AppError):
    code = ErrorCode.VALIDATION_ERROR


class AuthInvalid(AppError):
    code = ErrorCode.AUTH_INVALID


class AccountDeactivated(AppError):
    code = ErrorCode.ACCOUNT_DEACTIVATED


class PermissionDenied(AppError):
    code = ErrorCode.PERMISSION_DENIED


class NotFound(AppError):
    code = ErrorCode.NOT_FOUND


class InvalidState(AppError):
    code = ErrorCode.INVALID_STATE


class IdempotencyKeyReused(AppError):
    code = ErrorCode.IDEMPOTENCY_KEY_REUSED


class RiskRejected(AppError):
    """The risk engine refused an order; `reason` is the rule's code (MAX_LOTS_EXCEEDED...)."""

    code = ErrorCode.RISK_REJECTED

    def __init__(self, detail: str | None = None, *, reason: str) -> None:
        super().__init__(detail, extra={"reason": reason})
        self.reason = reason


class PayloadTooLarge(AppError):
    """The body is over the route's limit (`max_bytes`); refused before it is read."""

    code = ErrorCode.PAYLOAD_TOO_LARGE

    def __init__(self, detail: str | None = None, *, max_bytes: int) -> None:
        super().__init__(detail, extra={"max_bytes": max_bytes})


class RateLimited(AppError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(detail, extra={"retry_after": retry_after}, headers={"Retry-After": str(retry_after)})


# How long a client waits before retrying after a dependency outage: restarts of Redis or PostgreSQL take seconds.
SERVICE_UNAVAILABLE_RETRY_AFTER = 5


class ServiceUnavailable(AppError):
    """A dependency (the database, Redis, the task broker) is down or restarting: retry after `retry_after`."""

    code = ErrorCode.SERVICE_UNAVAILABLE

    def __init__(self, detail: str | None = None, *, retry_after: int = SERVICE_UNAVAILABLE_RETRY_AFTER) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(detail, extra={"retry_after": retry_after}, headers={"Retry-After": str(retry_after)})


def service_unavailable_for(error: BaseException) -> ServiceUnavailable | None:
    """The 503 to answer for a dependency outage (logged, rate-limited), None for any other exception."""
    if not isinstance(error, DEPENDENCY_ERRORS):
        return None
    outage_report(error)
    return ServiceUnavailable()


class AuthInvalidForDrf(drf_exceptions.AuthenticationFailed):
    """AuthInvalid for authentication classes, which DRF expects to raise its own exception types."""


class AccountDeactivatedForDrf(drf_exceptions.PermissionDenied):
    default_code = "account_deactivated"
    default_detail = ERROR_REGISTRY[ErrorCode.ACCOUNT_DEACTIVATED][1]


def envelope(
    *,
    code: ErrorCode,
    detail: str | None = None,
    errors: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": detail or ERROR_REGISTRY[code][1], "error_code": str(code)}
    if errors:
        body["errors"] = errors
    body["request_id"] = current_request_id()
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return body


def flatten_errors(data: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error structures as {"legs.0.strike": ["..."]}: one level the app can show beside a field."""
    flat: dict[str, list[str]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = "non_field_errors" if key in ("non_field_errors", "__all__") and not prefix else str(key)
            for sub_key, messages in flatten_errors(value, f"{prefix}.{name}" if prefix else name).items():
                flat.setdefault(sub_key, []).extend(messages)
    elif isinstance(data, list) and data and all(not isinstance(item, (dict, list)) for item in data):
        flat[prefix or "non_field_errors"] = [str(item) for item in data]
    elif isinstance(data, list):
        for index, item in enumerate(data):
            if item:
                for sub_key, messages in flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)).items():
                    flat.setdefault(sub_key, []).extend(messages)
    elif data not in (None, ""):
        flat[prefix or "non_field_errors"] = [str(data)]
    return flat


_DRF_CODES: list[tuple[type[Exception], ErrorCode]] = [
    (AccountDeactivatedForDrf, ErrorCode.ACCOUNT_DEACTIVATED),
    (drf_exceptions.NotAuthenticated, ErrorCode.AUTH_REQUIRED),
    (drf_exceptions.AuthenticationFailed, ErrorCode.AUTH_INVALID),
    (drf_exceptions.PermissionDenied, ErrorCode.PERMISSION_DENIED),
    (drf_exceptions.NotFound, ErrorCode.NOT_FOUND),
    (drf_exceptions.MethodNotAllowed, ErrorCode.METHOD_NOT_ALLOWED),
    (drf_exceptions.NotAcceptable, ErrorCode.NOT_ACCEPTABLE),
    (drf_exceptions.UnsupportedMediaType, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
    (drf_exceptions.Throttled, ErrorCode.RATE_LIMITED),
    (drf_exceptions.ParseError, ErrorCode.VALIDATION_ERROR),
    (drf_exceptions.ValidationError, ErrorCode.VALIDATION_ERROR),
]


def _drf_detail_text(detail: Any) -> str | None:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail and isinstance(detail[0], str):
        return detail[0]
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception a view raises becomes the envelope."""
    exc = service_unavailable_for(exc) or exc
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if isinstance(exc, AppError):
        return Response(
            envelope(code=exc.code, detail=exc.detail, errors=exc.errors, extra=exc.extra),
            status=exc.status_code,
            headers=exc.headers,
        )
    if isinstance(exc, (Http404, ObjectDoesNotExist)):
        return Response(envelope(code=ErrorCode.NOT_FOUND), status=404)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(envelope(code=ErrorCode.PERMISSION_DENIED), status=403)
    if isinstance(exc, DjangoValidationError):
        errors = flatten_errors(exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages})
        return Response(envelope(code=ErrorCode.VALIDATION_ERROR, errors=errors), status=400)
    if isinstance(exc, drf_exceptions.APIException):
        code = next((code for cls, code in _DRF_CODES if isinstance(exc, cls)), None)
        headers: dict[str, str] = {}
        if code is None:
            code = ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else ErrorCode.CONFLICT
        if code in (ErrorCode.AUTH_REQUIRED, ErrorCode.AUTH_INVALID):
            headers.update(_www_authenticate())
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
        if code == ErrorCode.VALIDATION_ERROR and isinstance(exc, drf_exceptions.ValidationError):
            return Response(envelope(code=code, errors=flatten_errors(exc.detail) or None), status=400, headers=headers)
        if code == ErrorCode.VALIDATION_ERROR:
            detail = f"Malformed request body: {_drf_detail_text(exc.detail) or 'could not be parsed'}"
        elif code in (ErrorCode.METHOD_NOT_ALLOWED, ErrorCode.UNSUPPORTED_MEDIA_TYPE, ErrorCode.RATE_LIMITED):
            detail = _drf_detail_text(exc.detail)
        else:
            detail = None
        return Response(envelope(code=code, detail=detail), status=ERROR_REGISTRY[code][0], headers=headers)
    request = context.get("request")
    logger.exception("unhandled exception in API view", extra={"path": getattr(request, "path", None)}, exc_info=exc)
    return Response(envelope(code=ErrorCode.INTERNAL_ERROR), status=500)


def _www_authenticate() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="api"'}


def json_error_response(code: ErrorCode, *, detail: str | None = None, status: int | None = None) -> JsonResponse:
    return JsonResponse(envelope(code=code, detail=detail), status=status or ERROR_REGISTRY[code][0])


def app_error_response(error: AppError) -> JsonResponse:
    response = JsonResponse(
        envelope(code=error.code, detail=error.detail, errors=error.errors, extra=error.extra), status=error.status_code
    )
    for name, value in error.headers.items():
        response[name] = value
    return response


def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error_response(ErrorCode.VALIDATION_ERROR, detail="Bad request.")


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error_response(ErrorCode.PERMISSION_DENIED)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error_response(ErrorCode.NOT_FOUND)


def handler500(request: HttpRequest) -> JsonResponse:
    return json_error_response(ErrorCode.INTERNAL_ERROR)
