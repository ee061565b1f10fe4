"""Backtests cannot crowd out anyone's trading: each plan caps the backtests a user has queued or running (429
BACKTEST_LIMIT_REACHED over it, however many starts race), and a backtest past its time limit is failed with the
reason instead of running on or staying `running` forever."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.tests.factories import UserFactory
from algoterm.celery import app as celery_app
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from billing.models import Plan
from billing.selectors import plans_changed
from orders.tests.factories import paper_account
from strategies.models import Backtest, BacktestStatus
from strategies.tasks import expire_backtests
from strategies.tests.factories import straddle_body
from strategies.tests.test_backtest_api import past_trading_days, store_spot_days

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backtest_queue() -> Iterator[None]:
    """Backtests started without eager tasks wait on the (test) broker's backtest queue: emptied afterwards."""
    yield
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge("backtests")


def trial_cap(cap: int) -> None:
    """An operator sets the trial plan's cap; entitlements cached before are retired at once."""
    assert Plan.objects.filter(code="trial").update(max_active_backtests=cap) == 1
    plans_changed()


def window() -> dict:
    days = past_trading_days(2)
    return {"mode": "backtest", "start": days[0].isoformat(), "end": days[-1].isoformat()}


def start_url(strategy_id: str) -> str:
    return f"/api/strategies/{strategy_id}/start"


def test_over_the_plans_cap_a_backtest_start_answers_429_with_retry_after(
    trader, trader_client, paper, nifty, backtest_queue, settings
):
    settings.BACKTEST_LIMIT_RETRY_AFTER_SECONDS = 45
    trial_cap(2)
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()
    other = trader_client.post("/api/strategies", straddle_body(paper, name="Other"), format="json").json()

    first = trader_client.post(start_url(strategy["id"]), window(), format="json")
    second = trader_client.post(start_url(other["id"]), window(), format="json")
    third = trader_client.post(start_url(strategy["id"]), window(), format="json")

    assert (first.status_code, second.status_code) == (202, 202)
    body = assert_error(third, 429, "BACKTEST_LIMIT_REACHED")
    assert third["Retry-After"] == "45" and body["limit"] == 2
    assert "2 backtests queued or running" in body["detail"]
    assert Backtest.objects.filter(user=trader).count() == 2
    # The cap is the user's: another trader starts theirs.
    stranger = UserFactory()
    stranger_client = client_for(stranger)
    own = stranger_client.post("/api/strategies", straddle_body(paper_account(stranger)), format="json").json()
    assert stranger_client.post(start_url(own["id"]), window(), format="json").status_code == 202


def test_finished_backtests_free_their_slots(trader_client, paper, nifty, eager_tasks):
    trial_cap(1)
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()

    # No candles stored: each backtest fails at once, so the one slot is free again every time.
    for _ in range(3):
        assert trader_client.post(start_url(strategy["id"]), window(), format="json").status_code == 202

    assert Backtest.objects.filter(status=BacktestStatus.FAILED).count() == 3


def test_concurrent_starts_cannot_pass_the_cap_together(trader, paper, nifty, backtest_queue):
    trial_cap(2)
    client = client_for(trader)
    strategy_ids = [
        client.post("/api/strategies", straddle_body(paper, name=f"S{n}"), format="json").json()["id"] for n in range(6)
    ]
    barrier = threading.Barrier(len(strategy_ids))
    statuses: list[int] = []

    def start(strategy_id: str) -> None:
        try:
            own_client = client_for(trader)
            barrier.wait(timeout=10)
            statuses.append(own_client.post(start_url(strategy_id), window(), format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(strategy_id,)) for strategy_id in strategy_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(statuses) == [202, 202, 429, 429, 429, 429]
    assert Backtest.objects.filter(user=trader, status=BacktestStatus.QUEUED).count() == 2


def test_a_backtest_past_its_soft_time_limit_fails_with_the_reason(
    trader, trader_client, paper, nifty, eager_tasks, settings
):
    settings.BACKTEST_SOFT_TIME_LIMIT_SECONDS = 0
    days = past_trading_days(3)
    store_spot_days(days)
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()

    response = trader_client.post(
        start_url(strategy["id"]),
        {**window(), "start": days[0].isoformat(), "end": days[-1].isoformat()},
        format="json",
    )

    backtest_id = response.json()["backtest"]["id"]
    detail = trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{backtest_id}").json()
    assert detail["status"] == "failed" and detail["result"] is None
    assert detail["error"].startswith("The backtest ran past its time limit of 0 seconds")
    audit = AuditEvent.objects.get(action="strategy.backtest_failed", target_id=backtest_id)
    assert audit.details["error"] == detail["error"]
    [notification] = trader.notifications.filter(kind="strategy")
    assert notification.level == "warning" and "time limit" in notification.body


def test_a_backtest_whose_worker_was_killed_is_failed_and_frees_its_slot(
    trader, trader_client, paper, nifty, backtest_queue, settings
):
    """The hard limit kills the worker child mid-backtest: nothing in it marks the row, so beat's expiry does."""
    trial_cap(1)
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()
    backtest_id = trader_client.post(start_url(strategy["id"]), window(), format="json").json()["backtest"]["id"]
    Backtest.objects.filter(pk=backtest_id).update(status=BacktestStatus.RUNNING, started_at=timezone.now())
    assert trader_client.post(start_url(strategy["id"]), window(), format="json").status_code == 429

    with time_machine.travel(timezone.now() + timedelta(seconds=settings.BACKTEST_HARD_TIME_LIMIT_SECONDS - 1)):
        assert expire_backtests() == 0  # within its limit it may still finish
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.BACKTEST_HARD_TIME_LIMIT_SECONDS + 120)):
        assert expire_backtests() == 1

    detail = trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{backtest_id}").json()
    assert detail["status"] == "failed" and "time limit" in detail["error"]
    assert trader_client.post(start_url(strategy["id"]), window(), format="json").status_code == 202


def test_backtest_start_checks_its_input_owner_and_authentication(trader_client, paper, nifty, backtest_queue):
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()
    url = start_url(strategy["id"])

    invalid = trader_client.post(url, {**window(), "start": "not-a-date"}, format="json")
    assert_error(invalid, 400, "VALIDATION_ERROR")
    assert_other_user_gets_404("post", url, window())
    assert_requires_auth("post", url, window())
    assert not Backtest.objects.exists()
