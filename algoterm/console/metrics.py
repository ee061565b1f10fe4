"""Prometheus metrics read at scrape time, and the operational readings behind them and behind
`GET /api/health/components`.

Everything here is read when Prometheus scrapes, from the stores every process shares (the database, Redis), so any
web process answers a scrape with the same numbers: orders placed and rejected today per broker, RMS breaches today,
open WebSocket connections (each live web process's counts in Redis), feed lag (the newest index quote in the quote
cache), Celery queue depth (the broker's Redis lists) and broker accounts with an open circuit. Request latency and
the WebSocket counts are recorded on the ground floor (`algoterm.metrics`), into the registry exposed here; with
several web processes (PROMETHEUS_MULTIPROC_DIR) the latency is summed over all of them.

Families (all prefixed `algoterm_`):
    http_request_duration_seconds{method,route,status}   histogram; `route` is the URL name, `status` 2xx..5xx
    orders_placed_today{broker}, orders_rejected_today{broker}   gauges; today is the IST trading day
    rms_breaches_today{reason}                            gauge
    websocket_connections{endpoint}                       gauge (events, market_data, ops), live processes only
    feed_lag_seconds, feed_last_tick_timestamp_seconds    gauges; absent until the feed has quoted an index
    market_open                                           gauge, 1 during the NSE session
    celery_queue_length{queue}                            gauge; absent in embedded mode (no broker lists)
    broker_circuits_open{broker}, broker_accounts_connected{broker}   gauges
    metrics_reading_ok{reading}                           gauge, 0 when a scrape-time reading failed
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from algoterm.console.dashboard import feed_figures
from algoterm.health import ComponentHealth, platform_health
from algoterm.metrics import REGISTRY, multiprocess_dir, recorded_per_process, ws_connections
from brokers.models import Broker
from brokers.protection import CircuitBreaker
from brokers.selectors import broker_account_platform_connected
from marketdata.calendar import is_open
from orders.selectors import order_platform_counts_by_broker
from rms.selectors import rms_platform_breaches_by_reason
from rms.services import IST, STATE_AFTER, trading_day

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8


# --- feed lag ---------------------------------------------------------------------------------------------------

# Every feed quotes these indices (the simulated feed, and broker feeds by default); the newest of their quotes is
# when the feed last delivered anything.
FEED_STALE_AFTER_SECONDS = 30.0


def feed_last_tick_at() -> datetime | None:
    """The newest quote in the cache, as the operators' dashboard measures it: one definition of feed lag."""
    return feed_figures(now=timezone.now()).newest


def market_open_now() -> bool:
    return is_open(timezone.now(), simulated=True)


# --- Celery queue depth -----------------------------------------------------------------------------------------

_KOMBU_PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport keeps priorities 3, 6, 9 in lists `<queue>␆␖<n>`
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


def celery_queue_names() -> list[str]:
    # The settings the Celery app is configured from (namespace CELERY): the console reads them, not the app.
    names = {settings.CELERY_TASK_DEFAULT_QUEUE}
    names.update(queue.name for queue in settings.CELERY_TASK_QUEUES or ())
    return sorted(names)


def celery_queue_lengths() -> dict[str, int] | None:
    """Messages waiting per queue (Redis LLEN under the broker's global_keyprefix); None in embedded mode, whose
    in-memory broker has no lists to read."""
    if settings.EMBEDDED:
        return None
    prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
    names = celery_queue_names()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(f"{prefix}{name}")
            for step in _KOMBU_PRIORITY_STEPS:
                pipe.llen(f"{prefix}{name}{_KOMBU_PRIORITY_SEPARATOR}{step}")
        lengths = pipe.execute()
    finally:
        client.close()
    per_queue = 1 + len(_KOMBU_PRIORITY_STEPS)
    return {name: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, name in enumerate(names)}


# --- broker circuits --------------------------------------------------------------------------------------------


def broker_circuits() -> dict[str, dict[str, int]]:
    """Per broker: connected accounts, and how many of them have their circuit breaker open right now."""
    result = {broker: {"connected": 0, "circuits_open": 0} for broker in Broker.values}
    accounts = broker_account_platform_connected()
    keys = {f"{CircuitBreaker(pk).prefix}:open_until": broker for pk, broker in accounts}
    found: dict[str, Any] = {}
    key_list = list(keys)
    for start in range(0, len(key_list), 500):
        found.update(cache.get_many(key_list[start : start + 500]))
    now = time.time()
    for _, broker in accounts:
        result.setdefault(broker, {"connected": 0, "circuits_open": 0})["connected"] += 1
    for key, open_until in found.items():
        if open_until is not None and open_until > now:
            result[keys[key]]["circuits_open"] += 1
    return result


# --- today's orders and breaches --------------------------------------------------------------------------------


def _today_start() -> datetime:
    return datetime.combine(trading_day(), datetime.min.time(), tzinfo=IST)


def orders_today() -> dict[str, dict[str, int]]:
    """Per broker: orders created today (every one sent or refused by the broker, rejected included) and those
    the broker rejected. Orders the risk check refused never become orders, so they are in neither."""
    result = {broker: {"placed": 0, "rejected": 0} for broker in Broker.values}
    result.update(order_platform_counts_by_broker(since=_today_start()))
    return result


def rms_breaches_today() -> dict[str, int]:
    by_reason = rms_platform_breaches_by_reason(start=_today_start())
    return {reason or "unknown": count for reason, count in by_reason.items()}


# --- the scrape-time collector ----------------------------------------------------------------------------------


def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class ScrapeReadings(Collector):
    """Families produced at scrape time, reading by reading (`readings()`: name -> producer). A reading that fails is
    left out and flagged 0 in the family `ok_family`, so one broken dependency never costs the whole scrape; nothing
    is read at registration (no database access at import)."""

    ok_family = ""
    ok_help = ""

    def readings(self) -> Iterable[tuple[str, Callable[[], Iterable[Metric]]]]:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        ok = gauge(self.ok_family, self.ok_help, ["reading"])
        for reading, produce in self.readings():
            try:
                families = list(produce())
            except Exception:
                logger.warning("%s: reading %s failed", self.ok_family, reading, exc_info=True)
                ok.add_metric([reading], 0)
                continue
            ok.add_metric([reading], 1)
            yield from families
        yield ok

    def describe(self) -> Iterable[Metric]:
        return []


class SharedStateCollector(ScrapeReadings):
    """Reads the shared stores at each scrape."""

    ok_family = "algoterm_metrics_reading_ok"
    ok_help = "1 when this scrape-time reading succeeded."

    def readings(self) -> Iterable[tuple[str, Callable[[], Iterable[Metric]]]]:
        return (
            ("orders", self._orders),
            ("rms", self._rms),
            ("websockets", self._websockets),
            ("feed", self._feed),
            ("celery", self._celery),
            ("brokers", self._brokers),
        )

    def _orders(self) -> Iterable[Metric]:
        placed = gauge(
            "algoterm_orders_placed_today",
            "Orders created today (IST trading day) per broker, broker rejections included.",
            ["broker"],
        )
        rejected = gauge("algoterm_orders_rejected_today", "Orders the broker rejected today, per broker.", ["broker"])
        for broker, counts in sorted(orders_today().items()):
            placed.add_metric([broker], counts["placed"])
            rejected.add_metric([broker], counts["rejected"])
        return [placed, rejected]

    def _rms(self) -> Iterable[Metric]:
        breaches = gauge("algoterm_rms_breaches_today", "RMS limit breaches today, per reason.", ["reason"])
        counts = {**dict.fromkeys(STATE_AFTER, 0), **rms_breaches_today()}
        for reason, count in sorted(counts.items()):
            breaches.add_metric([reason], count)
        return [breaches]

    def _websockets(self) -> Iterable[Metric]:
        connections = gauge(
            "algoterm_websocket_connections", "Open WebSocket connections across web processes.", ["endpoint"]
        )
        for endpoint, count in ws_connections().items():
            connections.add_metric([endpoint], count)
        return [connections]

    def _feed(self) -> Iterable[Metric]:
        families = [gauge("algoterm_market_open", "1 while the NSE normal session is on.")]
        families[0].add_metric([], 1 if market_open_now() else 0)
        last = feed_last_tick_at()
        if last is not None:
            lag = gauge("algoterm_feed_lag_seconds", "Seconds since the newest quote in the quote cache.")
            lag.add_metric([], max(0.0, timezone.now().timestamp() - last.timestamp()))
            stamp = gauge(
                "algoterm_feed_last_tick_timestamp_seconds", "Unix time of the newest quote in the quote cache."
            )
            stamp.add_metric([], last.timestamp())
            families += [lag, stamp]
        return families

    def _celery(self) -> Iterable[Metric]:
        lengths = celery_queue_lengths()
        if lengths is None:
            return []
        queue = gauge("algoterm_celery_queue_length", "Celery messages waiting in the broker, per queue.", ["queue"])
        for name, length in lengths.items():
            queue.add_metric([name], length)
        return [queue]

    def _brokers(self) -> Iterable[Metric]:
        circuits = gauge(
            "algoterm_broker_circuits_open", "Connected broker accounts whose circuit breaker is open.", ["broker"]
        )
        connected = gauge("algoterm_broker_accounts_connected", "Connected broker accounts.", ["broker"])
        for broker, counts in sorted(broker_circuits().items()):
            circuits.add_metric([broker], counts["circuits_open"])
            connected.add_metric([broker], counts["connected"])
        return [circuits, connected]


REGISTRY.register(SharedStateCollector())


class _SharedFamilies(Collector):
    """The families of REGISTRY that every process reads alike at scrape time (this module's, and any other
    collector registered there), without the ones each process records for itself."""

    def collect(self) -> Iterable[Metric]:
        return (family for family in REGISTRY.collect() if not recorded_per_process(family.name))

    def describe(self) -> Iterable[Metric]:
        return []


def exposition_registry() -> CollectorRegistry:
    """REGISTRY itself in a single web process; with PROMETHEUS_MULTIPROC_DIR, a registry built for this scrape:
    request latency summed over the files of every web process that wrote one (a process that exited keeps its
    counts, as a counter must), plus the scrape-time families once. Per-process families (CPU, memory, file
    descriptors) are left out there: the answer would describe whichever process took the scrape."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    registry.register(_SharedFamilies())
    return registry


def exposition() -> bytes:
    """The Prometheus text format (version 0.0.4) of every family."""
    return generate_latest(exposition_registry())


# --- component health: /api/health's checks plus the feed, the queue and the brokers -----------------------------


def check_feed() -> ComponentHealth:
    """Not required: outside market hours a healthy feed has nothing to say, so staleness then is no fault."""
    try:
        last = feed_last_tick_at()
        market_open = market_open_now()
    except Exception as error:
        return ComponentHealth("down", None, required=False, detail=type(error).__name__)
    info: dict[str, Any] = {"market_open": market_open}
    if last is not None:
        lag = round(max(0.0, timezone.now().timestamp() - last.timestamp()), 1)
        info.update(last_tick_at=last.isoformat(), lag_s=lag)
        if lag <= FEED_STALE_AFTER_SECONDS:
            return ComponentHealth("up", None, required=False, info=info)
    if not market_open:
        return ComponentHealth("up", None, required=False, detail="market closed; no ticks expected", info=info)
    detail = "no quote yet" if last is None else f"no quote for over {FEED_STALE_AFTER_SECONDS:.0f}s"
    return ComponentHealth("down", None, required=False, detail=detail, info=info)


def check_queue() -> ComponentHealth:
    started = time.perf_counter()
    try:
        lengths = celery_queue_lengths()
    except Exception as error:
        return ComponentHealth("down", None, required=False, detail=type(error).__name__)
    latency = round((time.perf_counter() - started) * 1000, 2)
    if lengths is None:
        return ComponentHealth("up", 0.0, required=False, info={"mode": "in-process"})
    return ComponentHealth("up", latency, required=False, info={"queues": lengths})


def check_brokers() -> ComponentHealth:
    """Down when some broker has connected accounts and every one of them has its circuit open: that looks like
    the broker failing, not one account's trouble. Not required: the platform serves everything else."""
    try:
        circuits = broker_circuits()
    except Exception as error:
        return ComponentHealth("down", None, required=False, detail=type(error).__name__)
    failing = sorted(
        broker
        for broker, counts in circuits.items()
        if counts["connected"] and counts["circuits_open"] == counts["connected"]
    )
    detail = f"every connected account's circuit is open: {', '.join(failing)}" if failing else ""
    return ComponentHealth("down" if failing else "up", None, required=False, detail=detail, info=circuits)


def components_health() -> dict[str, ComponentHealth]:
    components = platform_health()  # database, redis, workers, scheduler (beat heartbeat)
    redis_up = components["redis"].is_up
    components["queue"] = check_queue() if redis_up else ComponentHealth("down", None, required=False)
    components["feed"] = check_feed() if redis_up else ComponentHealth("down", None, required=False)
    components["brokers"] = check_brokers() if redis_up else ComponentHealth("down", None, required=False)
    return components


# --- who may read /api/metrics and /api/health/components ---------------------------------------------------------


def is_loopback(ip: str | None) -> bool:
    try:
        return ip is not None and ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
