"""Keeps a set of child processes running: `manage.py serve` runs the distributed stack under it.

A child that exits is started again after an exponential backoff, because web and worker processes hold no state
and most deaths are transient (a dependency restarting, a leak); the processes the dead child started (a web
server's workers, a Celery worker's pool) are stopped with it, so its replacement starts clean. A child that keeps
dying is in a crash loop that restarting cannot fix (a bad setting, a schema the code does not match), so the
supervisor stops the stack and says why. Ports a child binds are checked before each start: a port held by another
program is one clear message, never a crash loop.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

logger = logging.getLogger(__name__)

# Beyond this the delay is capped anyway; the bound keeps 2 ** failures a small number.
_MAX_BACKOFF_EXPONENT = 30


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 1.0
    max_delay: float = 30.0
    # A child that stayed up this long had recovered: its next death starts the backoff again from first_delay.
    stable_after: float = 60.0
    # More than max_restarts restarts of one child within window seconds is a crash loop.
    max_restarts: int = 5
    window: float = 120.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** min(failures, _MAX_BACKOFF_EXPONENT))


@dataclass(frozen=True)
class ChildSpec:
    name: str
    command: Sequence[str]
    # (host, port) pairs the child listens on, checked free before each start.
    ports: tuple[tuple[str, int], ...] = ()
    # A required child that cannot be kept running stops the stack; any other is left stopped and the rest runs on.
    required: bool = True


class EventKind(StrEnum):
    RESTARTING = "restarting"
    GIVEN_UP = "given_up"
    STACK_STOPPING = "stack_stopping"


@dataclass(frozen=True)
class ChildEvent:
    """What operators are alerted of."""

    kind: EventKind
    child: str
    message: str
    restarts_in_window: int = 0
    delay: float | None = None


class SupervisorError(Exception):
    """The stack cannot be kept running; the message says why in one line."""

    def __init__(self, message: str, *, child: str = "") -> None:
        super().__init__(message)
        self.child = child


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port now, or None when it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The servers set SO_REUSEADDR too: connections of a previous run in TIME_WAIT do not block them, nor us.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use by another program"
            return f"cannot listen on {host}:{port} ({error.strerror or error})"
    return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    # Consecutive short-lived runs: the backoff's exponent.
    failures: int = 0
    restarted_at: deque[float] = field(default_factory=deque)
    given_up: bool = False


class _Alerts:
    """Hands events to the alert callback on a thread of its own, so a slow or failing alert (a database outage)
    never delays a restart nor stops the supervisor."""

    _CLOSE = object()

    def __init__(self, send: Callable[[ChildEvent], None] | None) -> None:
        self._send = send
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if send is not None:
            self._thread = threading.Thread(target=self._deliver, name="supervisor-alerts", daemon=True)
            self._thread.start()

    def put(self, event: ChildEvent) -> None:
        if self._thread is not None:
            self._queue.put(event)

    def close(self, timeout: float) -> None:
        """Delivers what is queued, waiting at most `timeout`: the last alert often says why the stack stopped."""
        if self._thread is not None:
            self._queue.put(self._CLOSE)
            self._thread.join(timeout)

    def _deliver(self) -> None:
        while (event := self._queue.get()) is not self._CLOSE:
            try:
                self._send(event)
            except Exception as error:  # noqa: BLE001 - alerts are best effort; the log has the event already
                logger.warning("could not alert operators: %s; the event: %s", error, event.message)


class Supervisor:
    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        policy: RestartPolicy | None = None,
        alert: Callable[[ChildEvent], None] | None = None,
        poll_interval: float = 0.2,
        stop_timeout: float = 15.0,
        alert_flush_timeout: float = 5.0,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._children = [_Child(spec) for spec in children]
        self._alert = alert
        self._poll_interval = poll_interval
        self._stop_timeout = stop_timeout
        self._alert_flush_timeout = alert_flush_timeout
        # A plain flag, not a threading.Event: stop() runs in signal handlers, where taking a lock can deadlock.
        self._stopping = False

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM and SIGHUP stop the stack gracefully. Children run in process groups of their own, so a
        terminal's Ctrl+C or hangup reaches them only through the supervisor, as one SIGTERM each."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.stop())

    def stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        """Starts every child and keeps them running until stop(). Raises SupervisorError, after stopping the
        children it started, when a required child cannot be kept running."""
        # Before anything starts: a required child that could not listen would only be a crash loop later.
        for child in self._children:
            if child.spec.required and (problem := self._port_problem(child.spec)):
                raise SupervisorError(f"{child.spec.name} cannot start: {problem}", child=child.spec.name)
        alerts = _Alerts(self._alert)
        try:
            for child in self._children:
                self._start(child, alerts)
            while not self._stopping:
                self._check(alerts)
                time.sleep(self._poll_interval)
        except SupervisorError as error:
            alerts.put(ChildEvent(EventKind.STACK_STOPPING, error.child, str(error)))
            raise
        finally:
            self._terminate_all()
            alerts.close(self._alert_flush_timeout)

    def _check(self, alerts: _Alerts) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.given_up:
                continue
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child, alerts)
            elif self._exited(child.process):
                returncode = self._stop_leftovers_and_reap(child)
                self._after_exit(child, describe_exit(returncode), alerts)

    @staticmethod
    def _exited(process: subprocess.Popen) -> bool:
        # WNOWAIT: the dead child stays a zombie, holding its pid (and so its process group's id) until it is reaped.
        try:
            return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True  # reaped already

    def _stop_leftovers_and_reap(self, child: _Child) -> int:
        """What the dead child started dies with it: a web server's worker processes would otherwise keep serving,
        and keep the port its replacement must listen on. Its group id cannot have been reused, as its unreaped
        leader still holds that pid."""
        process = child.process
        child.process = None
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return process.wait()

    def _start(self, child: _Child, alerts: _Alerts) -> None:
        name = child.spec.name
        child.restart_at = None
        child.started_at = time.monotonic()
        if problem := self._port_problem(child.spec):
            self._cannot_run(child, f"{name} cannot start: {problem}", alerts)
            return
        try:
            # Its own process group: see install_signal_handlers.
            child.process = subprocess.Popen(child.spec.command, stdin=subprocess.DEVNULL, process_group=0)
        except OSError as error:
            self._after_exit(child, f"could not be started ({error})", alerts)
            return
        logger.info("%s started (pid %d)", name, child.process.pid)

    @staticmethod
    def _port_problem(spec: ChildSpec) -> str | None:
        return next(filter(None, (bind_problem(host, port) for host, port in spec.ports)), None)

    def _after_exit(self, child: _Child, how: str, alerts: _Alerts) -> None:
        name, policy, now = child.spec.name, self.policy, time.monotonic()
        uptime = now - child.started_at
        if uptime >= policy.stable_after:
            child.failures = 0
        while child.restarted_at and child.restarted_at[0] <= now - policy.window:
            child.restarted_at.popleft()
        restarts = len(child.restarted_at)
        if restarts >= policy.max_restarts:
            self._cannot_run(
                child,
                f"{name} {how} after {restarts} restarts in {policy.window:g}s: a crash loop, restarting will not help",
                alerts,
            )
            return
        delay = policy.delay(child.failures)
        child.failures += 1
        child.restarted_at.append(now)
        child.restart_at = now + delay
        message = f"{name} {how} after {uptime:.1f}s up; restarting in {delay:g}s"
        logger.warning("%s (restart %d in the last %gs)", message, restarts + 1, policy.window)
        alerts.put(ChildEvent(EventKind.RESTARTING, name, message, restarts_in_window=restarts + 1, delay=delay))

    def _cannot_run(self, child: _Child, reason: str, alerts: _Alerts) -> None:
        if child.spec.required:
            raise SupervisorError(f"{reason}; stopping the stack", child=child.spec.name)
        child.given_up = True
        message = f"{reason}; left stopped, the rest of the stack keeps running"
        logger.error(message)
        alerts.put(ChildEvent(EventKind.GIVEN_UP, child.spec.name, message))

    def _terminate_all(self) -> None:
        running = [child for child in self._children if child.process is not None]
        for child in running:
            if not self._exited(child.process):
                child.process.terminate()
        deadline = time.monotonic() + self._stop_timeout
        for child in running:
            while not self._exited(child.process) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._exited(child.process):
                logger.warning("%s did not stop within %gs of SIGTERM; killing it", child.spec.name, self._stop_timeout)
            # The whole group, even after a clean exit: a worker's pool processes would otherwise outlive it.
            self._stop_leftovers_and_reap(child)
