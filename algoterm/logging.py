"""Structured JSON logs carrying request id and user id, with secrets scrubbed before any handler sees them."""

from __future__ import annotations

import logging
import re
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from algoterm import request_context

REDACTED = "[redacted]"
SENSITIVE_KEY = re.compile(
    r"pass(word)?|secret|token|api_?key|authorization|cookie|signature|checksum|credential|private|otp|pin$",
    re.IGNORECASE,
)
_SENSITIVE_TEXT = [
    # JWTs (three base64url parts), bearer and token auth headers, token/secret/password query or form values.
    re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(bearer|token)\s+[A-Za-z0-9._:\-]+"),
    re.compile(r"(?i)((?:access_|refresh_|request_)?token|secret|password|api_key)=([^&\s\"']+)"),
]
_STANDARD_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact_text(text: str) -> str:
    for pattern in _SENSITIVE_TEXT:
        if pattern.groups == 2:
            text = pattern.sub(lambda match: f"{match.group(1)}={REDACTED}", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda match: f"{match.group(1)} {REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def redact_value(key: str, value: Any) -> Any:
    if SENSITIVE_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(key, item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    # Objects (a request, an exception) are logged by their text, which may carry a query string.
    return redact_text(str(value))


class RequestContextFilter(logging.Filter):
    """Stamps the request id and user id of the unit of work (a request, or a task queued by one) on every record,
    and on a worker the Celery task's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_context.current_request_id() or "-"
        record.user_id = getattr(record, "user_id", None) or request_context.current_user_id()
        task_id = getattr(record, "task_id", None) or request_context.current_task_id()
        if task_id is not None:  # only inside a task: web lines do not grow a null field
            record.task_id = task_id
        return True


class RedactSecretsFilter(logging.Filter):
    """Masks secrets in the message, its arguments and every `extra` field, whatever logged them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string must not lose the record
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = None
        for key in set(record.__dict__) - _STANDARD_RECORD_FIELDS:
            record.__dict__[key] = redact_value(key, record.__dict__[key])
        return True


class JsonFormatter(_BaseJsonFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timestamp", "time")
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["level"] = log_record.pop("levelname", record.levelname)
        log_record["logger"] = log_record.pop("name", record.name)
        if "exc_info" in log_record:
            log_record["exc_info"] = redact_text(str(log_record["exc_info"]))
