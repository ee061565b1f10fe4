"""The Celery application. Tasks live in each app's tasks.py and only parse ids and call a service."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init

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
