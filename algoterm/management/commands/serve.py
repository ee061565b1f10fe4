"""Serve the whole stack: web (ASGI: REST, WebSockets, admin, docs), Celery worker, beat, and with the demo
settings the simulated market feed and the broker simulators.

Embedded (no REDIS_URL): one process; the workers (orders and housekeeping; backtests) and beat are threads on an
in-memory broker.
Distributed (REDIS_URL set): web, worker, backtest worker, beat and the rest run as child processes under
algoterm.supervisor: a child that dies is restarted with backoff and operators are alerted; a crash loop stops the
stack. The web child is WEB_CONCURRENCY processes (default: one per CPU) sharing the one port. Either way
backtests run on workers of their own, never in the slots order and risk work needs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from accounts.models import Notification
from accounts.services import audit_record
from algoterm import embedded, realtime
from algoterm.api.ws import server_ping_args, server_ping_options
from algoterm.config import FEED, config_stored_or_builtin
from algoterm.console.system import admins_notify, system_event_publish
from algoterm.metrics import MULTIPROC_DIR_VARIABLE
from algoterm.supervisor import ChildEvent, ChildSpec, EventKind, Supervisor, SupervisorError


def market_feed_choice() -> tuple[str, float]:
    """The feed `serve` runs and its interval: the `feed` configuration section when an operator stored one, else
    (or when the store cannot be read yet) the settings MARKET_FEED and MARKET_FEED_INTERVAL_SECONDS. "" runs none."""
    stored = config_stored_or_builtin(name=FEED)
    if stored is None:
        return settings.MARKET_FEED, float(settings.MARKET_FEED_INTERVAL_SECONDS)
    return stored["source"], float(stored["interval_seconds"])


class Command(BaseCommand):
    help = "Serve AlgoTerm: web, worker and beat (in one process when embedded)."

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._feed_stop = threading.Event()

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, host: str, port: int, **options):
        if not os.environ.get("PUBLIC_BASE_URL"):
            # Broker logins redirect back here; child processes inherit it through the environment.
            os.environ["PUBLIC_BASE_URL"] = settings.PUBLIC_BASE_URL = f"http://{host}:{port}"
        self._print_banner(host, port)
        if settings.EMBEDDED:
            self._serve_embedded(host, port)
        else:
            self._serve_distributed(host, port)

    def _print_banner(self, host: str, port: int) -> None:
        base = f"http://{host}:{port}"
        mode = (
            "embedded (SQLite or DATABASE_URL, in-process worker and beat)"
            if settings.EMBEDDED
            else f"distributed (PostgreSQL, Redis; {web_concurrency()} web processes, worker and beat)"
        )
        lines = [
            "",
            f"AlgoTerm {settings.VERSION}: {mode}",
            f"  API docs   {base}/docs",
            f"  Admin      {base}/admin/",
            f"  Health     {base}/api/health",
            f"  WebSocket  ws://{host}:{port}/ws/events?token=<access token>",
            *self._demo_login_lines(),
            *self._simulator_lines(),
            "",
        ]
        self.stdout.write("\n".join(lines))

    def _demo_login_lines(self) -> list[str]:
        # Production never has the demo users (seed_demo refuses it): their published passwords are not printed.
        if settings.IS_PRODUCTION:
            return []
        from algoterm.sandbox.demo import DEMO_USERS  # the sandbox is only loaded where it is installed

        return [
            "  Demo logins:",
            *(f"    {user['role']:<7} {user['email']:<20} {user['password']}" for user in DEMO_USERS),
        ]

    def _simulator_lines(self) -> list[str]:
        if not settings.BROKER_SIMULATORS:
            return []
        # The sandbox: only with the simulators on.
        from algoterm.sandbox.demo import BROKER_OF_SIMULATOR, DEMO_CREDENTIALS, available_simulators

        lines = ["  Broker simulators (connect these brokers with POST /api/brokers/connect):"]
        for name in available_simulators():
            credentials = ", ".join(f'"{key}": "{value}"' for key, value in DEMO_CREDENTIALS[name].items())
            port = settings.SIMULATOR_PORTS[name]
            lines.append(f"    {BROKER_OF_SIMULATOR[name]:<8} http://127.0.0.1:{port}  credentials {{{credentials}}}")
        lines.append(
            "    (live-feed sockets listen at each port + 10, order-update sockets at + 20; designate an account as a "
            "market-data source in the admin and its feed starts)"
        )
        lines.append(
            f"  Razorpay (simulated) http://127.0.0.1:{settings.SIMULATOR_PORTS['razorpay']}: "
            "POST /api/subscriptions/start, then open the checkout's short_url and press Pay"
        )
        return lines

    def _serve_embedded(self, host: str, port: int) -> None:
        import uvicorn  # the embedded server only: distributed mode runs uvicorn as a child process

        embedded.start_worker()
        embedded.start_backtest_worker()
        embedded.start_beat()
        if settings.BROKER_SIMULATORS:
            # The sandbox: only with the simulators on.
            from algoterm.sandbox.demo import available_simulators, demo_simulators_start, razorpay_simulator_start

            for name in available_simulators():
                demo_simulators_start(name, port=settings.SIMULATOR_PORTS[name])
            razorpay_simulator_start(port=settings.SIMULATOR_PORTS["razorpay"])
        source, interval = market_feed_choice()
        if source == "simulated":
            self._start_embedded_feed(interval)
        if source:
            self._start_embedded_market_data(source)
        self._start_embedded_order_streams()
        config = uvicorn.Config(
            "algoterm.asgi:application",
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            **server_ping_options(),
        )
        server = uvicorn.Server(config)

        async def run() -> None:
            realtime.register_server_loop(asyncio.get_running_loop())
            await server.serve()

        try:
            asyncio.run(run())
        finally:
            self._feed_stop.set()
            embedded.stop()

    def _start_embedded_market_data(self, source: str) -> None:
        """The designated market-data accounts' feed (idle until an operator designates one). With the simulated
        feed it runs too: a designated account then streams the same simulated market from its broker's socket."""
        from marketdata.candles import MinuteCandleBuilder
        from marketdata.feeds.runner import PublishAndRecord, feed_supervise
        from marketdata.sources import MarketDataSupervisor, brokers_of_source

        recorder = PublishAndRecord(builder=MinuteCandleBuilder())
        supervisor = MarketDataSupervisor(recorder=recorder, brokers=brokers_of_source(source))
        threading.Thread(
            target=feed_supervise,
            kwargs={"feed": supervisor, "recorder": recorder, "stop": self._feed_stop, "name": "market-data"},
            name="market-data-supervisor",
            daemon=True,
        ).start()

    def _start_embedded_order_streams(self) -> None:
        """Order-update sockets of every connected Dhan and Fyers account (Zerodha's ride its ticker)."""
        from brokers.streams.supervisor import order_streams_run

        threading.Thread(
            target=order_streams_run, kwargs={"stop": self._feed_stop}, name="order-streams", daemon=True
        ).start()

    def _start_embedded_feed(self, interval: float) -> None:
        # The feeds bring the broker SDKs: loaded only by the process that runs one.
        from marketdata.candles import MinuteCandleBuilder
        from marketdata.feeds.runner import PublishAndRecord, feed_build, feed_supervise

        recorder = PublishAndRecord(builder=MinuteCandleBuilder())
        feed = feed_build(source="simulated", recorder=recorder, interval=interval)
        threading.Thread(
            target=feed_supervise,
            kwargs={"feed": feed, "recorder": recorder, "stop": self._feed_stop, "name": "simulated"},
            name="feed-supervisor",
            daemon=True,
        ).start()

    def _serve_distributed(self, host: str, port: int) -> None:
        metrics_dir, made_here = metrics_directory_prepare()
        supervisor = Supervisor(self._distributed_children(host, port), alert=operators_alert)
        supervisor.install_signal_handlers()
        try:
            supervisor.run()
        except SupervisorError as error:
            hint = " (stop it, or serve on another port with --port or PORT)" if error.child == "web" else ""
            raise CommandError(f"{error}{hint}") from error
        finally:
            if made_here:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def _distributed_children(self, host: str, port: int) -> list[ChildSpec]:
        python = sys.executable
        web = [python, "-m", "uvicorn", "algoterm.asgi:application", "--host", host, "--port", str(port)]
        # Several processes behind the one port: Django runs sync views on one thread per process. uvicorn's parent
        # restarts a worker that dies; the supervisor sees the parent, and stops the workers with it.
        web += ["--workers", str(web_concurrency())]
        web += server_ping_args()  # keepalive pings so idle sockets survive proxies
        celery = [python, "-m", "celery", "-A", "algoterm"]
        children = [
            ChildSpec("web", [*web, "--no-access-log", "--lifespan", "off"], ports=((host, port),)),
            ChildSpec("worker", [*celery, "worker", *main_worker_options()]),
            # Backtests on workers of their own: a long one never delays an order, an exit or the risk engine. Not
            # required: without it backtests wait, trading does not.
            ChildSpec("backtest-worker", [*celery, "worker", *backtest_worker_options()], required=False),
            ChildSpec("beat", [*celery, "beat", "-l", "INFO", "-S", "django_celery_beat.schedulers:DatabaseScheduler"]),
        ]
        source, interval = market_feed_choice()
        if source == "simulated":
            feed = [python, "manage.py", "runfeed", "--source", "simulated", "--interval", str(interval)]
            children.append(ChildSpec("feed", feed))
        if source:
            # The designated market-data accounts (idle until an operator designates one).
            market_data_source = "broker" if source == "simulated" else source
            market_data = [python, "manage.py", "runfeed", "--source", market_data_source]
            children.append(ChildSpec("market-data", market_data))
        # Order-update sockets of every connected Dhan and Fyers account; reconciliation covers for them if they stop.
        children.append(ChildSpec("order-streams", [python, "manage.py", "run_order_streams"], required=False))
        if settings.BROKER_SIMULATORS:
            # The sandbox: only with the simulators on.
            from algoterm.sandbox.demo import FEED_PORT_OFFSET, ORDER_SOCKET_PORT_OFFSET, available_simulators

            # The simulators are demo conveniences: one that cannot run must not take the stack down with it.
            for name in available_simulators():
                sim_port = settings.SIMULATOR_PORTS[name]
                command = [python, "manage.py", "runsimulator", "--broker", name, "--port", str(sim_port)]
                ports = [("127.0.0.1", sim_port)]
                ports.append(("127.0.0.1", sim_port + FEED_PORT_OFFSET))
                if name in ("dhan", "fyers"):
                    ports.append(("127.0.0.1", sim_port + ORDER_SOCKET_PORT_OFFSET))
                children.append(ChildSpec(f"{name}-simulator", command, ports=tuple(ports), required=False))
            razorpay_port = settings.SIMULATOR_PORTS["razorpay"]
            command = [python, "manage.py", "razorpay_simulator", "--port", str(razorpay_port)]
            children.append(
                ChildSpec("razorpay-simulator", command, ports=(("127.0.0.1", razorpay_port),), required=False)
            )
        return children


def metrics_directory_prepare() -> tuple[Path, bool]:
    """The directory the web processes write their Prometheus samples to for this run, so a scrape answered by any
    of them sums all of them; the children (and a web worker uvicorn restarts) find it in the environment. The
    operator's PROMETHEUS_MULTIPROC_DIR, emptied of an earlier run's files, or else a temporary one that serve
    removes when it stops. Returns it, and whether serve made it."""
    given = os.environ.get(MULTIPROC_DIR_VARIABLE, "").strip()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="algoterm-metrics-"))
    os.environ[MULTIPROC_DIR_VARIABLE] = str(path)
    return path, not given


def web_concurrency() -> int:
    """How many web processes distributed `serve` runs: WEB_CONCURRENCY, else one per CPU this process may use."""
    value = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not value:
        return max(1, len(os.sched_getaffinity(0)))
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise CommandError(f"WEB_CONCURRENCY must be a whole number of web processes, 1 or more, not {value!r}")
    return count


def main_worker_options() -> list[str]:
    """The worker for orders, exits, the risk engine and housekeeping: every queue but the backtests'."""
    queues = ",".join(settings.WORKER_QUEUES)
    return ["-Q", queues, "-n", "worker@%h", "-l", "INFO", "--concurrency", str(settings.WORKER_CONCURRENCY)]


def backtest_worker_options() -> list[str]:
    concurrency = str(settings.BACKTEST_WORKER_CONCURRENCY)
    return ["-Q", settings.TASK_QUEUE_BACKTESTS, "-n", "backtests@%h", "-l", "INFO", "--concurrency", concurrency]


def operators_alert(event: ChildEvent) -> None:
    """Every active admin is notified (live on /ws/events, and in the admin's notifications) and the audit log
    records the event. Runs on the supervisor's alert thread, which survives its failures."""
    title, level, action = {
        EventKind.RESTARTING: (f"{event.child} crashed and is restarting", Notification.Level.WARNING, "restart"),
        EventKind.GIVEN_UP: (f"{event.child} is left stopped", Notification.Level.ERROR, "given_up"),
        EventKind.STACK_STOPPING: (f"The stack stopped: {event.child} cannot run", Notification.Level.ERROR, "stop"),
    }[event.kind]
    data = {"process": event.child, "event": str(event.kind), "restarts_in_window": event.restarts_in_window}
    if event.delay is not None:
        data["restart_in_seconds"] = event.delay
    try:
        with transaction.atomic():
            audit_record(
                action=f"system.process_{action}",
                target_type="process",
                target_id=event.child,
                details={**data, "message": event.message},
            )
            admins_notify(actor=None, kind="system.process", title=title, body=event.message, level=level, data=data)
            # Sent when this block commits: the alert thread runs outside any request or outer transaction.
            process = {key: value for key, value in data.items() if key != "event"}
            system_event_publish(
                event=f"process_{action}",
                actor=None,
                details={**process, "supervisor_event": str(event.kind), "message": event.message},
            )
    finally:
        # A long-lived thread's connection would go stale across a database restart; the next alert reconnects.
        connection.close()
