"""Platform alerts: each condition raised once when it starts and cleared once when it ends, however often the
evaluator runs; one alert when two evaluators race; the admins told once; audit rows; /ws/ops and the dashboard; the
Prometheus rules over metrics the exposition really serves."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import AuditEvent, Notification
from accounts.tests.factories import AdminFactory, UserFactory
from algoterm import health
from algoterm.asgi import application
from algoterm.console import alerts
from algoterm.health import heartbeat_record
from algoterm.models import Alert
from algoterm.tasks import evaluate_alerts
from algoterm.testing import celery_worker_process, private_redis, redis_settings
from brokers.prices import quote_at
from brokers.protection import CircuitBreaker
from conftest import IST, MARKET_OPEN_AT
from marketdata.quotes import quotes_put
from orders.models import LegRole, Order, OrderStatus
from orders.tests.factories import EQUITY, paper_account, standard_instruments

DASHBOARD = "/admin/algoterm/platformstate/dashboard/"
RULES = Path(django_settings.BASE_DIR) / "docs" / "prometheus-alerts.yml"
POSTGRESQL = django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def evaluate(*names: str) -> alerts.Evaluation:
    """One evaluation by the named checks (all of them when none is named)."""
    checks = tuple(check for check in alerts.CHECKS if not names or check.name in names)
    return alerts.alerts_evaluate(checks=checks)


def alerts_of(condition: str) -> list[Alert]:
    return list(Alert.objects.filter(condition=condition).order_by("started_at"))


def assert_raised_and_cleared_once(condition: str, admin) -> Alert:
    [alert] = alerts_of(condition)
    assert alert.ended_at is not None and alert.cleared_reason
    for action in (alerts.AUDIT_RAISED, alerts.AUDIT_CLEARED):
        assert AuditEvent.objects.filter(action=action, target_id=alert.pk).count() == 1, action
    told = Notification.objects.filter(user=admin, kind=alerts.NOTIFICATION_KIND, data__alert_id=alert.pk)
    assert sorted(told.values_list("data__state", flat=True)) == ["cleared", "raised"]
    return alert


@pytest.fixture
def clock(time_machine):
    """Market hours on a trading day; `clock.shift(seconds)` moves it on."""

    class Clock:
        def shift(self, seconds: float) -> datetime:
            time_machine.shift(timedelta(seconds=seconds))
            return timezone.now()

        def to(self, moment: datetime) -> datetime:
            time_machine.move_to(moment, tick=True)
            return timezone.now()

    time_machine.move_to(MARKET_OPEN_AT, tick=True)
    return Clock()


@pytest.fixture
def operator(db):
    return AdminFactory()


# --- each condition: raised once while it lasts, cleared once when it ends -----------------------------------------


def test_a_stale_feed_is_raised_once_and_cleared_once_when_quotes_flow_again(clock, operator):
    standard_instruments()
    quotes_put([quote_at(EQUITY, "1500")])
    for _ in range(2):
        assert evaluate("feed").states["feed"] == "up"
    assert not alerts_of("feed.stale")

    clock.shift(django_settings.ALERT_FEED_STALE_SECONDS + 15)  # the feed stopped: no quote since
    raised = [evaluate("feed") for _ in range(3)]
    assert [evaluation.raised for evaluation in raised] == [["feed.stale"], [], []]
    [alert] = alerts_of("feed.stale")
    assert alert.severity == "critical" and alert.ended_at is None
    assert alert.readings["newest_symbol"] == EQUITY and alert.readings["lag_seconds"] > 30

    quotes_put([quote_at(EQUITY, "1501")])  # the feed is back
    cleared = [evaluate("feed") for _ in range(3)]
    assert [evaluation.cleared for evaluation in cleared] == [["feed.stale"], [], []]
    alert = assert_raised_and_cleared_once("feed.stale", operator)
    assert alert.started_at < alert.ended_at


def test_the_feed_is_not_stale_outside_market_hours_and_has_its_threshold_after_the_bell(clock, operator):
    standard_instruments()
    quotes_put([quote_at(EQUITY, "1500")])
    clock.shift(120)
    assert evaluate("feed").raised == ["feed.stale"]

    clock.to(MARKET_OPEN_AT.replace(hour=15, minute=45))  # after the close: nothing to expect
    assert evaluate("feed").cleared == ["feed.stale"]
    assert evaluate("feed").raised == []

    # The next morning yesterday's quote is the newest, yet the feed has the threshold after 09:15 to deliver.
    next_open = datetime(2026, 12, 9, 9, 15, tzinfo=IST)
    clock.to(next_open + timedelta(seconds=10))
    assert evaluate("feed").raised == []
    clock.to(next_open + timedelta(seconds=django_settings.ALERT_FEED_STALE_SECONDS + 10))
    assert evaluate("feed").raised == ["feed.stale"]


def test_a_silent_beat_is_raised_once_and_cleared_once(clock, operator):
    heartbeat_record()
    assert evaluate("beat").states["beat"] == "up"
    clock.shift(django_settings.ALERT_BEAT_STALE_SECONDS + 30)
    assert [evaluate("beat").raised for _ in range(3)] == [["beat.stale"], [], []]
    assert alerts_of("beat.stale")[0].readings["heartbeat_age_seconds"] > 60

    heartbeat_record()
    assert [evaluate("beat").cleared for _ in range(2)] == [["beat.stale"], []]
    assert_raised_and_cleared_once("beat.stale", operator)


def test_an_open_broker_circuit_is_raised_once_and_cleared_when_a_call_succeeds(clock, operator, trader):
    standard_instruments()
    account = paper_account(trader)
    breaker = CircuitBreaker(account.pk)
    for _ in range(django_settings.BROKER_CIRCUIT_FAILURES):
        breaker.record_failure()
    assert [evaluate("brokers").raised for _ in range(2)] == [["broker.circuit.paper"], []]
    [alert] = alerts_of("broker.circuit.paper")
    assert alert.severity == "critical"  # every connected paper account's circuit is open
    assert alert.readings["tripped"] == alert.readings["connected"] >= 1

    # Half-open after its pause (a trial call may go): still not closed, so still alerted, and not again.
    clock.shift(django_settings.BROKER_CIRCUIT_OPEN_SECONDS + 5)
    assert evaluate("brokers").raised == [] and alerts_of("broker.circuit.paper")[0].ended_at is None

    breaker.before_call()
    breaker.record_success()
    assert [evaluate("brokers").cleared for _ in range(2)] == [["broker.circuit.paper"], []]
    assert_raised_and_cleared_once("broker.circuit.paper", operator)


def _order(account, *, status: str, **fields) -> Order:
    return Order.objects.create(
        user=account.owner,
        account=account,
        symbol=EQUITY,
        side="BUY",
        quantity=1,
        order_type="MARKET",
        product="MIS",
        status=status,
        **fields,
    )


def test_a_reconciliation_backlog_is_raised_once_and_cleared_once_it_is_settled(clock, operator, trader):
    standard_instruments()
    account = paper_account(trader)
    order = _order(account, status=OrderStatus.SUBMITTING)
    assert evaluate("reconciliation").raised == []  # young: reconciliation has time yet

    clock.shift(django_settings.ALERT_RECONCILE_BACKLOG_SECONDS + 5)
    assert [evaluate("reconciliation").raised for _ in range(3)] == [["orders.reconcile_backlog"], [], []]
    assert alerts_of("orders.reconcile_backlog")[0].readings["count"] == 1

    Order.objects.filter(pk=order.pk).update(status=OrderStatus.OPEN, updated_at=timezone.now())
    assert [evaluate("reconciliation").cleared for _ in range(2)] == [["orders.reconcile_backlog"], []]
    assert_raised_and_cleared_once("orders.reconcile_backlog", operator)


def test_a_filled_entry_still_waiting_for_its_exits_counts_in_the_backlog(clock, operator, trader):
    standard_instruments()
    account = paper_account(trader)
    _order(account, status=OrderStatus.FILLED, filled_quantity=1, role=LegRole.ENTRY, target="1600.00")
    clock.shift(django_settings.ALERT_RECONCILE_BACKLOG_SECONDS + 5)
    assert evaluate("reconciliation").raised == ["orders.reconcile_backlog"]


def test_orders_unknown_for_over_a_minute_are_raised_once_and_cleared_once(clock, operator, trader):
    standard_instruments()
    account = paper_account(trader)
    order = _order(account, status=OrderStatus.UNKNOWN)
    clock.shift(30)
    assert evaluate("unknown_orders").raised == []
    clock.shift(django_settings.ALERT_UNKNOWN_ORDER_SECONDS)
    assert [evaluate("unknown_orders").raised for _ in range(3)] == [["orders.unknown"], [], []]
    [alert] = alerts_of("orders.unknown")
    assert alert.severity == "critical" and alert.readings["order_ids"] == [order.pk] and order.pk in alert.detail

    Order.objects.filter(pk=order.pk).update(status=OrderStatus.REJECTED, updated_at=timezone.now())
    assert [evaluate("unknown_orders").cleared for _ in range(2)] == [["orders.unknown"], []]
    assert_raised_and_cleared_once("orders.unknown", operator)


@pytest.mark.skipif(not django_settings.EMBEDDED, reason="embedded mode: the in-process worker")
def test_the_in_process_worker_stopping_is_raised_once_and_cleared_once(clock, operator):
    running = threading.Event()
    previous = health._in_process_worker_probe
    health.in_process_worker_probe_register(running.is_set)
    try:
        wanted = {f"workers.{queue}" for queue in django_settings.WORKER_QUEUES}
        assert set(evaluate("workers").raised) == wanted
        assert evaluate("workers").raised == []
        running.set()
        assert set(evaluate("workers").cleared) == wanted
        assert evaluate("workers").cleared == []
    finally:
        health.in_process_worker_probe_register(previous)
    for condition in wanted:
        assert_raised_and_cleared_once(condition, operator)
    assert alerts_of("workers.urgent")[0].severity == "critical"
    assert alerts_of("workers.default")[0].severity == "warning"


@pytest.mark.skipif(django_settings.EMBEDDED, reason="distributed mode: real Celery workers")
def test_queues_without_workers_are_raised_once_and_cleared_once_a_worker_consumes_them(operator, wall_clock):
    queues = {f"workers.{queue}" for queue in django_settings.ALERT_WORKER_QUEUES}
    assert set(evaluate("workers").raised) == queues
    assert evaluate("workers").raised == []
    with celery_worker_process():  # consumes every queue
        assert set(evaluate("workers").cleared) == queues
        assert evaluate("workers").cleared == []
    for condition in queues:
        assert_raised_and_cleared_once(condition, operator)
    assert alerts_of("workers.urgent")[0].severity == "critical"


@pytest.mark.skipif(django_settings.EMBEDDED, reason="distributed mode: Redis is a server")
def test_a_redis_outage_is_raised_once_and_cleared_once(clock, operator, settings):
    with private_redis() as server:
        for name, value in redis_settings(server.url, prefix=f"{django_settings.REDIS_KEY_PREFIX}-alerts").items():
            setattr(settings, name, value)
        assert evaluate("redis", "beat").raised == ["beat.stale"]  # a fresh Redis: no heartbeat yet
        server.stop()
        evaluation = evaluate("redis", "beat")
        assert evaluation.raised == ["redis.down"]
        assert evaluation.states["beat"] == "unknown"  # not judged without Redis: its alert stays as it was
        assert evaluate("redis", "beat").raised == []
        server.start()
        assert evaluate("redis").cleared == ["redis.down"]
        assert evaluate("redis").cleared == []
    assert_raised_and_cleared_once("redis.down", operator)
    assert alerts_of("beat.stale")[0].ended_at is None


def test_razorpay_webhooks_that_do_not_match_their_signature_are_raised_once_and_cleared_once(clock, operator):
    def refused_call() -> None:
        response = Client().post(
            "/api/billing/webhook",
            data=b'{"event": "subscription.charged"}',
            content_type="application/json",
            HTTP_X_RAZORPAY_SIGNATURE="0" * 64,
            HTTP_X_RAZORPAY_EVENT_ID="evt_forged",
        )
        assert response.status_code == 400, response.content

    for _ in range(django_settings.ALERT_BILLING_WEBHOOK_REFUSED - 1):
        refused_call()
    assert evaluate("webhooks").raised == []
    refused_call()
    assert [evaluate("webhooks").raised for _ in range(2)] == [["webhooks.billing_refused"], []]
    assert alerts_of("webhooks.billing_refused")[0].severity == "critical"

    clock.shift(django_settings.ALERT_WEBHOOK_WINDOW_MINUTES * 60 + 60)
    assert [evaluate("webhooks").cleared for _ in range(2)] == [["webhooks.billing_refused"], []]
    assert_raised_and_cleared_once("webhooks.billing_refused", operator)


def test_a_check_that_fails_leaves_its_alerts_and_the_other_checks_go_on(clock, operator, caplog):
    def broken(now):
        raise RuntimeError("the reading failed")

    standard_instruments()
    feed = next(check for check in alerts.CHECKS if check.name == "feed")
    checks = (alerts.Check("broken", ("broken.",), broken), feed)
    clock.shift(120)  # no quote at all during market hours
    evaluation = alerts.alerts_evaluate(checks=checks)

    assert evaluation.states == {"broken": "unknown", "feed": "down"}
    assert evaluation.raised == ["feed.stale"]
    assert "alert check broken failed" in caplog.text


def test_the_beat_entry_runs_the_evaluator_every_15_seconds_on_the_default_queue(clock, operator):
    entry = django_settings.CELERY_BEAT_SCHEDULE["system.evaluate_alerts"]
    assert entry["task"] == "algoterm.tasks.evaluate_alerts" and entry["schedule"] == timedelta(seconds=15)
    assert django_settings.CELERY_TASK_ROUTES[entry["task"]] == {"queue": "default"}

    evaluate_alerts.apply()  # every check, as a worker runs it

    assert Alert.objects.filter(condition="beat.stale", ended_at__isnull=True).exists()  # no heartbeat ever
    assert alerts.last_evaluation_at() == pytest.approx(timezone.now().timestamp(), abs=5)


# --- two evaluators at once -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not POSTGRESQL, reason="PostgreSQL: concurrent transactions")
@pytest.mark.django_db(transaction=True)
def test_two_evaluators_racing_raise_one_alert_and_tell_the_admins_once():
    admin = AdminFactory()
    first_inserted, first_may_commit = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic():  # holds its open alert uncommitted while the second tries
                results["first"] = alerts.alert_raise(condition="race.test", severity="warning", title="race")
                first_inserted.set()
                first_may_commit.wait(10)
        finally:
            connection.close()

    def second() -> None:
        try:
            first_inserted.wait(10)
            results["second"] = alerts.alert_raise(condition="race.test", severity="warning", title="race")
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_inserted.wait(10)
    threading.Timer(0.5, first_may_commit.set).start()  # the second is blocked on the unique index meanwhile
    for thread in threads:
        thread.join(20)

    assert isinstance(results["first"], Alert) and results["second"] is None
    [alert] = alerts_of("race.test")
    assert AuditEvent.objects.filter(action=alerts.AUDIT_RAISED, target_id=alert.pk).count() == 1
    assert Notification.objects.filter(user=admin, kind=alerts.NOTIFICATION_KIND).count() == 1


@pytest.mark.skipif(not POSTGRESQL, reason="PostgreSQL: concurrent transactions")
@pytest.mark.django_db(transaction=True)
def test_two_whole_evaluations_at_once_raise_and_clear_once(time_machine):
    time_machine.move_to(MARKET_OPEN_AT, tick=True)
    admin = AdminFactory()
    standard_instruments()
    quotes_put([quote_at(EQUITY, "1500")])
    time_machine.shift(timedelta(seconds=120))

    def run_together() -> None:
        barrier = threading.Barrier(2)

        def run() -> None:
            try:
                barrier.wait(10)
                evaluate("feed")
            finally:
                connection.close()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    run_together()
    quotes_put([quote_at(EQUITY, "1501")])
    run_together()
    assert_raised_and_cleared_once("feed.stale", admin)


# --- the database itself --------------------------------------------------------------------------------------------


def _database_accepts_connections(accept: bool) -> None:
    database = django_settings.DATABASES["default"]
    admin_dsn = f"host={database['HOST']} port={database['PORT']} user={database['USER']} dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database["NAME"]}" WITH ALLOW_CONNECTIONS {str(accept).lower()}')
        if not accept:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [database["NAME"]]
            )


@pytest.mark.skipif(not POSTGRESQL, reason="PostgreSQL: an outage staged on the server")
@pytest.mark.django_db(transaction=True)
def test_a_database_outage_is_logged_and_pushed_then_stored_with_its_start_when_the_database_is_back(
    time_machine, caplog
):
    time_machine.move_to(MARKET_OPEN_AT, tick=True)
    admin = AdminFactory()
    started = timezone.now()
    _database_accepts_connections(False)
    try:
        for _ in range(3):
            evaluation = evaluate("database", "reconciliation")
            assert evaluation.states == {"database": "down", "reconciliation": "unknown"}
    finally:
        _database_accepts_connections(True)
    held = [record for record in caplog.records if "not stored while the database is down" in record.getMessage()]
    assert len(held) == 1 and held[0].levelname == "ERROR"

    time_machine.shift(timedelta(seconds=90))
    assert evaluate("database").cleared == ["database.down"]
    assert evaluate("database").cleared == []
    alert = assert_raised_and_cleared_once("database.down", admin)
    assert abs((alert.started_at - started).total_seconds()) < 5  # when it was seen, not when it was stored
    assert alert.duration_seconds >= 90


# --- what operators see: /ws/ops, the dashboard, the admin ----------------------------------------------------------


async def _receive(communicator: WebsocketCommunicator, message_type: str, timeout: float = 5) -> dict:
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["t"] == message_type:
            return message["p"]


@pytest.mark.django_db(transaction=True)
async def test_a_stopped_feed_reaches_the_ops_socket_and_the_dashboard_and_clears_when_it_restarts(time_machine):
    time_machine.move_to(MARKET_OPEN_AT, tick=True)
    operator = await database_sync_to_async(AdminFactory)()
    await database_sync_to_async(standard_instruments)()
    await database_sync_to_async(quotes_put)([quote_at(EQUITY, "1500")])
    assert (await database_sync_to_async(evaluate)("feed")).raised == []

    page = Client()
    await database_sync_to_async(page.force_login)(operator)
    socket = WebsocketCommunicator(application, f"/ws/ops?token={AccessToken.for_user(operator)}")
    try:
        assert (await socket.connect(timeout=5))[0]
        assert (await socket.receive_json_from(timeout=5))["t"] == "server_ready"
        subscribe = {"action": "subscribe", "topics": ["alerts", "health"]}
        await socket.send_json_to({"t": "subscription", "p": subscribe})
        snapshot = await _receive(socket, "snapshot")
        assert snapshot["topics"]["alerts"] == []

        time_machine.shift(timedelta(seconds=django_settings.ALERT_FEED_STALE_SECONDS + 15))  # the feed stops
        assert (await database_sync_to_async(evaluate)("feed")).raised == ["feed.stale"]
        raised = await _receive(socket, "alert_raised")
        assert (raised["condition"], raised["severity"], raised["ended_at"]) == ("feed.stale", "critical", None)
        assert raised["id"].startswith("alr_") and raised["stored"] is True
        change = await _receive(socket, "health")
        assert (change["component"], change["old_state"], change["new_state"]) == ("feed", "up", "down")

        html = (await database_sync_to_async(page.get)(DASHBOARD)).content.decode()
        opened = re.search(r'id="alerts-open">(.*?)</div>', html, re.S).group(1)
        assert 'data-condition="feed.stale"' in opened and "The market feed is stale" in opened

        # A new subscriber starts from the open alert.
        await socket.send_json_to({"t": "request_snapshot", "p": {}})
        assert [alert["id"] for alert in (await _receive(socket, "snapshot"))["topics"]["alerts"]] == [raised["id"]]

        await database_sync_to_async(quotes_put)([quote_at(EQUITY, "1501")])  # the feed is back
        assert (await database_sync_to_async(evaluate)("feed")).cleared == ["feed.stale"]
        cleared = await _receive(socket, "alert_cleared")
        assert cleared["id"] == raised["id"] and cleared["ended_at"] and cleared["duration_seconds"] > 0
        change = await _receive(socket, "health")
        assert (change["component"], change["old_state"], change["new_state"]) == ("feed", "down", "up")

        html = (await database_sync_to_async(page.get)(DASHBOARD)).content.decode()
        assert "No open alerts." in re.search(r'id="alerts-open">(.*?)</div>', html, re.S).group(1)
        history = re.search(r'id="alerts-history">(.*?)</div>', html, re.S).group(1)
        assert 'data-condition="feed.stale"' in history and "evaluator" in history
        assert 'id="chart-alerts" src="data:image/png;base64,' in html
    finally:
        await socket.disconnect()
        await database_sync_to_async(connections.close_all)()


@pytest.mark.django_db
def test_the_alert_admin_lists_alerts_read_only_with_filters(clock, admin_user):
    alerts.alert_raise(condition="feed.stale", severity="critical", title="The market feed is stale")
    page = Client()
    page.force_login(admin_user)

    listing = page.get("/admin/algoterm/alert/?severity__exact=critical&ended_at__isnull=True")
    assert listing.status_code == 200 and "feed.stale" in listing.content.decode()
    assert page.get("/admin/algoterm/alert/add/").status_code == 403

    page.force_login(UserFactory())
    assert page.get("/admin/algoterm/alert/").status_code == 302  # not staff: to the login page


# --- Prometheus -----------------------------------------------------------------------------------------------------

_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords, label matchers or
    grouping clauses."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\b(?:on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {name for name in names if name.lower() not in _PROMQL_WORDS}


def test_every_prometheus_rule_reads_metrics_the_exposition_serves(clock, admin_client, trader):
    standard_instruments()
    paper_account(trader)
    quotes_put([quote_at(EQUITY, "1500")])
    heartbeat_record()
    alerts.alert_raise(condition="feed.stale", severity="critical", title="The market feed is stale")
    response = admin_client.get("/api/metrics")
    assert response.status_code == 200
    served = {family.name for family in text_string_to_metric_families(response.content.decode())}

    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        names = metric_names(str(rule["expr"]))
        assert names, rule
        assert names <= served, (rule["alert"], names - served)

    sample = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }
    assert sample[("algoterm_alerts_open", (("condition", "feed.stale"), ("severity", "critical")))] == 1
    assert sample[("algoterm_component_up", (("component", "database"),))] == 1
    assert sample[("algoterm_feed_stale", ())] == 0
    assert sample[("algoterm_beat_heartbeat_age_seconds", ())] < 5


def test_the_rule_parser_finds_metric_names_only():
    expr = 'time() - a_b{x="y"} > 1 and on (broker) c == d offset 5m or rate(e[5m]) > 0'
    assert metric_names(expr) == {"a_b", "c", "d", "e"}


def test_the_command_evaluates_without_celery(clock, operator):
    output = io.StringIO()
    call_command("alerts_evaluate", stdout=output)

    assert "raised" in output.getvalue() and "beat down" in output.getvalue()
    assert Alert.objects.filter(condition="beat.stale", ended_at__isnull=True).count() == 1


# --- the whole way: a real feed process stops and starts again ------------------------------------------------------


def feed_process() -> subprocess.Popen:
    """`manage.py runfeed` (the simulated market, two batches a second) on the test database and this test's Redis
    keys; the market trades around the clock, so the test does not depend on the hour."""
    database = django_settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        "MARKET_ALWAYS_OPEN": "true",
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "manage.py", "runfeed", "--source", "simulated", "--interval", "0.5"]
    return subprocess.Popen(command, cwd=django_settings.BASE_DIR, env=env)


def feed_stopped(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def evaluate_until(predicate, *, seconds: float = 30) -> alerts.Evaluation:
    deadline = time.monotonic() + seconds
    while True:
        evaluation = evaluate("feed")
        if predicate(evaluation):
            return evaluation
        assert time.monotonic() < deadline, evaluation
        time.sleep(0.5)


def open_alert_box(page: Client) -> str:
    html = page.get(DASHBOARD).content.decode()
    return re.search(r'id="alerts-open">(.*?)</div>', html, re.S).group(1)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(django_settings.EMBEDDED, reason="the feed is a process of its own, sharing Redis and PostgreSQL")
def test_stopping_the_feed_process_raises_the_alert_on_a_live_ops_socket_and_restarting_it_clears_it(
    settings, wall_clock
):
    from websockets.sync.client import connect as ws_connect

    from algoterm.console.tests.test_ops_socket import expect, subscribe, web_server

    settings.MARKET_ALWAYS_OPEN, settings.ALERT_FEED_STALE_SECONDS = True, 3
    operator = AdminFactory()
    page = Client()
    page.force_login(operator)
    feed = feed_process()
    try:
        with (
            web_server() as address,
            ws_connect(f"ws://{address}/ws/ops?token={AccessToken.for_user(operator)}", open_timeout=10) as socket_,
        ):
            assert expect(socket_, "server_ready")
            assert subscribe(socket_, "alerts")["alerts"] == []
            deadline = time.monotonic() + 30
            while alerts.feed_staleness(now=timezone.now()).stale:  # read, not evaluated: quotes start flowing
                assert time.monotonic() < deadline, "the feed never quoted"
                time.sleep(0.2)
            assert evaluate("feed").states["feed"] == "up"

            feed_stopped(feed)
            assert evaluate_until(lambda evaluation: bool(evaluation.raised)).raised == ["feed.stale"]
            raised = expect(socket_, "alert_raised", timeout=10)
            assert (raised["condition"], raised["severity"], raised["ended_at"]) == ("feed.stale", "critical", None)
            assert 'data-condition="feed.stale"' in open_alert_box(page)
            assert evaluate("feed").raised == []  # raised once, however often it is evaluated

            feed = feed_process()
            assert evaluate_until(lambda evaluation: bool(evaluation.cleared)).cleared == ["feed.stale"]
            cleared = expect(socket_, "alert_cleared", timeout=10)
            assert cleared["id"] == raised["id"] and cleared["ended_at"]
            assert "No open alerts." in open_alert_box(page)
    finally:
        feed_stopped(feed)
    assert_raised_and_cleared_once("feed.stale", operator)
