"""Queue a Celery task by its registered name, after the current transaction commits.

Services sit below their app's `tasks.py` (a task only parses ids and calls a service), so a service that needs
follow-up work names the task instead of importing the module that imports it back. The name resolves through the
Celery app's registry, so routing, eager mode in tests and the embedded runner behave exactly as `task.delay()`.
Either way the task carries the request id and user id of the request (or task) that queued it (`algoterm.celery`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)


def task_send(*, name: str, args: tuple = (), kwargs: dict[str, Any] | None = None, countdown: float | None = None):
    """Queue the task now (outside a transaction, or when the caller has already committed)."""
    return _task(name).apply_async(args=args, kwargs=kwargs or {}, countdown=countdown)


def _task(name: str):
    try:
        return current_app.tasks[name]
    except KeyError:
        # A web process imports no tasks module by itself: load every app's tasks.py (what a worker does at start).
        current_app.loader.import_default_modules()
        return current_app.tasks[name]


def task_send_on_commit(
    *, name: str, args: tuple = (), kwargs: dict[str, Any] | None = None, countdown: float | None = None
) -> None:
    """Queue the task once the current transaction commits; nothing is queued if it rolls back."""
    transaction.on_commit(lambda: task_send(name=name, args=args, kwargs=kwargs, countdown=countdown))
