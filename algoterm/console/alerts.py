"""Platform alerts: the evaluator that watches the platform on a short clock, and the two services that record what
it sees.

Beat runs `alerts_evaluate` every ALERT_EVALUATE_SECONDS (`algoterm.tasks.evaluate_alerts`; `manage.py
alerts_evaluate` runs it outside Celery). Each check reads one part of the platform and answers the conditions that
hold now; a condition that starts is raised once (`alert_raise`), one that ends is cleared once (`alert_clear`), and
nothing is said while it persists. Each transition is one transaction with its audit row and the admins'
notifications; after it commits, it is pushed on the operators' socket (/ws/ops, topic `alerts`). A component whose
state changes (up, degraded, down, unknown) is pushed on topic `health`.

Conditions, by check (the check owns the conditions under its prefixes, and only it clears them):
    database        database.down                      critical  the database does not answer
    redis           redis.down                         critical  Redis (broker, cache, channel layer) does not answer
    workers         workers.<queue>                    urgent critical, others warning: no worker consumes it
    beat            beat.stale                         critical  beat's heartbeat is older than the threshold
    feed            feed.stale                         critical  market open, newest quote older than the threshold
    brokers         broker.circuit.<broker>            warning (critical when every connected account's circuit is)
    reconciliation  orders.reconcile_backlog           warning   orders unsettled past the threshold
    unknown_orders  orders.unknown                     critical  orders in UNKNOWN past the threshold
    instruments     instruments.master.<broker>        warning   the latest master refresh failed or was refused
    market_data     feed.source_down                   critical  designated market-data accounts, none feeding

A check that raises leaves its conditions as they are (its component reads `unknown`) and the others go on; a check
that needs the database or Redis is not run while that is down. The database alert cannot be stored while the
database is down: the first evaluator to see the outage logs it (ERROR) and pushes `alert_raised` (with `"stored":
false` and no id) on /ws/ops at once, and holds the start time in the cache (in the process when Redis is down too).
The first evaluation that reaches the database again stores the alert with the start time seen and clears it at
once, so the history, the audit log and the admins' notifications have it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.services import audit_record
from algoterm.console.dashboard import alerts_open, duration_text, feed_figures
from algoterm.console.system import admins_notify
from algoterm.counters import BILLING_WEBHOOK_REFUSED, STRATEGY_WEBHOOK_REFUSED, counter_sum
from algoterm.health import check_database, check_redis, check_scheduler, check_workers
from algoterm.locking import row_locked
from algoterm.models import Alert, AlertSeverity
from algoterm.realtime import ops_publish, to_wire
from brokers.protection import CircuitBreaker
from brokers.selectors import broker_account_platform_connected
from marketdata import calendar as market_calendar
from marketdata.instruments.masters import instrument_master_failing
from marketdata.sources import market_data_source_state
from orders.selectors import order_platform_reconcile_backlog, order_platform_unknown

logger = logging.getLogger(__name__)

NOTIFICATION_KIND = "system.alert"
AUDIT_RAISED, AUDIT_CLEARED = "system.alert_raised", "system.alert_cleared"
DATABASE_DOWN = "database.down"
WORKER_INSPECT_TIMEOUT = 1.0
CLEARED_BY_EVALUATOR = "evaluator"

# Component states pushed on topic `health`.
UP, DEGRADED, DOWN, UNKNOWN = "up", "degraded", "down", "unknown"

_NOTIFICATION_LEVEL = {
    AlertSeverity.WARNING: Notification.Level.WARNING,
    AlertSeverity.CRITICAL: Notification.Level.ERROR,
}
_HELD_PREFIX = "alerts:held:"
_COMPONENT_PREFIX = "alerts:component:"
LAST_EVALUATION_KEY = "alerts:last_evaluation"


# --- the record: selectors and services -------------------------------------------------------------------------


def alert_wire(alert: Alert) -> dict[str, Any]:
    """An alert as /ws/ops and the snapshot carry it."""
    return to_wire(
        {
            "id": alert.pk,
            "condition": alert.condition,
            "severity": alert.severity,
            "title": alert.title,
            "detail": alert.detail,
            "readings": alert.readings,
            "started_at": alert.started_at,
            "ended_at": alert.ended_at,
            "duration_seconds": alert.duration_seconds,
            "cleared_by": alert.cleared_by_id,
            "cleared_reason": alert.cleared_reason,
            "stored": True,
        }
    )


def alerts_snapshot_part() -> list[dict[str, Any]]:
    """The `alerts` topic's /ws/ops snapshot: every open alert, critical first."""
    return [alert_wire(alert) for alert in alerts_open()]


@transaction.atomic
def alert_raise(
    *,
    condition: str,
    severity: str,
    title: str,
    detail: str = "",
    readings: dict[str, Any] | None = None,
    started_at: datetime | None = None,
) -> Alert | None:
    """Open an alert for `condition`, audited, every admin notified, pushed on /ws/ops after commit. None when the
    condition already has an open alert (another evaluator raised it, even one committing at this very moment):
    then nothing is recorded or told."""
    if severity not in AlertSeverity.values:
        raise ValueError(f"unknown alert severity {severity!r}")
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                condition=condition,
                severity=severity,
                title=title[:200],
                detail=detail,
                readings=to_wire(readings or {}),
                started_at=started_at or timezone.now(),
            )
    except IntegrityError:  # the partial unique constraint: one open alert per condition
        return None
    audit_record(
        action=AUDIT_RAISED,
        target=alert,
        details={"condition": condition, "severity": severity, "readings": alert.readings},
    )
    admins_notify(
        actor=None,
        kind=NOTIFICATION_KIND,
        title=f"Alert: {alert.title}",
        body=detail,
        level=_NOTIFICATION_LEVEL[severity],
        data={"alert_id": alert.pk, "condition": condition, "severity": severity, "state": "raised"},
    )
    ops_publish(topic="alerts", message_type="alert_raised", payload=alert_wire(alert))
    return alert


@transaction.atomic
def alert_clear(
    *, alert_id: str, reason: str, actor: User | None = None, ended_at: datetime | None = None
) -> Alert | None:
    """End an open alert, audited, every admin notified, pushed on /ws/ops after commit. None when it has ended
    already (cleared meanwhile by another evaluator)."""
    alert = row_locked(Alert.objects.all(), pk=alert_id)
    if alert.ended_at is not None:
        return None
    alert.ended_at = max(ended_at or timezone.now(), alert.started_at)
    alert.cleared_by = actor
    alert.cleared_reason = reason[:300]
    alert.save(update_fields=["ended_at", "cleared_by", "cleared_reason"])
    duration = alert.duration_seconds or 0.0
    audit_record(
        action=AUDIT_CLEARED,
        actor=actor,
        target=alert,
        details={"condition": alert.condition, "reason": alert.cleared_reason, "duration_seconds": duration},
    )
    admins_notify(
        actor=None,
        kind=NOTIFICATION_KIND,
        title=f"Cleared: {alert.title}",
        body=f"{alert.cleared_reason}; it lasted {duration_text(duration)}.",
        level=Notification.Level.SUCCESS,
        data={"alert_id": alert.pk, "condition": alert.condition, "severity": alert.severity, "state": "cleared"},
    )
    ops_publish(topic="alerts", message_type="alert_cleared", payload=alert_wire(alert))
    return alert


# --- readings (the checks and the Prometheus gauges share them) -------------------------------------------------


def workers_per_queue() -> dict[str, int]:
    """How many workers consume each queue of ALERT_WORKER_QUEUES. Embedded mode knows only whether its in-process
    worker runs (it takes WORKER_QUEUES); its backtest worker reports nothing, so the backtests queue is left out."""
    queues = list(settings.ALERT_WORKER_QUEUES)
    if settings.EMBEDDED:
        alive = check_workers(broker_up=True).is_up
        return {queue: int(alive) for queue in queues if queue in settings.WORKER_QUEUES}
    replies = current_app.control.inspect(timeout=WORKER_INSPECT_TIMEOUT).active_queues() or {}
    counts = dict.fromkeys(queues, 0)
    for consumed in replies.values():
        for queue in {entry.get("name") for entry in consumed or ()}:
            if queue in counts:
                counts[queue] += 1
    return counts


def beat_heartbeat_age() -> float | None:
    """Seconds since beat's heartbeat task last ran on a worker; None when it never has (or it expired)."""
    return check_scheduler().info.get("last_heartbeat_age_s")


@dataclass(frozen=True)
class FeedStaleness:
    market_open: bool
    newest: datetime | None
    newest_symbol: str
    lag_seconds: float | None  # since the newest quote or the session's open, whichever is later
    stale: bool


def feed_staleness(*, now: datetime) -> FeedStaleness:
    """Whether the feed is stale: the market is open and nothing newer than ALERT_FEED_STALE_SECONDS is quoted. The
    session's open counts as a quote, so the feed has that long after the bell before it is called stale."""
    market_open = market_calendar.is_open(now, simulated=True)
    figures = feed_figures(now=now)
    if not market_open:
        return FeedStaleness(False, figures.newest, figures.newest_symbol, figures.lag_seconds, False)
    local_day = timezone.localtime(now, market_calendar.IST).date()
    bounds = None if market_calendar.market_always_open() else market_calendar.session_bounds(local_day)
    moments = [moment for moment in (figures.newest, bounds.open if bounds else None) if moment is not None]
    lag = round(max(0.0, (now - max(moments)).total_seconds()), 1) if moments else None
    stale = lag is None or lag > settings.ALERT_FEED_STALE_SECONDS
    return FeedStaleness(True, figures.newest, figures.newest_symbol, lag, stale)


def broker_circuits_tripped() -> dict[str, dict[str, Any]]:
    """Per broker with connected accounts: how many, and those whose circuit breaker has opened and not yet been
    closed by a successful call (open, or half-open waiting for its trial call): what the broker alert counts."""
    accounts = broker_account_platform_connected()
    keys = {f"{CircuitBreaker(pk).prefix}:open_until": (pk, broker) for pk, broker in accounts}
    found: dict[str, Any] = {}
    names = list(keys)
    for start in range(0, len(names), 500):
        found.update(cache.get_many(names[start : start + 500]))
    now = time.time()
    result: dict[str, dict[str, Any]] = {}
    for _, broker in accounts:
        result.setdefault(broker, {"connected": 0, "tripped": 0, "open_now": 0, "account_ids": []})["connected"] += 1
    for key, open_until in sorted(found.items()):
        if open_until is None:
            continue
        pk, broker = keys[key]
        figures = result[broker]
        figures["tripped"] += 1
        figures["open_now"] += int(open_until > now)
        if len(figures["account_ids"]) < 10:
            figures["account_ids"].append(pk)
    return result


def reconcile_backlog(*, now: datetime) -> dict[str, Any]:
    return order_platform_reconcile_backlog(
        unchanged_since=now - timedelta(seconds=settings.ALERT_RECONCILE_BACKLOG_SECONDS)
    )


def unknown_orders(*, now: datetime) -> dict[str, Any]:
    return order_platform_unknown(unchanged_since=now - timedelta(seconds=settings.ALERT_UNKNOWN_ORDER_SECONDS))


# --- the checks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A condition that holds now."""

    condition: str
    severity: str
    title: str
    detail: str
    readings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    name: str  # the component, as pushed on topic `health`
    owns: tuple[str, ...]  # condition keys, or prefixes ending in ".", this check alone raises and clears
    run: Callable[[datetime], list[Finding]]
    needs: tuple[str, ...] = ()  # components that must be up for it to run

    def owns_condition(self, condition: str) -> bool:
        return any(condition == key or (key.endswith(".") and condition.startswith(key)) for key in self.owns)


def _component_down(health, *, condition: str, title: str, check: str, consequence: str) -> list[Finding]:
    if health.is_up:
        return []
    return [
        Finding(
            condition,
            AlertSeverity.CRITICAL,
            title,
            f"{check} failed ({health.detail or 'no answer'}): {consequence}",
            {"error": health.detail, "latency_ms": health.latency_ms},
        )
    ]


def _database(now: datetime) -> list[Finding]:
    return _component_down(
        check_database(),
        condition=DATABASE_DOWN,
        title="The database does not answer",
        check="The database check",
        consequence="orders, logins and most of the API answer 503 until it is back.",
    )


def _redis(now: datetime) -> list[Finding]:
    return _component_down(
        check_redis(),
        condition="redis.down",
        title="Redis does not answer",
        check="The Redis check",
        consequence="tasks, quotes and WebSocket pushes stop until it is back.",
    )


def _workers(now: datetime) -> list[Finding]:
    findings = []
    for queue, count in workers_per_queue().items():
        if count:
            continue
        critical = queue == settings.TASK_QUEUE_URGENT
        findings.append(
            Finding(
                f"workers.{queue}",
                AlertSeverity.CRITICAL if critical else AlertSeverity.WARNING,
                f"No worker consumes the {queue} queue",
                f"No Celery worker answered for the {queue} queue: its tasks wait"
                + (" (orders, exits, reconciliation, the risk engine, strategy fires)." if critical else "."),
                {"queue": queue, "workers": 0},
            )
        )
    return findings


def _beat(now: datetime) -> list[Finding]:
    age = beat_heartbeat_age()
    if age is not None and age <= settings.ALERT_BEAT_STALE_SECONDS:
        return []
    seen = "has never run" if age is None else f"last ran {age:.0f} s ago"
    return [
        Finding(
            "beat.stale",
            AlertSeverity.CRITICAL,
            "Beat is not ticking",
            f"Beat's heartbeat {seen} (threshold {settings.ALERT_BEAT_STALE_SECONDS:.0f} s): RMS sweeps, strategy "
            "fires and reconciliation are not being scheduled, or no urgent worker runs them.",
            {"heartbeat_age_seconds": age, "threshold_seconds": settings.ALERT_BEAT_STALE_SECONDS},
        )
    ]


def _feed(now: datetime) -> list[Finding]:
    feed = feed_staleness(now=now)
    if not feed.stale:
        return []
    seen = "no quote yet" if feed.newest is None else f"newest quote {feed.newest_symbol} at {feed.newest.isoformat()}"
    return [
        Finding(
            "feed.stale",
            AlertSeverity.CRITICAL,
            "The market feed is stale",
            f"The market is open and the feed has quoted nothing for {feed.lag_seconds} s ({seen}; threshold "
            f"{settings.ALERT_FEED_STALE_SECONDS:.0f} s): MTM, stops and tick-driven risk run on old prices.",
            {
                "lag_seconds": feed.lag_seconds,
                "newest_quote_at": feed.newest,
                "newest_symbol": feed.newest_symbol,
                "threshold_seconds": settings.ALERT_FEED_STALE_SECONDS,
            },
        )
    ]


def _brokers(now: datetime) -> list[Finding]:
    findings = []
    for broker, figures in sorted(broker_circuits_tripped().items()):
        if not figures["tripped"]:
            continue
        every = figures["tripped"] == figures["connected"]
        findings.append(
            Finding(
                f"broker.circuit.{broker}",
                AlertSeverity.CRITICAL if every else AlertSeverity.WARNING,
                f"{broker}: broker circuit open",
                f"{figures['tripped']} of {figures['connected']} connected {broker} accounts have their circuit "
                "breaker open after repeated failures: their calls fail fast with 503 until a trial call succeeds.",
                figures,
            )
        )
    return findings


def _reconciliation(now: datetime) -> list[Finding]:
    backlog = reconcile_backlog(now=now)
    if backlog["count"] < settings.ALERT_RECONCILE_BACKLOG_ORDERS:
        return []
    return [
        Finding(
            "orders.reconcile_backlog",
            AlertSeverity.WARNING,
            "Orders are waiting for reconciliation",
            f"{backlog['count']} orders have waited over {settings.ALERT_RECONCILE_BACKLOG_SECONDS:.0f} s for the "
            "broker's confirmation or for their exits: reconciliation is not keeping up (workers, broker, session).",
            {**backlog, "threshold_seconds": settings.ALERT_RECONCILE_BACKLOG_SECONDS},
        )
    ]


def _unknown_orders(now: datetime) -> list[Finding]:
    unknown = unknown_orders(now=now)
    if not unknown["count"]:
        return []
    return [
        Finding(
            "orders.unknown",
            AlertSeverity.CRITICAL,
            "Orders in UNKNOWN status",
            f"{unknown['count']} orders have been UNKNOWN (the broker's answer was lost) for over "
            f"{settings.ALERT_UNKNOWN_ORDER_SECONDS:.0f} s; first: {', '.join(unknown['order_ids'])}.",
            {**unknown, "threshold_seconds": settings.ALERT_UNKNOWN_ORDER_SECONDS},
        )
    ]


def _instruments(now: datetime) -> list[Finding]:
    return [
        Finding(
            f"instruments.master.{broker}",
            AlertSeverity.WARNING,
            f"{broker}: instrument master not refreshed",
            f"The latest refresh of the {broker} instrument master ({load.started_at.isoformat()}, attempt "
            f"{load.attempt}) {load.get_outcome_display()}: {load.message} Yesterday's master stays in use; the "
            "refresh is retried, and `manage.py load_instruments --broker` runs it by hand.",
            {"outcome": load.outcome, "attempt": load.attempt, "started_at": load.started_at},
        )
        for broker, load in sorted(instrument_master_failing().items())
    ]


def _market_data(now: datetime) -> list[Finding]:
    state = market_data_source_state()
    if state is None or state.get("live"):
        return []
    return [
        Finding(
            "feed.source_down",
            AlertSeverity.CRITICAL,
            "No market-data account is feeding",
            f"Market-data accounts are designated but none feeds ticks ({state.get('detail') or 'no session'}): "
            "log in to one of them, or designate another in the admin.",
            {key: value for key, value in state.items() if key != "live"},
        )
    ]


def webhook_refusals(*, now: datetime) -> dict[str, int]:
    """Refused webhook calls in the last ALERT_WEBHOOK_WINDOW_MINUTES: Razorpay's (a signature that does not match)
    and strategies' (TradingView and ChartInk calls refused for any reason), platform-wide."""
    minutes = int(settings.ALERT_WEBHOOK_WINDOW_MINUTES)
    return {
        "billing": counter_sum(name=BILLING_WEBHOOK_REFUSED, minutes=minutes, now=now),
        "strategies": counter_sum(name=STRATEGY_WEBHOOK_REFUSED, minutes=minutes, now=now),
    }


def _webhooks(now: datetime) -> list[Finding]:
    refused = webhook_refusals(now=now)
    window = f"{settings.ALERT_WEBHOOK_WINDOW_MINUTES:g} min"
    findings = []
    if refused["billing"] >= settings.ALERT_BILLING_WEBHOOK_REFUSED:
        findings.append(
            Finding(
                "webhooks.billing_refused",
                AlertSeverity.CRITICAL,
                "Razorpay webhooks are being refused",
                f"{refused['billing']} Razorpay webhook calls in the last {window} did not match their signature: "
                "if RAZORPAY_WEBHOOK_SECRET differs from the dashboard's, payments and renewals go unseen.",
                {"refused": refused["billing"], "window_minutes": settings.ALERT_WEBHOOK_WINDOW_MINUTES},
            )
        )
    if refused["strategies"] >= settings.ALERT_STRATEGY_WEBHOOK_REFUSED:
        findings.append(
            Finding(
                "webhooks.strategy_refused",
                AlertSeverity.WARNING,
                "Strategy webhook calls are being refused",
                f"{refused['strategies']} TradingView/ChartInk webhook calls were refused platform-wide in the last "
                f"{window} (bad secrets, stale or replayed calls, risk refusals): see the signals on /ws/ops.",
                {"refused": refused["strategies"], "window_minutes": settings.ALERT_WEBHOOK_WINDOW_MINUTES},
            )
        )
    return findings


CHECKS: tuple[Check, ...] = (
    Check("database", (DATABASE_DOWN,), _database),
    Check("redis", ("redis.",), _redis),
    Check("workers", ("workers.",), _workers, needs=("redis",)),
    Check("beat", ("beat.",), _beat, needs=("redis",)),
    Check("feed", ("feed.",), _feed, needs=("database", "redis")),
    Check("brokers", ("broker.circuit.",), _brokers, needs=("database", "redis")),
    Check("reconciliation", ("orders.reconcile_backlog",), _reconciliation, needs=("database",)),
    Check("unknown_orders", ("orders.unknown",), _unknown_orders, needs=("database",)),
    Check("webhooks", ("webhooks.",), _webhooks, needs=("redis",)),
    Check("instruments", ("instruments.",), _instruments, needs=("database",)),
    Check("market_data", ("feed.source_down",), _market_data, needs=("database", "redis")),
)


# --- state kept between evaluations (shared cache; this process's memory while the cache is out) -------------------

_local_state: dict[str, Any] = {}


def _state_get(key: str) -> Any:
    try:
        return cache.get(key)
    except Exception:  # noqa: BLE001 - Redis down: this process remembers alone
        return _local_state.get(key)


def _state_set(key: str, value: Any) -> None:
    _local_state[key] = value
    try:
        cache.set(key, value, timeout=None)
    except Exception:  # noqa: BLE001
        pass


def _state_claim(key: str, value: Any) -> bool:
    """Store `value` unless the key holds one; whether this call stored it."""
    try:
        return bool(cache.add(key, value, timeout=None))
    except Exception:  # noqa: BLE001
        return _local_state.setdefault(key, value) is value


def _state_take(key: str) -> Any:
    """The value, removed, for this caller only (None when another took it first)."""
    local = _local_state.pop(key, None)
    try:
        value = cache.get(key)
        return value if value is not None and cache.delete(key) else local
    except Exception:  # noqa: BLE001
        return local


# --- the evaluator ----------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    at: datetime
    states: dict[str, str]  # component -> up | degraded | down | unknown
    findings: dict[str, Finding]  # condition -> what holds now
    raised: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)


def _state_of(findings: list[Finding]) -> str:
    if not findings:
        return UP
    return DOWN if any(f.severity == AlertSeverity.CRITICAL for f in findings) else DEGRADED


def _publish(*, topic: str, message_type: str, payload: dict[str, Any], database_up: bool) -> None:
    ops_publish(topic=topic, message_type=message_type, payload=payload, now=not database_up)


def _reconnect_if_broken() -> None:
    # A connection the database cut (an outage, a restart) stays unusable until closed; Celery does this around
    # every task, the command loop does not.
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def _hold_database_outage(finding: Finding, *, now: datetime) -> None:
    held = {
        "started_at": now.isoformat(),
        "severity": finding.severity,
        "title": finding.title,
        "detail": finding.detail,
        "readings": to_wire(finding.readings),
    }
    if not _state_claim(f"{_HELD_PREFIX}{DATABASE_DOWN}", held):
        return
    logger.error(
        "ALERT %s raised at %s, not stored while the database is down: %s", DATABASE_DOWN, held["started_at"], held
    )
    payload = {
        "id": None,
        "condition": DATABASE_DOWN,
        **{key: held[key] for key in ("severity", "title", "detail", "readings", "started_at")},
        "ended_at": None,
        "stored": False,
    }
    ops_publish(topic="alerts", message_type="alert_raised", payload=payload, now=True)


def _settle_database_outage(*, now: datetime) -> list[str]:
    """The database is back: store the outage seen while it was down, raised and cleared."""
    held = _state_take(f"{_HELD_PREFIX}{DATABASE_DOWN}")
    if not held:
        return []
    try:
        alert = alert_raise(
            condition=DATABASE_DOWN,
            severity=held["severity"],
            title=held["title"],
            detail=held["detail"],
            readings=held["readings"],
            started_at=datetime.fromisoformat(held["started_at"]),
        )
        if alert is not None:
            alert_clear(alert_id=alert.pk, reason="the database answers again", ended_at=now)
    except Exception:
        _state_claim(f"{_HELD_PREFIX}{DATABASE_DOWN}", held)  # the next evaluation tries again
        raise
    logger.warning("ALERT %s stored: the database was down from %s to %s", DATABASE_DOWN, held["started_at"], now)
    return [DATABASE_DOWN]


def _health_changes(states: dict[str, str], *, now: datetime, database_up: bool) -> None:
    for component, state in states.items():
        key = f"{_COMPONENT_PREFIX}{component}"
        previous = _state_get(key)
        if previous == state:
            continue
        _state_set(key, state)
        if previous is None:
            continue  # first sight (or the cache was flushed): not a change anyone saw
        payload = {"component": component, "old_state": previous, "new_state": state, "at": now}
        _publish(topic="health", message_type="health", payload=payload, database_up=database_up)


def alerts_evaluate(*, now: datetime | None = None, checks: tuple[Check, ...] = CHECKS) -> Evaluation:
    """Run every check once; raise what started, clear what ended, push component changes. Safe to run in several
    processes at once: each condition is still raised and cleared once."""
    now = now or timezone.now()
    _reconnect_if_broken()
    states: dict[str, str] = {}
    results: dict[str, list[Finding]] = {}
    for check in checks:
        if any(states.get(need) == DOWN for need in check.needs):
            states[check.name] = UNKNOWN
            continue
        try:
            findings = check.run(now)
        except Exception:
            logger.exception("alert check %s failed; its alerts are left as they are", check.name)
            states[check.name] = UNKNOWN
            continue
        results[check.name] = findings
        states[check.name] = _state_of(findings)
    evaluation = Evaluation(
        at=now, states=states, findings={f.condition: f for found in results.values() for f in found}
    )
    database_up = states.get("database") != DOWN
    if not database_up:
        if DATABASE_DOWN in evaluation.findings:
            _hold_database_outage(evaluation.findings[DATABASE_DOWN], now=now)
        _health_changes(states, now=now, database_up=False)
        return evaluation
    evaluation.cleared += _settle_database_outage(now=now)
    open_by_condition = {alert.condition: alert for alert in Alert.objects.filter(ended_at__isnull=True)}
    for check in checks:
        if check.name not in results:
            continue
        holding = {finding.condition: finding for finding in results[check.name]}
        for condition, finding in holding.items():
            if condition in open_by_condition:
                continue
            raised = alert_raise(
                condition=condition,
                severity=finding.severity,
                title=finding.title,
                detail=finding.detail,
                readings=finding.readings,
                started_at=now,
            )
            if raised is not None:
                evaluation.raised.append(condition)
        for condition, alert in open_by_condition.items():
            if condition in holding or not check.owns_condition(condition):
                continue
            if alert_clear(alert_id=alert.pk, reason=f"{CLEARED_BY_EVALUATOR}: the condition ended", ended_at=now):
                evaluation.cleared.append(condition)
    _health_changes(states, now=now, database_up=True)
    _state_set(LAST_EVALUATION_KEY, now.timestamp())
    return evaluation


def last_evaluation_at() -> float | None:
    """Unix time of the last evaluation that reached the database (any process)."""
    return _state_get(LAST_EVALUATION_KEY)
