"""The Celery application. Tasks live in each app's tasks.py and only parse ids and call a service."""

import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_process_init

from algoterm import request_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "algoterm.settings")

app = Celery("algoterm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# What a forked worker child inherited from its parent's database state: kept referenced and never used. Closing it
# would end the parent's connections on the server (libpq says goodbye on the shared socket); a prefork child leaves
# by os._exit, so nothing here is ever finalized.
_inherited_database_state: list = []


@worker_process_init.connect
def _forget_inherited_database_state(**_) -> None:
    """A prefork child starts with no pool and no connection of its parent's: both would be shared across the fork.
    Connected at import, so it runs before Celery's Django fix-up, which would close them."""
    from django.db import connections

    for alias in connections:
        wrapper = connections[alias]
        pools = getattr(type(wrapper), "_connection_pools", None)
        if pools is not None and alias in pools:
            _inherited_database_state.append(pools.pop(alias))
        if wrapper.connection is not None:
            _inherited_database_state.append(wrapper.connection)
            wrapper.connection = None


@task_prerun.connect
@task_postrun.connect
def _database_connections_return(sender=None, **_) -> None:
    """Around every task, as around every web request: a pooled connection goes back to the pool (checked before
    it is handed out again), so a PostgreSQL restart costs the next task nothing. Celery's fix-up, told to reuse
    connections (CELERY_DB_REUSE_MAX), no longer closes the whole pool each time."""
    from django.db import close_old_connections, connections

    request = getattr(sender, "request", None)
    if getattr(request, "is_eager", False):
        return  # an eager task runs inside its caller's transaction
    if any(connections[alias].settings_dict.get("OPTIONS", {}).get("pool") for alias in connections):
        close_old_connections()


# --- tracing: the request id and user id of whatever queued a task follow it to the worker ----------------------


@before_task_publish.connect
def _context_to_task_headers(headers=None, **_) -> None:
    """Every task queued inside a request (or inside a task that was) carries its ids in the message headers; one
    queued by beat, a feed or a command carries none. Headers already set (a retry re-sends its own) are kept."""
    if headers is None:
        return
    for name, value in request_context.task_headers().items():
        headers.setdefault(name, value)


def _is_eager(task) -> bool:
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


@task_prerun.connect
def _context_bind_for_task(sender=None, task_id=None, **_) -> None:
    """Before every task on a worker: that task's ids and nothing left from the last task this thread ran. An eager
    task runs inside its caller, whose context it already has and must leave as it was."""
    if sender is None or _is_eager(sender):
        return
    request_context.bind_from_task_headers(headers=vars(sender.request), task_id=task_id)


@task_postrun.connect
def _context_clear_after_task(sender=None, **_) -> None:
    if sender is None or _is_eager(sender):
        return
    request_context.clear()
