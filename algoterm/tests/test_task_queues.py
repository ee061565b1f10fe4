"""Queues by urgency: order, exit and risk work goes to `urgent`, housekeeping to `default`, backtests to a queue
with workers of their own, so a long backtest never delays an exit. `serve` starts those workers in both modes."""

import importlib
import os
import time
from datetime import timedelta

import pytest
import redis
from celery import Celery
from django.apps import apps
from django.conf import settings
from django.utils import timezone

from algoterm.celery import app as celery_app
from algoterm.tests.test_serve import base_env, http, running_stack, scratch_database

URGENT = {
    "orders.tasks.reconcile_account",
    "orders.tasks.reconcile_open",
    "orders.tasks.refresh_pushed_order",
    "orders.tasks.place_exits",
    "orders.tasks.follow_up_fill",
    "orders.tasks.settle_oco",
    "orders.tasks.trail_stops",
    "rms.tasks.sweep",
    "rms.tasks.evaluate_symbols",
    "rms.tasks.evaluate_users",
    "rms.tasks.evaluate_pending",
    "rms.tasks.funds_snapshot_refresh",
    "strategies.tasks.dispatch_fires",
    "strategies.tasks.fire_chunk",
    "strategies.tasks.recover_fires",
    "strategies.tasks.evaluate_rules",
    "algoterm.tasks.heartbeat",
}
BACKTESTS = {"strategies.tasks.backtest_run"}


def registered_task_names() -> set[str]:
    for app_config in apps.get_app_configs():
        try:
            importlib.import_module(f"{app_config.name}.tasks")
        except ModuleNotFoundError as error:
            if error.name != f"{app_config.name}.tasks":
                raise
    return {name for name in celery_app.tasks if not name.startswith("celery.")}


def test_every_task_is_routed_by_name_to_the_queue_of_its_urgency():
    router = celery_app.amqp.Router()
    names = registered_task_names()

    # A new task must be given a queue on purpose: falling back to the default queue is not a decision.
    unrouted = sorted(names - set(settings.CELERY_TASK_ROUTES))
    assert not unrouted, f"tasks without an entry in CELERY_TASK_ROUTES: {unrouted}"
    assert URGENT | BACKTESTS <= names
    for name in names:
        queue = router.route({}, name)["queue"].name
        expected = "urgent" if name in URGENT else "backtests" if name in BACKTESTS else "default"
        assert queue == expected, name
    # Beat's entries are sent by name: they take the same routes.
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in settings.CELERY_TASK_ROUTES


def test_serve_runs_a_backtest_worker_beside_the_order_worker(db, settings):
    from algoterm.management.commands.serve import Command

    settings.BROKER_SIMULATORS = False
    children = {child.name: child for child in Command()._distributed_children("127.0.0.1", 9000)}

    worker, backtests = children["worker"].command, children["backtest-worker"].command
    assert worker[worker.index("-Q") + 1] == "urgent,default"
    assert backtests[backtests.index("-Q") + 1] == "backtests"
    assert backtests[backtests.index("--concurrency") + 1] == "1"
    # Two workers on one host need names of their own; the order worker's must not depend on the backtest one.
    assert worker[worker.index("-n") + 1] != backtests[backtests.index("-n") + 1]
    assert children["worker"].required and not children["backtest-worker"].required


def test_the_backtest_task_carries_its_soft_and_hard_time_limits():
    task = celery_app.tasks["strategies.tasks.backtest_run"]

    assert task.soft_time_limit == settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS
    assert task.time_limit == settings.BACKTEST_HARD_TIME_LIMIT_SECONDS > task.soft_time_limit


def wait_for(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return value


@pytest.mark.e2e
def test_order_queue_work_runs_while_the_backtest_worker_is_busy_and_a_backtest_past_its_limit_fails():
    """The distributed stack as `serve` runs it. Each backtest day is made slow (2 s), so the backtest worker is
    busy; a task sent to the urgent queue meanwhile is processed at once, and the backtest past its soft limit is
    failed with the reason, freeing the worker for the next one."""
    prefix = f"{settings.REDIS_KEY_PREFIX}-queues-e2e"
    with scratch_database(f"algoterm_queues_e2e_{os.getpid()}") as database_url:
        env = {
            **base_env(),
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.REDIS_URL,
            "REDIS_KEY_PREFIX": prefix,
            "BROKER_SIMULATORS": "0",
            "ALGOTERM_FAILPOINTS": "strategies.backtest.day=sleep:2",
            "BACKTEST_SOFT_TIME_LIMIT_SECONDS": "6",
            "BACKTEST_HARD_TIME_LIMIT_SECONDS": "12",
        }
        with running_stack(env) as (base, _server):
            _, login = http(
                "POST", f"{base}/api/auth/login", {"email": "trader@example.com", "password": "Trader@Demo2026"}
            )
            token = login["access"]
            _, strategies = http("GET", f"{base}/api/strategies", token=token)
            strategy_id = strategies["items"][0]["id"]
            today = timezone.localdate()
            window = {"mode": "backtest", "start": str(today - timedelta(days=40)), "end": str(today - timedelta(1))}
            started = [http("POST", f"{base}/api/strategies/{strategy_id}/start", window, token) for _ in range(3)]

            # The trial plan's cap is two backtests queued or running at once.
            assert [status for status, _ in started] == [202, 202, 429], started
            assert started[2][1]["error_code"] == "BACKTEST_LIMIT_REACHED"
            first, second = (body["backtest"]["id"] for _, body in started[:2])

            def backtest(backtest_id: str) -> dict:
                return http("GET", f"{base}/api/strategies/{strategy_id}/backtests/{backtest_id}", token=token)[1]

            wait_for(lambda: backtest(first)["status"] == "running", timeout=15, what="the first backtest to run")
            assert backtest(second)["status"] == "queued"  # one backtest slot: the second waits its turn

            # A task on the urgent queue, sent as any service sends one (routed by its name), while the backtest
            # worker is busy: the beat heartbeat's task, whose run health reports.
            producer = Celery("probe", broker=settings.REDIS_URL, set_as_current=False)
            producer.conf.update(
                broker_transport_options={"global_keyprefix": f"{prefix}:celery:"},
                task_queues=settings.CELERY_TASK_QUEUES,
                task_default_queue=settings.CELERY_TASK_DEFAULT_QUEUE,
                task_routes=settings.CELERY_TASK_ROUTES,
            )
            sent_at = time.time()
            producer.send_task("algoterm.tasks.heartbeat")
            producer.close()

            def heartbeat_after_sending() -> bool:
                scheduler = http("GET", f"{base}/api/health")[1]["components"]["scheduler"]
                age = (scheduler.get("info") or {}).get("last_heartbeat_age_s")
                return age is not None and age <= time.time() - sent_at + 0.2

            wait_for(heartbeat_after_sending, timeout=5, what="the urgent task to be processed")
            assert backtest(first)["status"] == "running", "the urgent task must not have waited for the backtest"
            broker = redis.Redis.from_url(settings.REDIS_URL)
            try:
                assert broker.llen(f"{prefix}:celery:urgent") == 0
            finally:
                broker.close()

            failed = wait_for(
                lambda: (body := backtest(first))["status"] == "failed" and body,
                timeout=15,
                what="the soft time limit to fail the first backtest",
            )
            assert "time limit of 6 seconds" in failed["error"], failed
            wait_for(lambda: backtest(second)["status"] == "running", timeout=10, what="the second backtest to run")
            # A slot is free again: the user may queue another.
            status, _ = http("POST", f"{base}/api/strategies/{strategy_id}/start", window, token)
            assert status == 202


@pytest.mark.e2e
def test_embedded_mode_runs_backtests_beside_order_work_not_in_its_threads(tmp_path):
    """One process, in-memory broker: backtests have worker threads of their own, so beat's urgent tasks keep
    running while a slow backtest holds its thread; the thread pool has no Celery time limits, the deadline
    checked after every backtest day fails it all the same."""
    env = {
        **base_env(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
        "BROKER_SIMULATORS": "0",
        "ALGOTERM_FAILPOINTS": "strategies.backtest.day=sleep:2",
        "BACKTEST_SOFT_TIME_LIMIT_SECONDS": "13",
    }
    with running_stack(env) as (base, _server):
        _, login = http(
            "POST", f"{base}/api/auth/login", {"email": "trader@example.com", "password": "Trader@Demo2026"}
        )
        token = login["access"]
        strategy_id = http("GET", f"{base}/api/strategies", token=token)[1]["items"][0]["id"]
        today = timezone.localdate()
        window = {"mode": "backtest", "start": str(today - timedelta(days=40)), "end": str(today - timedelta(1))}
        started = [http("POST", f"{base}/api/strategies/{strategy_id}/start", window, token) for _ in range(2)]
        assert [status for status, _ in started] == [202, 202], started
        first = started[0][1]["backtest"]["id"]

        def backtest() -> dict:
            return http("GET", f"{base}/api/strategies/{strategy_id}/backtests/{first}", token=token)[1]

        wait_for(lambda: backtest()["status"] == "running", timeout=15, what="the backtest to run")
        running_since = time.time()

        def heartbeat_since_running() -> bool:
            scheduler = http("GET", f"{base}/api/health")[1]["components"]["scheduler"]
            age = (scheduler.get("info") or {}).get("last_heartbeat_age_s")
            return age is not None and age <= time.time() - running_since

        # Beat sends its heartbeat to the urgent queue every 10 s.
        wait_for(heartbeat_since_running, timeout=12, what="an urgent task while the backtest runs")
        assert backtest()["status"] == "running"
        failed = wait_for(lambda: (body := backtest())["status"] == "failed" and body, timeout=15, what="the deadline")
        assert "time limit of 13 seconds" in failed["error"], failed
