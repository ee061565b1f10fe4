"""One request id follows a piece of work from the API into the Celery tasks it queues, and from a task into the
tasks it queues in turn; a task queued outside any request carries none, even on a worker thread whose previous task
had one. The worker is a real one on the configured broker (Redis, or embedded mode's in-memory transport), run as
embedded mode runs it: in this process, so its log records reach caplog."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from celery.worker import state as worker_state
from django.conf import settings

from algoterm import request_context
from algoterm.celery import app as celery_app
from algoterm.logging import RequestContextFilter
from brokers.prices import quote_at, quote_publish
from orders.models import Order, OrderStatus
from orders.tests.factories import EQUITY, paper_account, standard_instruments

pytestmark = pytest.mark.django_db(transaction=True)

TRACE_LOGGER = "celery.app.trace"  # logs every task's outcome while the task's context is still bound


@contextlib.contextmanager
def in_process_worker(caplog) -> Iterator[threading.Thread]:
    """A real worker on this run's queues, one thread running every task (the solo pool), started after the queues
    were emptied of what earlier tests left there."""
    celery_app.control.purge()
    worker = celery_app.WorkController(
        hostname=f"tracing-{os.getpid()}@test",
        pool_cls="solo",
        concurrency=1,
        queues=list(settings.WORKER_QUEUES),
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    # Setting up a worker sets Django up again (Celery's Django fix-up), which configures logging anew and takes
    # caplog's handler off the root logger: it goes back on.
    logging.getLogger().addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=TRACE_LOGGER)
    thread = threading.Thread(target=worker.start, name="tracing-worker", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker_state.should_terminate = 0  # how Celery's own test worker is told to stop from another thread
        thread.join(15)
        worker_state.should_terminate = None
        assert not thread.is_alive(), "the in-process worker did not stop"


def wait_for(condition: Callable[[], object], *, what: str, timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def outcomes(caplog, task_name: str) -> list[logging.LogRecord]:
    """The worker's `Task <name>[<id>] succeeded` records of one task."""
    return [
        record
        for record in list(caplog.records)
        if record.name == TRACE_LOGGER and getattr(record, "data", {}).get("name") == task_name
    ]


@pytest.fixture
def paper(trader):
    """The trader's paper account, with EQUITY quoted at 1500 (a market buy fills at once)."""
    standard_instruments()
    account = paper_account(trader)
    quote_publish(quote_at(EQUITY, "1500"))
    return account


@pytest.fixture
def traced_logs(caplog):
    """caplog, with records stamped by the same filter the log handler uses."""
    caplog.set_level(logging.INFO, logger=TRACE_LOGGER)
    stamp = RequestContextFilter()
    caplog.handler.addFilter(stamp)
    yield caplog
    caplog.handler.removeFilter(stamp)


def in_fresh_context(send: Callable[[], object]) -> None:
    """Queue from a thread of its own, which starts with an empty context as beat, a feed or a command does."""
    sender = threading.Thread(target=send)
    sender.start()
    sender.join(10)


def place(client, account, request_id: str, **fields):
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    return client.post("/api/orders", body, format="json", HTTP_X_REQUEST_ID=request_id)


def evaluation_task() -> str:
    # After a fill the user's risk is evaluated again: one coalesced task on Redis, one per fill embedded.
    return "rms.tasks.evaluate_users" if settings.EMBEDDED else "rms.tasks.evaluate_pending"


def test_the_request_id_and_user_id_follow_an_order_into_its_tasks_and_no_further(
    trader, trader_client, paper, traced_logs
):
    with in_process_worker(traced_logs):
        response = place(trader_client, paper, "trace-order-1")
        assert response.status_code == 201, response.json()
        assert response["X-Request-ID"] == "trace-order-1"
        assert response.json()["status"] == "FILLED"  # the fill queued the risk re-evaluation
        traced = wait_for(lambda: outcomes(traced_logs, evaluation_task()), what="the fill's task never ran")[0]

        # Outside any request, on the worker thread that has just run a traced task.
        in_fresh_context(lambda: celery_app.tasks["rms.tasks.evaluate_users"].delay([trader.pk]))
        untraced = wait_for(
            lambda: [r for r in outcomes(traced_logs, "rms.tasks.evaluate_users") if r is not traced],
            what="the task queued outside a request never ran",
        )[-1]

    assert (traced.request_id, traced.user_id) == ("trace-order-1", trader.pk)
    assert traced.task_id == traced.data["id"]
    assert (untraced.request_id, untraced.user_id) == ("-", None)
    assert untraced.task_id == untraced.data["id"] != traced.task_id
    assert untraced.thread == traced.thread  # the same worker thread: nothing of the first task stayed behind


def test_a_task_queued_by_a_task_carries_the_same_request_id(trader, trader_client, paper, traced_logs):
    resting = place(trader_client, paper, "trace-rest", order_type="LIMIT", price=1400)
    assert resting.json()["status"] == OrderStatus.OPEN  # a live order: its account is reconciled

    def queue_as_a_request_does() -> None:
        request_context.bind(request_id="trace-chain-7", user_id=trader.pk)
        celery_app.tasks["orders.tasks.reconcile_open"].delay()

    with in_process_worker(traced_logs):
        in_fresh_context(queue_as_a_request_does)
        child = wait_for(
            lambda: outcomes(traced_logs, "orders.tasks.reconcile_account"),
            what="reconcile_open never queued the account's reconciliation",
        )[0]
    parent = outcomes(traced_logs, "orders.tasks.reconcile_open")[0]

    assert (parent.request_id, parent.user_id) == ("trace-chain-7", trader.pk)
    assert (child.request_id, child.user_id) == ("trace-chain-7", trader.pk)
    assert child.task_id != parent.task_id
    assert Order.objects.get(pk=resting.json()["id"]).status == OrderStatus.OPEN


def test_eager_tasks_run_in_their_callers_context_and_leave_it_as_it_was(trader, eager_tasks_on, traced_logs):
    request_context.clear()
    request_context.bind(request_id="trace-eager", user_id=trader.pk)
    try:
        celery_app.tasks["rms.tasks.evaluate_users"].delay([trader.pk])
        assert (request_context.current_request_id(), request_context.current_user_id()) == ("trace-eager", trader.pk)
    finally:
        request_context.clear()
    [record] = outcomes(traced_logs, "rms.tasks.evaluate_users")
    assert (record.request_id, record.user_id) == ("trace-eager", trader.pk)


@pytest.fixture
def eager_tasks_on():
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


# --- across processes: the ids ride the broker to a worker process and appear in its JSON log lines -------------


def _test_database_url() -> str:
    from django.db import connection

    params = connection.settings_dict
    return f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


@pytest.mark.skipif(settings.EMBEDDED, reason="a worker process needs the shared broker and database")
def test_a_worker_process_logs_the_request_id_it_received_through_the_broker(
    wall_clock, trader, trader_client, paper, tmp_path
):
    celery_app.control.purge()
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "celery", "-A", "algoterm", "worker", "--pool", "solo", "-l", "INFO"]
    command += ["--hostname", f"tracing-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        response = place(trader_client, paper, "trace-across-9")
        assert response.status_code == 201, response.json()

        def succeeded() -> list[dict]:
            lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
            records = [json.loads(line) for line in lines]
            return [
                r
                for r in records
                if r.get("logger") == TRACE_LOGGER and r.get("data", {}).get("name") == "rms.tasks.evaluate_pending"
            ]

        record = wait_for(succeeded, what="the worker process never ran the fill's task", timeout=40)[0]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()

    assert (record["request_id"], record["user_id"]) == ("trace-across-9", trader.pk)
    assert record["task_id"] == record["data"]["id"]
