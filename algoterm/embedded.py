"""Embedded mode: the Celery worker and beat run as threads of the web process, on an in-memory broker.

The same tasks, the same DatabaseScheduler, the same services as the distributed deployment; only the
transport differs, so a newcomer can run everything with one command and no Redis.
"""

from __future__ import annotations

import logging
import threading

from celery.beat import EmbeddedService

from algoterm.celery import app as celery_app

logger = logging.getLogger(__name__)

_worker_thread: threading.Thread | None = None
_beat_service = None


def start_worker(*, concurrency: int = 2) -> threading.Thread:
    global _worker_thread
    worker = celery_app.WorkController(
        hostname="embedded@algoterm",
        pool_cls="threads",
        concurrency=concurrency,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    _worker_thread = threading.Thread(target=worker.start, name="embedded-celery-worker", daemon=True)
    _worker_thread.start()
    logger.info("embedded Celery worker started")
    return _worker_thread


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
