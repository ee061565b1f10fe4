"""Request latency across several web processes: with PROMETHEUS_MULTIPROC_DIR (as distributed `serve` sets it for
its children) every process writes its samples there, and a scrape answered by any process shows the sum of all of
them, with the scrape-time families once and no per-process families. Without it, one process's registry, as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from algoterm.management.commands.serve import metrics_directory_prepare
from algoterm.metrics import MULTIPROC_DIR_VARIABLE

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(settings.BASE_DIR)
LATENCY = "algoterm_http_request_duration_seconds"
VERSION = {"method": "GET", "route": "version", "status": "2xx"}

# A web process in miniature: Django's full middleware stack answers GET /api/version `count` times, then, if asked,
# prints the exposition this process would answer a scrape with.
WEB_PROCESS = textwrap.dedent(
    """
    import sys

    import django

    django.setup()
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    client = Client()
    for _ in range(int(sys.argv[1])):
        assert client.get("/api/version").status_code == 200
    if sys.argv[2] == "scrape":
        from algoterm.console.metrics import exposition

        sys.stdout.write(exposition().decode())
    """
)


def database_url(tmp_path: Path) -> str:
    """The test database for the processes when it is PostgreSQL (they read it at scrape time); a scratch SQLite
    file when embedded (this run's in-memory database cannot be shared)."""
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor != "postgresql":
        return f"sqlite:///{tmp_path / 'web.sqlite3'}"
    return f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


def web_process(directory: Path, tmp_path: Path, requests: int, *, scrape: bool = False) -> str:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "algoterm.settings",
        MULTIPROC_DIR_VARIABLE: str(directory),
        "DATABASE_URL": database_url(tmp_path),
        "LOG_LEVEL": "ERROR",
    }
    finished = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS, str(requests), "scrape" if scrape else "-"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout


def parse(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, name: str, **labels) -> float | None:
    found = [s.value for s in families[LATENCY].samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_a_scrape_of_any_web_process_shows_the_requests_of_all_of_them(tmp_path, admin_client, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()

    web_process(directory, tmp_path, 3)  # answered three requests, then exited
    answered = parse(web_process(directory, tmp_path, 2, scrape=True))  # answered two, then a scrape

    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(directory))
    response = admin_client.get("/api/metrics")  # and this process, a third one, answers a scrape too
    assert response.status_code == 200
    text = response.content.decode()
    here = parse(text)

    for families in (answered, here):
        assert families[LATENCY].type == "histogram"
        assert sample(families, f"{LATENCY}_count", **VERSION) == 5
        assert sample(families, f"{LATENCY}_bucket", le="+Inf", **VERSION) == 5
        assert 0 < sample(families, f"{LATENCY}_sum", **VERSION) < 60
        # Per-process families would describe whichever process took the scrape: left out.
        assert not [name for name in families if name.startswith(("process_", "python_"))]
    # The scrape-time families (read from the shared stores) appear once, as in a single process.
    assert {s.labels["endpoint"] for s in here["algoterm_websocket_connections"].samples} >= {"events", "ops"}
    assert text.count("# TYPE algoterm_metrics_reading_ok gauge") == 1
    assert text.count("# TYPE algoterm_websocket_connections gauge") == 1
    readings = {s.labels["reading"]: s.value for s in here["algoterm_metrics_reading_ok"].samples}
    assert readings == dict.fromkeys(("orders", "rms", "websockets", "feed", "celery", "brokers"), 1.0)


def test_without_the_directory_a_process_serves_its_own_registry(admin_client, monkeypatch):
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE, raising=False)
    admin_client.get("/api/version")

    families = parse(admin_client.get("/api/metrics").content.decode())

    assert (sample(families, f"{LATENCY}_count", **VERSION) or 0) >= 1
    assert "process_cpu_seconds" in families  # one process: its own CPU and memory are meaningful


def test_serve_makes_a_directory_for_the_run_and_hands_it_to_its_children(monkeypatch, tmp_path):
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, "")  # recorded, so the value serve sets is undone after the test
    monkeypatch.delenv(MULTIPROC_DIR_VARIABLE)

    made, made_here = metrics_directory_prepare()

    try:
        assert made_here and made.is_dir() and not list(made.iterdir())
        assert os.environ[MULTIPROC_DIR_VARIABLE] == str(made)  # what every child inherits
    finally:
        made.rmdir()


def test_serve_empties_the_operators_directory_of_an_earlier_run(monkeypatch, tmp_path):
    given = tmp_path / "prometheus"
    given.mkdir()
    (given / "histogram_4242.db").write_bytes(b"an earlier run's samples")
    (given / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_DIR_VARIABLE, str(given))

    path, made_here = metrics_directory_prepare()

    assert (path, made_here) == (given, False)
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
