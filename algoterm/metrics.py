"""Process instrumentation the lower floors feed: the Prometheus registry, request latency, open WebSocket counts.

Request latency is observed in each web process by `RequestMetricsMiddleware`; open WebSocket connections are a
counter in the shared cache that the consumers keep (`ws_connection_opened` / `ws_connection_closed`). The
scrape-time readings over the apps' tables, the exposition and component health live in the operator console
(`algoterm.console.metrics`), which registers its collector on `REGISTRY`.

Families recorded here (prefixed `algoterm_`):
    http_request_duration_seconds{method,route,status}   histogram; `route` is the URL name, `status` 2xx..5xx
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# --- request latency ---------------------------------------------------------------------------------------------

# Broker calls may take the broker timeout (7 s) plus order pacing (up to 10 s): the top buckets see them.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_LATENCY = Histogram(
    "algoterm_http_request_duration_seconds",
    "HTTP request latency by method, route (URL name) and status class, in this web process.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: HttpRequest) -> str:
    """The matched route's name, never the raw path: ids in paths would make a series per order."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unresolved"  # static files, or a request answered before URL resolution
    if not match.url_name:
        return "unnamed"  # e.g. the JSON 404 catch-all under /api/
    return f"{match.namespace}:{match.url_name}" if match.namespace else match.url_name


def request_observe(*, request: HttpRequest, status_code: int, seconds: float) -> None:
    method = request.method if request.method in _KNOWN_METHODS else "OTHER"
    REQUEST_LATENCY.labels(method=method, route=route_label(request), status=f"{status_code // 100}xx").observe(seconds)


class RequestMetricsMiddleware:
    """First in MIDDLEWARE, so the latency includes every other middleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        try:
            request_observe(request=request, status_code=response.status_code, seconds=time.perf_counter() - started)
        except Exception:  # metrics must never break a response
            logger.exception("recording request metrics failed")
        return response


# --- WebSocket connections: a counter in the shared cache, kept by the consumers ----------------------------------

WS_ENDPOINTS = {"/ws/events": "events", "/ws/market-data": "market_data"}
_WS_KEY = "metrics:ws-connections:{}"


def ws_endpoint(path: str) -> str:
    return WS_ENDPOINTS.get(path.rstrip("/"), "other")


async def ws_connection_opened(endpoint: str) -> None:
    key = _WS_KEY.format(endpoint)
    try:
        await cache.aadd(key, 0, timeout=None)
        await cache.aincr(key)
    except Exception:  # a count is not worth a connection
        logger.warning("counting a WebSocket connection failed", exc_info=True)


async def ws_connection_closed(endpoint: str) -> None:
    try:
        await cache.adecr(_WS_KEY.format(endpoint))
    except ValueError:
        pass  # the counter was lost (cache flushed): nothing to take back
    except Exception:
        logger.warning("uncounting a WebSocket connection failed", exc_info=True)


def ws_connections() -> dict[str, int]:
    """Open connections per endpoint across every web process. A process that dies holding connections leaves
    them counted until the counter is reset (deleting the keys), so treat it as a gauge of trends."""
    endpoints = sorted(set(WS_ENDPOINTS.values()))
    found = cache.get_many([_WS_KEY.format(endpoint) for endpoint in endpoints])
    return {endpoint: max(0, int(found.get(_WS_KEY.format(endpoint), 0))) for endpoint in endpoints}
