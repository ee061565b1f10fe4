"""The supervisor `serve` runs the distributed stack under, driven over real (tiny) child processes."""

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from algoterm.supervisor import (
    ChildEvent,
    ChildSpec,
    EventKind,
    RestartPolicy,
    Supervisor,
    SupervisorError,
    bind_problem,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = RestartPolicy(first_delay=0.1, max_delay=0.4, stable_after=30, max_restarts=50, window=30)
SLEEP = "time.sleep(30)"


def python(*lines: str) -> list[str]:
    return [sys.executable, "-c", "\n".join(["import os, signal, sys, time", *lines])]


def record_start(path: Path) -> str:
    """A line of child code appending the moment it runs (CLOCK_MONOTONIC is system-wide) to `path`."""
    return f"open({str(path)!r}, 'a').write(repr(time.monotonic()) + '\\n')"


def on_sigterm_write(path: Path, text: str) -> str:
    """A line of child code: on SIGTERM, write `text` to `path` and exit 0."""
    return f"signal.signal(signal.SIGTERM, lambda *_: (open({str(path)!r}, 'w').write({text}), sys.exit(0)))"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Alerts:
    def __init__(self) -> None:
        self.events: list[ChildEvent] = []

    def __call__(self, event: ChildEvent) -> None:
        self.events.append(event)

    def of(self, kind: EventKind) -> list[ChildEvent]:
        return [event for event in self.events if event.kind is kind]


@contextlib.contextmanager
def supervising(supervisor: Supervisor) -> Iterator[dict]:
    """Runs the supervisor on a thread; on leaving, stops it and gives back what run() raised, if anything."""
    outcome: dict = {}

    def run() -> None:
        try:
            supervisor.run()
        except SupervisorError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    try:
        yield outcome
    finally:
        supervisor.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the supervisor did not stop"


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def listening_socket() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_dead_child_is_restarted_with_exponential_backoff_up_to_the_cap(tmp_path):
    starts = tmp_path / "starts"
    alerts = Alerts()
    supervisor = Supervisor(
        [ChildSpec("worker", python(record_start(starts), "sys.exit(3)"))],
        policy=FAST,
        alert=alerts,
        poll_interval=0.02,
    )
    with supervising(supervisor):
        wait_for(lambda: len(lines(starts)) >= 6)

    restarts = alerts.of(EventKind.RESTARTING)[:5]
    assert [event.delay for event in restarts] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert [event.restarts_in_window for event in restarts] == [1, 2, 3, 4, 5]
    assert restarts[0].message.startswith("worker exited with code 3 after ")
    assert restarts[0].message.endswith("; restarting in 0.1s")
    moments = [float(line) for line in lines(starts)]
    for before, after, event in zip(moments, moments[1:], restarts, strict=False):
        assert after - before >= event.delay


def test_the_backoff_starts_again_after_a_child_stayed_up(tmp_path):
    runs = tmp_path / "runs"
    earlier_runs = f"earlier = len(open({str(runs)!r}).readlines()) if os.path.exists({str(runs)!r}) else 0"
    # The fourth run stays up longer than stable_after, then dies.
    child = python(earlier_runs, record_start(runs), "time.sleep(0.6 if earlier == 3 else 0)", "sys.exit(1)")
    alerts = Alerts()
    policy = RestartPolicy(first_delay=0.1, max_delay=10, stable_after=0.4, max_restarts=50, window=30)
    with supervising(Supervisor([ChildSpec("web", child)], policy=policy, alert=alerts, poll_interval=0.02)):
        wait_for(lambda: len(alerts.of(EventKind.RESTARTING)) >= 4)

    assert [event.delay for event in alerts.of(EventKind.RESTARTING)[:4]] == [0.1, 0.2, 0.4, 0.1]


def test_a_crash_loop_stops_the_stack_with_a_clear_message(tmp_path):
    terminated = tmp_path / "terminated"
    steady = python(
        on_sigterm_write(terminated, "str(os.getpid())"),
        SLEEP,
    )
    policy = RestartPolicy(first_delay=0.05, max_delay=0.05, stable_after=30, max_restarts=3, window=30)
    alerts = Alerts()
    supervisor = Supervisor(
        [ChildSpec("web", steady), ChildSpec("beat", python("sys.exit(2)"))],
        policy=policy,
        alert=alerts,
        poll_interval=0.02,
    )
    with supervising(supervisor) as outcome:
        outcome["thread"].join(timeout=8)

    error = outcome["error"]
    assert str(error) == (
        "beat exited with code 2 after 3 restarts in 30s: a crash loop, restarting will not help; stopping the stack"
    )
    assert error.child == "beat"
    assert [event.kind for event in alerts.events] == [EventKind.RESTARTING] * 3 + [EventKind.STACK_STOPPING]
    assert alerts.events[-1].message == str(error)
    # The healthy child was stopped gracefully, with SIGTERM.
    assert pid_gone(int(terminated.read_text()))


def test_an_optional_child_in_a_crash_loop_is_left_stopped_and_the_rest_keeps_running(tmp_path):
    starts = tmp_path / "starts"
    policy = RestartPolicy(first_delay=0.05, max_delay=0.05, stable_after=30, max_restarts=2, window=30)
    alerts = Alerts()
    supervisor = Supervisor(
        [
            ChildSpec("worker", python(record_start(starts), SLEEP)),
            ChildSpec("kite-simulator", python("sys.exit(1)"), required=False),
        ],
        policy=policy,
        alert=alerts,
        poll_interval=0.02,
    )
    with supervising(supervisor) as outcome:
        wait_for(lambda: alerts.of(EventKind.GIVEN_UP))
        time.sleep(0.2)
        assert outcome["thread"].is_alive()

    assert "error" not in outcome
    [given_up] = alerts.of(EventKind.GIVEN_UP)
    assert given_up.message == (
        "kite-simulator exited with code 1 after 2 restarts in 30s: a crash loop, restarting will not help; "
        "left stopped, the rest of the stack keeps running"
    )
    assert len(lines(starts)) == 1


def test_a_busy_port_leaves_an_optional_child_stopped_and_the_rest_running(tmp_path, listening_socket, caplog):
    caplog.set_level(logging.INFO, logger="algoterm.supervisor")
    started, simulator_ran = tmp_path / "started", tmp_path / "simulator"
    alerts = Alerts()
    supervisor = Supervisor(
        [
            ChildSpec("web", python(record_start(started), SLEEP)),
            ChildSpec(
                "dhan-simulator",
                python(record_start(simulator_ran)),
                ports=(("127.0.0.1", listening_socket),),
                required=False,
            ),
        ],
        policy=FAST,
        alert=alerts,
        poll_interval=0.02,
    )
    with supervising(supervisor) as outcome:
        wait_for(lambda: lines(started))
        time.sleep(0.2)
        assert outcome["thread"].is_alive()

    message = (
        f"dhan-simulator cannot start: port {listening_socket} on 127.0.0.1 is already in use by another program; "
        "left stopped, the rest of the stack keeps running"
    )
    assert [event.message for event in alerts.events] == [message]
    assert message in caplog.messages
    assert not simulator_ran.exists()


def test_a_busy_port_of_a_required_child_stops_the_stack_before_it_starts(tmp_path, listening_socket):
    started = tmp_path / "started"
    supervisor = Supervisor(
        [
            ChildSpec("worker", python(record_start(started), SLEEP)),
            ChildSpec("web", python(SLEEP), ports=(("127.0.0.1", listening_socket),)),
        ]
    )
    with pytest.raises(SupervisorError) as raised:
        supervisor.run()

    assert (
        str(raised.value)
        == f"web cannot start: port {listening_socket} on 127.0.0.1 is already in use by another program"
    )
    assert raised.value.child == "web"
    assert not started.exists()


def test_bind_problem_names_what_is_wrong(listening_socket):
    assert bind_problem("127.0.0.1", 0) is None
    assert bind_problem("127.0.0.1", listening_socket) == (
        f"port {listening_socket} on 127.0.0.1 is already in use by another program"
    )
    assert bind_problem("192.0.2.1", 8000).startswith("cannot listen on 192.0.2.1:8000 (")


def test_a_slow_or_failing_alert_never_delays_a_restart(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="algoterm.supervisor")
    starts = tmp_path / "starts"
    database_back = threading.Event()

    def alert(event: ChildEvent) -> None:
        # A database that hangs, then refuses.
        database_back.wait(timeout=8)
        raise RuntimeError("database unavailable")

    policy = RestartPolicy(first_delay=0.05, max_delay=0.05, stable_after=30, max_restarts=100, window=30)
    supervisor = Supervisor(
        [ChildSpec("worker", python(record_start(starts), "sys.exit(1)"))],
        policy=policy,
        alert=alert,
        poll_interval=0.02,
    )
    with supervising(supervisor) as outcome:
        wait_for(lambda: len(lines(starts)) >= 4)
        database_back.set()
        wait_for(lambda: any("could not alert operators" in message for message in caplog.messages))
        restarted = len(lines(starts))
        wait_for(lambda: len(lines(starts)) > restarted)
        assert outcome["thread"].is_alive()

    [first, *_] = [message for message in caplog.messages if message.startswith("could not alert operators")]
    assert first.startswith("could not alert operators: database unavailable; the event: worker exited with code 1")


def test_sigterm_stops_children_with_sigterm_then_sigkill(tmp_path):
    graceful_ready, stubborn_ready, graceful_got = tmp_path / "graceful", tmp_path / "stubborn", tmp_path / "got"
    graceful = python(
        on_sigterm_write(graceful_got, "'SIGTERM'"),
        f"open({str(graceful_ready)!r}, 'w').write(str(os.getpid()))",
        SLEEP,
    )
    stubborn = python(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
        f"open({str(stubborn_ready)!r}, 'w').write(str(os.getpid()))",
        SLEEP,
    )
    program = "\n".join(
        [
            "from algoterm.supervisor import ChildSpec, Supervisor",
            f"children = [ChildSpec('graceful', {graceful!r}), ChildSpec('stubborn', {stubborn!r})]",
            "supervisor = Supervisor(children, poll_interval=0.02, stop_timeout=0.5)",
            "supervisor.install_signal_handlers()",
            "supervisor.run()",
        ]
    )
    serve = subprocess.Popen(
        [sys.executable, "-c", program], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: lines(graceful_ready) and lines(stubborn_ready), timeout=8)
        serve.send_signal(signal.SIGTERM)
        _, stderr = serve.communicate(timeout=8)
    finally:
        serve.kill()

    assert serve.returncode == 0, stderr
    assert graceful_got.read_text() == "SIGTERM"
    assert "stubborn did not stop within 0.5s of SIGTERM; killing it" in stderr
    assert pid_gone(int(stubborn_ready.read_text()))
