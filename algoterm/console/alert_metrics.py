"""Prometheus gauges for the conditions the platform alerts on, read at scrape time with the alert evaluator's own
readings and thresholds (`algoterm.console.alerts`), so a Prometheus rule and an in-platform alert mean one thing.
The rules that use them ship in `docs/prometheus-alerts.yml`.

Families (all prefixed `algoterm_`), served beside `algoterm.console.metrics`' on the same registry:
    component_up{component}                  gauge; database, redis: 1 when the check answers
    celery_workers{queue}                    gauge; workers consuming each queue of ALERT_WORKER_QUEUES
    beat_heartbeat_age_seconds               gauge; +Inf when beat's heartbeat never ran
    feed_stale                               gauge; 1 when the market is open and the feed is stale
    broker_circuits_tripped{broker}          gauge; connected accounts whose circuit opened and is not closed again
    orders_reconcile_backlog                 gauge; orders unsettled past ALERT_RECONCILE_BACKLOG_SECONDS
    orders_unknown_stale                     gauge; orders UNKNOWN past ALERT_UNKNOWN_ORDER_SECONDS
    webhooks_refused_recent{source}          gauge; refused webhook calls in ALERT_WEBHOOK_WINDOW_MINUTES
    alerts_open{condition,severity}          gauge; the platform's open alerts
    alerts_last_evaluation_timestamp_seconds gauge; when the evaluator last ran (0: never)
    alert_reading_ok{reading}                gauge; 0 when a reading above failed at this scrape
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from django.conf import settings
from django.utils import timezone
from prometheus_client.core import Metric

from algoterm.console import alerts
from algoterm.console.dashboard import alerts_open
from algoterm.console.metrics import ScrapeReadings, gauge
from algoterm.health import check_database, check_redis
from algoterm.metrics import REGISTRY

logger = logging.getLogger(__name__)


class AlertConditionsCollector(ScrapeReadings):
    """One family (or two) per reading; a database outage still serves `component_up` and the workers."""

    ok_family = "algoterm_alert_reading_ok"
    ok_help = "1 when this alert reading succeeded at this scrape."

    def readings(self) -> Iterable[tuple[str, Callable[[], Iterable[Metric]]]]:
        return (
            ("components", self._components),
            ("workers", self._workers),
            ("beat", self._beat),
            ("feed", self._feed),
            ("brokers", self._brokers),
            ("orders", self._orders),
            ("webhooks", self._webhooks),
            ("alerts", self._alerts),
        )

    def _components(self) -> Iterable[Metric]:
        up = gauge("algoterm_component_up", "1 when the component's health check answers.", ["component"])
        up.add_metric(["database"], int(check_database().is_up))
        up.add_metric(["redis"], int(check_redis().is_up))
        return [up]

    def _workers(self) -> Iterable[Metric]:
        workers = gauge("algoterm_celery_workers", "Celery workers consuming each queue.", ["queue"])
        for queue, count in sorted(alerts.workers_per_queue().items()):
            workers.add_metric([queue], count)
        return [workers]

    def _beat(self) -> Iterable[Metric]:
        age = alerts.beat_heartbeat_age()
        family = gauge(
            "algoterm_beat_heartbeat_age_seconds", "Seconds since beat's heartbeat last ran on a worker (+Inf: never)."
        )
        family.add_metric([], math.inf if age is None else age)
        return [family]

    def _feed(self) -> Iterable[Metric]:
        stale = gauge(
            "algoterm_feed_stale",
            f"1 when the market is open and no quote is newer than {settings.ALERT_FEED_STALE_SECONDS:g} s "
            "(the session's open counting as one).",
        )
        stale.add_metric([], int(alerts.feed_staleness(now=timezone.now()).stale))
        return [stale]

    def _brokers(self) -> Iterable[Metric]:
        tripped = gauge(
            "algoterm_broker_circuits_tripped",
            "Connected accounts whose circuit breaker opened and no successful call has closed yet.",
            ["broker"],
        )
        for broker, figures in sorted(alerts.broker_circuits_tripped().items()):
            tripped.add_metric([broker], figures["tripped"])
        return [tripped]

    def _orders(self) -> Iterable[Metric]:
        now = timezone.now()
        backlog = gauge(
            "algoterm_orders_reconcile_backlog",
            f"Orders unsettled (or waiting for exits) for over {settings.ALERT_RECONCILE_BACKLOG_SECONDS:g} s.",
        )
        backlog.add_metric([], alerts.reconcile_backlog(now=now)["count"])
        unknown = gauge(
            "algoterm_orders_unknown_stale",
            f"Orders in UNKNOWN status for over {settings.ALERT_UNKNOWN_ORDER_SECONDS:g} s.",
        )
        unknown.add_metric([], alerts.unknown_orders(now=now)["count"])
        return [backlog, unknown]

    def _webhooks(self) -> Iterable[Metric]:
        refused = gauge(
            "algoterm_webhooks_refused_recent",
            f"Webhook calls refused in the last {settings.ALERT_WEBHOOK_WINDOW_MINUTES:g} minutes, by source "
            "(billing: Razorpay signatures that do not match; strategies: TradingView and ChartInk calls).",
            ["source"],
        )
        for source, count in sorted(alerts.webhook_refusals(now=timezone.now()).items()):
            refused.add_metric([source], count)
        return [refused]

    def _alerts(self) -> Iterable[Metric]:
        open_alerts = gauge("algoterm_alerts_open", "The platform's open alerts.", ["condition", "severity"])
        for alert in alerts_open():
            open_alerts.add_metric([alert.condition, alert.severity], 1)
        last = gauge(
            "algoterm_alerts_last_evaluation_timestamp_seconds",
            "Unix time the alert evaluator last ran (0: never); a stale value means beat or the workers stopped.",
        )
        last.add_metric([], alerts.last_evaluation_at() or 0)
        return [open_alerts, last]


REGISTRY.register(AlertConditionsCollector())
