"""Who and what the current unit of work is for: read by logging, the error envelope and the audit log.

Context variables follow a request through sync and async code (asgiref copies them across threads). A Celery task
is a unit of work too: the request id and user id of whatever queued it travel in the task message's headers and are
bound around the task on the worker (`algoterm.celery`), with the task's own id beside them.
"""

from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_user_id: ContextVar[str | None] = ContextVar("user_id", default=None)
_client_ip: ContextVar[str | None] = ContextVar("client_ip", default=None)
_task_id: ContextVar[str | None] = ContextVar("task_id", default=None)

# The task message headers that carry the context from the process that queues a task to the worker that runs it.
REQUEST_ID_HEADER = "algoterm_request_id"
USER_ID_HEADER = "algoterm_user_id"


def current_request_id() -> str | None:
    return _request_id.get()


def current_user_id() -> str | None:
    return _user_id.get()


def current_client_ip() -> str | None:
    return _client_ip.get()


def current_task_id() -> str | None:
    return _task_id.get()


def bind(
    *,
    request_id: str | None = None,
    user_id: str | None = None,
    client_ip: str | None = None,
    task_id: str | None = None,
) -> None:
    if request_id is not None:
        _request_id.set(request_id)
    if user_id is not None:
        _user_id.set(user_id)
    if client_ip is not None:
        _client_ip.set(client_ip)
    if task_id is not None:
        _task_id.set(task_id)


def clear() -> None:
    _request_id.set(None)
    _user_id.set(None)
    _client_ip.set(None)
    _task_id.set(None)


def task_headers() -> dict[str, str]:
    """What a task queued now carries from the current context: nothing outside a request (or a traced task)."""
    headers = {}
    if (request_id := _request_id.get()) is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if (user_id := _user_id.get()) is not None:
        headers[USER_ID_HEADER] = str(user_id)
    return headers


def bind_from_task_headers(*, headers: dict, task_id: str | None) -> None:
    """The worker side: the context of the unit of work that queued the task, and nothing left from the last task."""
    clear()
    request_id, user_id = headers.get(REQUEST_ID_HEADER), headers.get(USER_ID_HEADER)
    bind(
        request_id=request_id if isinstance(request_id, str) else None,
        user_id=user_id if isinstance(user_id, str) else None,
        task_id=task_id,
    )
