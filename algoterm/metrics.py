"""Process instrumentation the lower floors feed: the Prometheus registry, request latency, open WebSocket counts.

Request latency is observed in each web process by `RequestMetricsMiddleware`. With several web processes behind one
port (distributed `serve`), PROMETHEUS_MULTIPROC_DIR names a directory every process writes its samples to, and the
exposition sums them (prometheus_client's multiprocess mode); without it the registry is this process's alone.
Open WebSocket connections are counted by each web process for itself and published to Redis under a key that
lives only while the process refreshes it, so a process that dies stops being counted (`ws_connections`). The
scrape-time readings over the apps' tables, the exposition and component health live in the operator console
(`algoterm.console.metrics`), which registers its collector on `REGISTRY`.

Families recorded here (prefixed `algoterm_`):
    http_request_duration_seconds{method,route,status}   histogram; `route` is the URL name, `status` 2xx..5xx
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector

from algoterm.redis_client import redis_client

logger = logging.getLogger(__name__)

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory the web processes share their samples through, when `serve` (or the operator) set one.
    prometheus_client reads the same variable when it is first imported, to decide where values live."""
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


REGISTRY = CollectorRegistry(auto_describe=True)
if multiprocess_dir() is None:
    # The process's own CPU, memory and file descriptors: with several web processes they would describe whichever
    # one answered the scrape, and prometheus_client cannot add them up, so multiprocess mode leaves them out.
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)

# --- request latency ---------------------------------------------------------------------------------------------

# Broker calls may take the broker timeout (7 s) plus order pacing (up to 10 s): the top buckets see them.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_LATENCY = Histogram(
    "algoterm_http_request_duration_seconds",
    "HTTP request latency by method, route (URL name) and status class, across the web processes.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Families each process records for itself: in multiprocess mode they come from every process's files instead.
RECORDED_PER_PROCESS = frozenset(family.name for family in REQUEST_LATENCY.describe())
_PER_PROCESS_PREFIXES = ("process_", "python_")  # ProcessCollector's and PlatformCollector's families


def recorded_per_process(family_name: str) -> bool:
    return family_name in RECORDED_PER_PROCESS or family_name.startswith(_PER_PROCESS_PREFIXES)


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


# --- WebSocket connections: each web process counts its own and publishes them while it lives ------------------

WS_ENDPOINTS = {"/ws/events": "events", "/ws/market-data": "market_data", "/ws/ops": "ops"}

# This process's open connections per endpoint, per event loop serving them (a web process has one). A loop that
# was closed serves no socket, whatever its consumers never got to uncount.
_loop_counts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, int]] = weakref.WeakKeyDictionary()
_snapshot_numbers = itertools.count(1)
_refresher: asyncio.Task | None = None
_process: tuple[int, str] | None = None  # (pid, process id) of the process the counts belong to

# Writes one process's snapshot unless a newer one is there already (snapshots are written from threads, so an older
# one may arrive last). KEYS: the process's hash, the set of processes; ARGV: snapshot number, TTL in ms, process
# id, then endpoint/count pairs. A process with nothing open leaves the set, and a tombstone of its number expires.
_PUBLISH_SCRIPT = """
local stored = tonumber(redis.call('HGET', KEYS[1], '_n') or '0')
if stored > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
local total = 0
for i = 4, #ARGV, 2 do
  local count = tonumber(ARGV[i + 1])
  if count > 0 then
    redis.call('HSET', KEYS[1], ARGV[i], count)
    total = total + count
  end
end
redis.call('HSET', KEYS[1], '_n', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if total > 0 then
  redis.call('SADD', KEYS[2], ARGV[3])
else
  redis.call('SREM', KEYS[2], ARGV[3])
end
return 1
"""

# Sums the counts of the processes whose hash still exists, and takes the others out of the set: their liveness
# expired (the process died, or hung longer than the TTL). KEYS: the set; ARGV: the prefix of the processes' hashes.
_READ_SCRIPT = """
local totals = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local counts = redis.call('HGETALL', ARGV[1] .. id)
  if #counts == 0 then
    redis.call('SREM', KEYS[1], id)
  else
    for i = 1, #counts, 2 do
      if counts[i] ~= '_n' then totals[counts[i]] = (totals[counts[i]] or 0) + tonumber(counts[i + 1]) end
    end
  end
end
local flat = {}
for endpoint, count in pairs(totals) do
  flat[#flat + 1] = endpoint
  flat[#flat + 1] = count
end
return flat
"""


def ws_endpoint(path: str) -> str:
    return WS_ENDPOINTS.get(path.rstrip("/"), "other")


def ws_process_id() -> str:
    """hostname:pid:start time, so a pid the system reuses is another process. A forked child starts uncounted."""
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        if _process is not None:
            _loop_counts.clear()  # the parent's connections are the parent's
        _process = (pid, f"{socket.gethostname()}:{pid}:{int(time.time())}")
    return _process[1]


def _local_counts() -> dict[str, int]:
    totals: dict[str, int] = {}
    for loop, counts in list(_loop_counts.items()):
        if not loop.is_closed():
            for endpoint, count in counts.items():
                totals[endpoint] = totals.get(endpoint, 0) + count
    return totals


def _keys() -> tuple[str, str]:
    # In the cache's namespace (its prefix and version), used with a Redis client of our own: hashes and sets.
    return cache.make_key("metrics:ws:processes"), cache.make_key("metrics:ws:process:")


@lru_cache(maxsize=2)
def _script(url: str, source: str):
    return redis_client(url).register_script(source)


def _ttl_seconds() -> float:
    return max(0.1, float(settings.WS_GAUGE_TTL_SECONDS))


def _publish_now(number: int, process_id: str, counts: dict[str, int]) -> None:
    processes, process_prefix = _keys()
    args: list[str | int] = [number, int(_ttl_seconds() * 1000), process_id]
    for endpoint, count in sorted(counts.items()):
        args += [endpoint, count]
    _script(settings.REDIS_URL, _PUBLISH_SCRIPT)(keys=[process_prefix + process_id, processes], args=args)


async def _publish() -> None:
    """This process's counts as they are now, in Redis; a failure is logged and the next refresh repairs it."""
    snapshot = (next(_snapshot_numbers), ws_process_id(), _local_counts())
    try:
        await asyncio.to_thread(_publish_now, *snapshot)
    except Exception:  # a count is not worth a connection
        logger.warning("publishing this process's WebSocket counts failed", exc_info=True)


async def _refresh_forever() -> None:
    while True:
        await asyncio.sleep(_ttl_seconds() / 3)
        await _publish()


def _refresher_start() -> None:
    global _refresher
    loop = asyncio.get_running_loop()
    if _refresher is None or _refresher.done() or _refresher.get_loop() is not loop:
        _refresher = loop.create_task(_refresh_forever(), name="ws-gauge-refresh")


def _refresher_stop() -> None:
    global _refresher
    if _refresher is not None and not _refresher.done() and not _refresher.get_loop().is_closed():
        _refresher.cancel()
    _refresher = None


async def ws_connection_opened(endpoint: str) -> None:
    ws_process_id()
    counts = _loop_counts.setdefault(asyncio.get_running_loop(), {})
    counts[endpoint] = counts.get(endpoint, 0) + 1
    if settings.EMBEDDED:
        return  # one process: its own counts are the whole count
    _refresher_start()
    await _publish()


async def ws_connection_closed(endpoint: str) -> None:
    ws_process_id()
    counts = _loop_counts.get(asyncio.get_running_loop(), {})
    if counts.get(endpoint, 0) <= 0:
        return  # never counted here
    counts[endpoint] -= 1
    if settings.EMBEDDED:
        return
    if not any(_local_counts().values()):
        _refresher_stop()  # nothing to keep alive: the last snapshot takes this process out
    await _publish()


def ws_connections() -> dict[str, int]:
    """Open connections per endpoint across the web processes that are alive: a process that died holding
    connections stops being counted once its liveness (WS_GAUGE_TTL_SECONDS) runs out."""
    endpoints = sorted(set(WS_ENDPOINTS.values()))
    if settings.EMBEDDED:
        counts = _local_counts()
    else:
        processes, process_prefix = _keys()
        flat = _script(settings.REDIS_URL, _READ_SCRIPT)(keys=[processes], args=[process_prefix])
        counts = {
            (name.decode() if isinstance(name, bytes) else name): int(count)
            for name, count in zip(flat[::2], flat[1::2], strict=True)
        }
    return {endpoint: max(0, counts.get(endpoint, 0)) for endpoint in endpoints}
