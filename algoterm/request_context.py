"""Who and what the current unit of work is for: read by logging, the error envelope and the audit log.

Context variables follow a request through sync and async code (asgiref copies them across threads).
"""

from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_user_id: ContextVar[str | None] = ContextVar("user_id", default=None)
_client_ip: ContextVar[str | None] = ContextVar("client_ip", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def current_user_id() -> str | None:
    return _user_id.get()


def current_client_ip() -> str | None:
    return _client_ip.get()


def bind(*, request_id: str | None = None, user_id: str | None = None, client_ip: str | None = None) -> None:
    if request_id is not None:
        _request_id.set(request_id)
    if user_id is not None:
        _user_id.set(user_id)
    if client_ip is not None:
        _client_ip.set(client_ip)


def clear() -> None:
    _request_id.set(None)
    _user_id.set(None)
    _client_ip.set(None)
