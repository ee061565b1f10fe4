"""The web tier uses the machine: several web processes behind one port, and a connection pool per process that a
forked Celery worker child never shares with its parent."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management.base import CommandError

from algoterm.management.commands.serve import Command, web_concurrency

ROOT = Path(__file__).resolve().parents[2]


def test_web_concurrency_defaults_to_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert web_concurrency() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert web_concurrency() == 3


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_web_concurrency_that_is_not_a_count_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("WEB_CONCURRENCY", value)
    with pytest.raises(CommandError, match="WEB_CONCURRENCY must be a whole number of web processes"):
        web_concurrency()


@pytest.mark.django_db
def test_the_web_child_is_one_uvicorn_with_web_concurrency_workers_on_the_port(monkeypatch, settings):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    settings.BROKER_SIMULATORS = False
    [web] = [child for child in Command()._distributed_children("127.0.0.1", 9000) if child.name == "web"]

    command = list(web.command)
    assert command[command.index("--workers") + 1] == "3"
    assert command[command.index("--port") + 1] == "9000" and web.ports == (("127.0.0.1", 9000),)
    assert {"--no-access-log", "--ws-ping-interval", "--ws-ping-timeout"} <= set(command)
    assert command[command.index("--lifespan") + 1] == "off"


def database_settings(**environment: str) -> dict:
    """DATABASES["default"] as the settings module builds it from this environment, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")} | {"DJANGO_ENV": "development"}
    result = subprocess.run(
        [sys.executable, "-c", "import json; from algoterm import settings; print(json.dumps(settings.DATABASES))"],
        cwd=ROOT,
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["default"]


def test_postgresql_gets_a_pool_sized_by_the_environment():
    url = "postgres://postgres@127.0.0.1:5432/algoterm"
    assert database_settings(DATABASE_URL=url)["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 20, "timeout": 2.0}
    sized = database_settings(
        DATABASE_URL=url, DATABASE_POOL_MIN_SIZE="2", DATABASE_POOL_MAX_SIZE="8", DATABASE_POOL_TIMEOUT="2.5"
    )
    assert sized["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 8, "timeout": 2.5}
    assert sized.get("CONN_MAX_AGE", 0) == 0


def test_persistent_connections_sqlite_or_a_zero_size_mean_no_pool(tmp_path):
    url = "postgres://postgres@127.0.0.1:5432/algoterm"
    persistent = database_settings(DATABASE_URL=f"{url}?conn_max_age=60")
    assert "pool" not in persistent.get("OPTIONS", {}) and persistent["CONN_MAX_AGE"] == 60
    assert "pool" not in database_settings(DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="0").get("OPTIONS", {})
    assert "pool" not in database_settings(DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")["OPTIONS"]
    assert "pool" not in database_settings(DATABASE_URL=url, DJANGO_ENV="test").get("OPTIONS", {})
    assert database_settings(DATABASE_URL=url, DJANGO_ENV="test", DATABASE_POOL_MAX_SIZE="5")["OPTIONS"]["pool"]


FORKED_CHILD = textwrap.dedent(
    """
    import os, django
    django.setup()
    from celery.signals import worker_process_init
    from django.db import connection

    def backend():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    parent_backend = backend()  # the parent's pool is open and holds this connection
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        worker_process_init.send(sender=None)  # as a prefork child starts
        os.write(write, str(backend()).encode())
        connection.close()
        os._exit(0)
    os.waitpid(child, 0)
    child_backend = int(os.read(read, 32))
    print(parent_backend, child_backend, backend())
    """
)


def test_a_forked_worker_child_gets_a_pool_of_its_own_and_leaves_the_parents_connections_alone(django_db_setup):
    database = settings.DATABASES["default"]
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "algoterm.settings"}
    env["DATABASE_POOL_MAX_SIZE"] = "20"
    result = subprocess.run(
        [sys.executable, "-c", FORKED_CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    parent_before, child, parent_after = map(int, result.stdout.split())

    assert child != parent_before  # the child connected on its own
    assert parent_after == parent_before  # and the parent's pooled connection still works, unharmed


def dead_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_dead_childs_processes_die_with_it_so_its_replacement_starts_clean(tmp_path):
    """As a killed uvicorn parent's workers would keep serving, and keep the port its replacement needs."""
    from algoterm.supervisor import ChildSpec, RestartPolicy, Supervisor
    from algoterm.tests.test_supervisor import lines, python, supervising, wait_for

    started = tmp_path / "grandchildren"
    child = python(
        "import subprocess",
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])",
        f"open({str(started)!r}, 'a').write(f'{{worker.pid}}\\n')",
        "time.sleep(0.5)",
        "os._exit(1)",  # the parent dies; its worker does not by itself
    )
    policy = RestartPolicy(first_delay=0.2, max_delay=0.2, stable_after=30, max_restarts=50, window=30)
    supervisor = Supervisor([ChildSpec("web", child)], policy=policy, poll_interval=0.05)
    with supervising(supervisor):
        wait_for(lambda: len(lines(started)) >= 2, timeout=20)
        first = int(lines(started)[0])
        wait_for(lambda: dead_or_gone(first), timeout=5)
    for pid in map(int, lines(started)):
        wait_for(lambda pid=pid: dead_or_gone(pid), timeout=5)  # and stopping the stack stops them all
