"""A web process killed between any two steps of placing an order: the client's retry with the same
Idempotency-Key is answered with what the broker really holds, never with a second order and never 409 forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connection

from algoterm.failpoints import ENV_VAR, KILLED_EXIT_CODE
from algoterm.testing import client_for
from brokers.models import SimOrder
from orders.models import IdempotencyRecord, Order, OrderStatus
from orders.tests.factories import EQUITY, paper_account

pytestmark = pytest.mark.django_db(transaction=True)
LEASE_SECONDS = 1.0

# Each step of placing, in order, and what the broker holds when the process dies there.
STEPS = [
    ("idempotency.claimed", False),  # the key is claimed, no order yet
    ("orders.place.created", False),  # the order is committed as SUBMITTING, not yet sent
    ("orders.submit.sent", True),  # the broker accepted it, we never recorded its answer
    ("orders.submit.accepted", True),  # recorded as OPEN, its fill not yet read back
    ("idempotency.before_complete", True),  # everything done but the answer was never stored
]

PLACE_IN_A_CHILD = """
import json, os, sys
import django
django.setup()
from rest_framework.test import APIClient
client = APIClient()
client.credentials(HTTP_AUTHORIZATION="Bearer " + os.environ["TEST_ACCESS_TOKEN"])
response = client.post("/api/orders", json.loads(os.environ["TEST_BODY"]), format="json",
                       HTTP_IDEMPOTENCY_KEY=os.environ["TEST_KEY"])
print(response.status_code)
"""


def _test_database_url() -> str:
    parts = urlsplit(os.environ["DATABASE_URL"])
    return parts._replace(path=f"/{connection.settings_dict['NAME']}").geturl()


def place_in_a_process_killed_at(step: str, *, token: str, body: dict, key: str) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "DJANGO_SETTINGS_MODULE": "algoterm.settings",
        ENV_VAR: f"{step}=exit",
        "TEST_ACCESS_TOKEN": token,
        "TEST_BODY": json.dumps(body),
        "TEST_KEY": key,
        "IDEMPOTENCY_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    child = subprocess.run(
        [sys.executable, "-c", PLACE_IN_A_CHILD],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return child.returncode


@pytest.mark.parametrize(("step", "reached_broker"), STEPS)
def test_a_retry_after_the_process_died_at_each_step_answers_the_truth_once(
    wall_clock, trader, instruments, market, settings, step, reached_broker
):
    assert connection.vendor == "postgresql", "the child process shares the test database: make test sets DATABASE_URL"
    from rest_framework_simplejwt.tokens import RefreshToken

    settings.IDEMPOTENCY_LEASE_SECONDS = LEASE_SECONDS
    settings.IDEMPOTENCY_WAIT_SECONDS = 5 * LEASE_SECONDS
    market(EQUITY, "1500")
    account = paper_account(trader)
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 5,
        "order_type": "MARKET",
        "product": "MIS",
        "target": 1600,
        "stop_loss": 1400,
    }
    token = str(RefreshToken.for_user(trader).access_token)

    code = place_in_a_process_killed_at(step, token=token, body=body, key="crash-key")

    assert code == KILLED_EXIT_CODE, f"the child was to die at {step}"
    assert IdempotencyRecord.objects.get(key="crash-key").completed_at is None
    # The client retries, as a mobile app does on a dropped connection: it waits out the dead holder's lease.
    retry = client_for(trader).post("/api/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="crash-key")
    entries_at_broker = SimOrder.objects.filter(side="BUY").count()
    if reached_broker:
        assert retry.status_code == 201, retry.content[:400]
        answer = retry.json()
        assert answer["status"] == OrderStatus.FILLED
        assert entries_at_broker == 1
        # Its exits were owed too: the retry's settling of the fill placed them.
        assert len(answer["exit_ids"]) == 2
    elif step == "idempotency.claimed":
        # Nothing was placed: the retry places the order, once.
        assert retry.status_code == 201, retry.content[:400]
        assert entries_at_broker == 1
    else:
        # Committed but never sent: the retry learns it was not placed (the broker has no record), and nothing is.
        assert retry.status_code == 422, retry.content[:400]
        assert retry.json()["error_code"] == "ORDER_REJECTED"
        assert entries_at_broker == 0
    assert Order.objects.filter(role="entry").count() == 1
    again = client_for(trader).post("/api/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="crash-key")
    assert again.status_code == retry.status_code and again["Idempotent-Replayed"] == "true"
    assert SimOrder.objects.filter(side="BUY").count() == entries_at_broker
