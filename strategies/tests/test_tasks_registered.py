"""The services queue the app's tasks by name (algoterm.tasking), so every process that loads the apps must know them,
not only a worker that imported the tasks module: a web process starting a backtest queues its run on commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from strategies.services.backtests import BACKTEST_RUN_TASK

PROJECT = Path(__file__).resolve().parents[2]


def test_a_fresh_process_knows_the_strategies_tasks_by_name_once_the_apps_are_loaded():
    # A new interpreter: in this one, some test may already have imported the tasks module.
    probe = (
        "import json, django; django.setup(); from celery import current_app; "
        "print(json.dumps(sorted(name for name in current_app.tasks if name.startswith('strategies.'))))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "algoterm.settings"}

    finished = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120, check=True
    )

    registered = json.loads(finished.stdout.strip().splitlines()[-1])
    assert BACKTEST_RUN_TASK in registered
    assert {
        "strategies.tasks.dispatch_fires",
        "strategies.tasks.fire_chunk",
        "strategies.tasks.recover_fires",
        "strategies.tasks.evaluate_rules",
        "strategies.tasks.expire_backtests",
    } <= set(registered)
