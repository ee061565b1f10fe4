"""A small HTTP framework for broker simulators: routing, request parsing, per-client rate windows, fault
injection, and control routes (`/__sim__/...`) that tests and the demo use to move prices or break the broker.

Each simulator speaks one broker's wire protocol over the shared simulated exchange (`brokers.exchange`), so the
brokers' real SDKs can be pointed at it. Simulators listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.db import close_old_connections

from brokers.prices import quote_at, quote_publish


class BadRequestBody(Exception):
    pass


class HeaderMap(dict):
    """Case-insensitive header lookup."""

    def __init__(self, items) -> None:
        super().__init__((key.lower(), value) for key, value in items)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class SimRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: HeaderMap
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as error:
            raise BadRequestBody("body is not JSON") from error

    def form(self) -> dict[str, str]:
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {key: values[0] for key, values in parsed.items()}


@dataclass
class SimResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> SimResponse:
        return cls(status, json.dumps(data, default=_json_default).encode(), "application/json", headers or {})

    @classmethod
    def html(cls, text: str, status: int = 200) -> SimResponse:
        return cls(status, text.encode(), "text/html; charset=utf-8")

    @classmethod
    def redirect(cls, location: str) -> SimResponse:
        return cls(302, b"", "text/plain", {"Location": location})


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


class RateWindows:
    """Sliding windows per key: e.g. [(10, 1.0), (400, 60.0)] allows 10 a second and 400 a minute."""

    def __init__(self, limits: list[tuple[int, float]]) -> None:
        self.limits = limits
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        longest = max(seconds for _, seconds in self.limits)
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - longest:
                hits.popleft()
            for count, seconds in self.limits:
                if sum(1 for hit in hits if hit > now - seconds) >= count:
                    return False
            hits.append(now)
            return True


@dataclass
class Fault:
    mode: str  # "error" (HTTP 5xx in the broker's envelope), "garbage" (200 with an HTML body), "delay"
    remaining: int
    status: int = 500
    seconds: float = 0.0


Handler = Callable[..., SimResponse]


class SimulatorApp:
    """Subclasses register routes in `setup_routes` and say how the broker spells an error."""

    name = "simulator"

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._faults: deque[Fault] = deque()
        self._fault_lock = threading.Lock()
        self.base_url = ""
        self.requests_served = 0  # broker requests (not control routes) that reached this simulator
        self.setup_routes()

    # --- subclass hooks -----------------------------------------------------------------------------------------

    def setup_routes(self) -> None:
        raise NotImplementedError

    def error_response(self, status: int, message: str, kind: str = "") -> SimResponse:
        """The broker's own error envelope."""
        raise NotImplementedError

    def on_start(self) -> None:
        """A server starts serving this app: start whatever runs beside the routes."""

    def on_stop(self) -> None:
        """The server stopped: undo `on_start`."""

    # --- routing ----------------------------------------------------------------------------------------------

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def dispatch(self, request: SimRequest) -> SimResponse:
        if request.path.startswith("/__sim__/"):
            return self._control(request)
        with self._fault_lock:
            self.requests_served += 1
        fault = self._next_fault()
        if fault is not None:
            if fault.mode == "error":
                return self.error_response(fault.status, "Simulated broker failure.", "server")
            if fault.mode == "garbage":
                return SimResponse(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
            time.sleep(fault.seconds)
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if not match:
                continue
            path_matched = True
            if method == request.method:
                try:
                    return handler(request, **match.groupdict())
                except BadRequestBody as error:
                    return self.error_response(400, str(error), "input")
        if path_matched:
            return self.error_response(405, "Method not allowed.", "input")
        return self.error_response(404, "Route not found.", "input")

    # --- faults and control -----------------------------------------------------------------------------------

    def inject_fault(self, mode: str, *, count: int = 1, status: int = 500, seconds: float = 0.0) -> None:
        with self._fault_lock:
            self._faults.append(Fault(mode=mode, remaining=count, status=status, seconds=seconds))

    def _next_fault(self) -> Fault | None:
        with self._fault_lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.popleft()
            return fault

    def expire_sessions(self) -> None:
        """Control route: every session token this simulator issued stops working (the broker's daily logout)."""

    def _control(self, request: SimRequest) -> SimResponse:
        data = request.json() if request.body else {}
        if request.path == "/__sim__/quote" and request.method == "POST":
            fills = quote_publish(quote_at(data["symbol"], data["last_price"], depth=int(data.get("depth", 1000))))
            return SimResponse.json({"fills": fills})
        if request.path == "/__sim__/fault" and request.method == "POST":
            self.inject_fault(
                data.get("mode", "error"),
                count=int(data.get("count", 1)),
                status=int(data.get("status", 500)),
                seconds=float(data.get("seconds", 0)),
            )
            return SimResponse.json({"ok": True})
        if request.path == "/__sim__/expire-sessions" and request.method == "POST":
            self.expire_sessions()
            return SimResponse.json({"ok": True})
        return SimResponse.json({"error": "unknown control route"}, status=404)


class _RequestHandler(BaseHTTPRequestHandler):
    app: SimulatorApp
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; without this, keep-alive clients stall on delayed ACKs.
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = SimRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=HeaderMap(self.headers.items()),
            body=self.rfile.read(length) if length else b"",
        )
        close_old_connections()
        try:
            response = self.app.dispatch(request)
        except Exception as error:  # a simulator bug must look like a broker's 500, not hang the client
            response = self.app.error_response(500, f"simulator error: {type(error).__name__}: {error}", "server")
        finally:
            close_old_connections()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib signature)
        return  # request lines would carry tokens in query strings


class SimulatorServer:
    """Serves a SimulatorApp on 127.0.0.1 in a background thread (tests) or the foreground (runsimulator)."""

    def __init__(self, app: SimulatorApp, *, port: int = 0) -> None:
        handler = type("Handler", (_RequestHandler,), {"app": app})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.app = app
        app.base_url = self.url
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SimulatorServer:
        self.app.on_start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"{self.app.name}-sim", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.app.on_start()
        try:
            self.httpd.serve_forever()
        finally:
            self.app.on_stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.app.on_stop()
