"""Outbound protection: order pacing shared across processes, and the circuit breaker."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounts.tests.factories import UserFactory
from algoterm.sandbox.simulators.kite import KiteSimulator
from brokers.gateway import adapter_for
from brokers.models import AccountStatus, BrokerAccount
from brokers.protection import order_limits
from brokers.protocol import BrokerUnavailable
from brokers.tests.conftest import serving

ROOT = Path(__file__).resolve().parents[2]
BURST = """
import json, time, django
django.setup()
from brokers.protection import pace_order
stamps = []
for _ in range(25):
    pace_order(account_id="acc_pacing_burst", broker="zerodha")
    stamps.append(time.time())
print(json.dumps(stamps))
"""


def test_limits_cap_the_per_second_rate_at_the_sebi_setting(settings):
    settings.BROKER_MAX_ORDERS_PER_SECOND = 9
    assert order_limits("zerodha") == [(9, 1.0), (400, 60.0), (5000, 86400.0)]
    assert order_limits("dhan")[1] == (250, 60.0)


def test_a_burst_of_50_orders_from_two_processes_never_exceeds_9_a_second():
    env = {**os.environ, "BROKER_MAX_ORDERS_PER_SECOND": "9"}
    workers = [
        subprocess.Popen([sys.executable, "-c", BURST], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    stamps = sorted(stamp for worker in workers for stamp in json.loads(worker.communicate(timeout=60)[0]))

    assert len(stamps) == 50
    # Any 10 consecutive sends span at least a second (a little slack for the two clocks of Redis and Python).
    tightest = min(stamps[i + 9] - stamps[i] for i in range(len(stamps) - 9))
    assert tightest >= 0.95, tightest
    assert stamps[-1] - stamps[0] >= (50 - 9) / 9 - 0.1


@pytest.mark.django_db(transaction=True)
def test_the_circuit_opens_fails_fast_and_closes_by_itself(settings):
    settings.BROKER_CIRCUIT_FAILURES = 3
    settings.BROKER_CIRCUIT_OPEN_SECONDS = 1
    app = KiteSimulator()
    app.register_app("k", "s", "http://127.0.0.1:1/cb")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        account = BrokerAccount(owner=UserFactory(), broker="zerodha", label="Kite", status=AccountStatus.CONNECTED)
        account.credentials = {"api_key": "k", "api_secret": "s"}
        account.session = {"access_token": app.issue_session("k", "AB1"), "broker_user_id": "AB1"}
        account.save()
        adapter = adapter_for(account)
        app.inject_fault("error", status=503, count=3)

        for _ in range(3):
            with pytest.raises(BrokerUnavailable):
                adapter.orders()
        reached = app.requests_served
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="paused") as raised:
            adapter.orders()
        assert app.requests_served == reached  # failed fast, the broker was not called
        assert time.monotonic() - started < 0.1 and raised.value.headers["Retry-After"] == "1"

        time.sleep(1.1)
        assert adapter.orders() == []  # the trial call went through and closed the circuit
        assert adapter.orders() == [] and app.requests_served == reached + 2


@pytest.mark.django_db(transaction=True)
def test_a_trial_call_the_broker_answers_with_a_rejection_closes_the_circuit(settings):
    from brokers.protocol import OrderRejected

    settings.BROKER_CIRCUIT_FAILURES = 1
    settings.BROKER_CIRCUIT_OPEN_SECONDS = 1
    app = KiteSimulator()
    app.register_app("k", "s", "http://127.0.0.1:1/cb")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        account = BrokerAccount(owner=UserFactory(), broker="zerodha", label="Kite", status=AccountStatus.CONNECTED)
        account.credentials = {"api_key": "k", "api_secret": "s"}
        account.session = {"access_token": app.issue_session("k", "AB1"), "broker_user_id": "AB1"}
        account.save()
        adapter = adapter_for(account)
        app.inject_fault("error", status=503)
        with pytest.raises(BrokerUnavailable):
            adapter.orders()
        time.sleep(1.1)

        with pytest.raises(OrderRejected):
            adapter.cancel_order("999")  # the trial: the broker is up and says no

        assert adapter.orders() == []  # not "a trial call is in progress"
