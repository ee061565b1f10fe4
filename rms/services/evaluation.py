"""Re-evaluating users after their fills, coalesced: during a burst (09:20, 15:15) every fill asks for its user's MTM
to be checked again, and one evaluation task per fill would spend more of the workers than the orders themselves.
Requests within `RMS_EVALUATION_COALESCE_SECONDS` join one set in Redis and one task sweeps them all, set-based.

Nothing is lost: a request added after a task took the set queues the next task (the task clears its "queued" flag
before it takes the set), and a task that never ran (a dead worker) leaves its users for the next one once the flag
expires. The beat sweep evaluates everyone on its clock anyway.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache

from algoterm.redis_client import redis_client
from algoterm.tasking import task_send

EVALUATE_USERS = "rms.tasks.evaluate_users"
EVALUATE_PENDING = "rms.tasks.evaluate_pending"
# A queued task that never ran stops holding back new ones after this.
QUEUED_FLAG_SECONDS = 10


def _keys() -> tuple[str, str]:
    # In the cache's own namespace (a set is beyond the cache's API, so the keys are used with a client of our own).
    return cache.make_key("rms:evaluate:pending"), cache.make_key("rms:evaluate:queued")


def evaluation_request(*, user_id: str) -> None:
    """Ask for the user to be evaluated again soon (after a fill). One round trip to Redis; a task is queued only by
    the first request of a window."""
    if settings.EMBEDDED:
        task_send(name=EVALUATE_USERS, args=([user_id],))
        return
    pending, queued = _keys()
    pipe = redis_client(settings.REDIS_URL).pipeline(transaction=False)
    pipe.sadd(pending, user_id)
    pipe.set(queued, 1, nx=True, ex=QUEUED_FLAG_SECONDS)
    _, first = pipe.execute()
    if first:
        task_send(name=EVALUATE_PENDING, countdown=settings.RMS_EVALUATION_COALESCE_SECONDS)


def evaluation_pending_take() -> list[str]:
    """The users waiting to be evaluated, taken (a request from now on queues another task)."""
    if settings.EMBEDDED:
        return []  # each request sent its own task
    pending, queued = _keys()
    client = redis_client(settings.REDIS_URL)
    client.delete(queued)
    pipe = client.pipeline(transaction=True)
    pipe.smembers(pending)
    pipe.delete(pending)
    members, _ = pipe.execute()
    return sorted(member.decode() for member in members)
