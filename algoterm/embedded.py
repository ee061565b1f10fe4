"""Embedded mode: the Celery workers and beat run as threads of the web process, on an in-memory broker.

The same tasks, the same DatabaseScheduler, the same services as the distributed deployment; only the
transport differs, so a newcomer can run everything with one command and no Redis.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.beat import EmbeddedService
from django.conf import settings

from algoterm.celery import app as celery_app
from algoterm.health import in_process_worker_probe_register

logger = logging.getLogger(__name__)

_worker_thread: threading.Thread | None = None
_backtest_thread: threading.Thread | None = None
_beat_service = None


def start_worker(*, concurrency: int = 2) -> threading.Thread:
    """Orders, exits, the risk engine and housekeeping: every queue but the backtests'."""
    global _worker_thread
    worker = celery_app.WorkController(
        hostname="embedded@algoterm",
        pool_cls="threads",
        concurrency=concurrency,
        queues=list(settings.WORKER_QUEUES),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    _worker_thread = threading.Thread(target=worker.start, name="embedded-celery-worker", daemon=True)
    _worker_thread.start()
    in_process_worker_probe_register(worker_alive)
    logger.info("embedded Celery worker started")
    return _worker_thread


def start_backtest_worker() -> threading.Thread:
    """Backtests on threads of their own, so one never holds a slot order work needs. A second app instance: a
    worker's queue selection is state of its app, and the in-memory transport is shared by the whole process."""
    global _backtest_thread
    backtest_app = Celery("algoterm", set_as_current=False)
    backtest_app.config_from_object("django.conf:settings", namespace="CELERY")
    backtest_app.autodiscover_tasks()
    worker = backtest_app.WorkController(
        hostname="embedded-backtests@algoterm",
        pool_cls="threads",
        concurrency=settings.BACKTEST_WORKER_CONCURRENCY,
        queues=[settings.TASK_QUEUE_BACKTESTS],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    _backtest_thread = threading.Thread(target=worker.start, name="embedded-backtest-worker", daemon=True)
    _backtest_thread.start()
    logger.info("embedded backtest worker started")
    return _backtest_thread


def start_beat() -> None:
    global _beat_service
    _beat_service = EmbeddedService(celery_app, thread=True, scheduler_cls=celery_app.conf.beat_scheduler)
    _beat_service.start()
    logger.info("embedded beat started")


def worker_alive() -> bool:
    return _worker_thread is not None and _worker_thread.is_alive()


def stop() -> None:
    if _beat_service is not None:
        _beat_service.stop()
