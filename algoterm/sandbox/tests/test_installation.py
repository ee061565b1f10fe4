"""The sandbox (simulators, demo seeding) reaches a server only where the simulators are on or outside production:
a production server never loads it, and its demo commands with published passwords do not exist there."""

import os
import subprocess
import sys

from algoterm.tests.test_settings import PRODUCTION

LOADED_SANDBOX = (
    "import sys, algoterm.asgi, io\n"
    "from django.urls import get_resolver\n"
    "from algoterm.management.commands.serve import Command\n"
    "get_resolver().url_patterns\n"
    "Command(stdout=io.StringIO())._print_banner('127.0.0.1', 8000)\n"
    "print(sorted(name for name in sys.modules if name.startswith('algoterm.sandbox')))\n"
)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in PRODUCTION and k != "DEBUG"}
    environment.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], env=environment, capture_output=True, text=True)


def test_a_production_server_has_no_demo_commands_and_loads_no_sandbox_module():
    production = {**PRODUCTION, "BROKER_SIMULATORS": "false"}

    commands = manage("help", **production)
    assert commands.returncode == 0, commands.stderr
    assert not {"runsimulator", "razorpay_simulator", "seed_demo"} & set(commands.stdout.split())
    assert "[sandbox]" not in commands.stdout

    loaded = manage("shell", "-c", LOADED_SANDBOX, **production)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == "[]"


def test_the_demo_has_the_sandbox_commands_with_the_simulators_on():
    demo = manage("help", DJANGO_ENV="development", BROKER_SIMULATORS="true")
    assert demo.returncode == 0, demo.stderr
    assert {"runsimulator", "razorpay_simulator", "seed_demo"} <= set(demo.stdout.split())
