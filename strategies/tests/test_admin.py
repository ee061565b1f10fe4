"""The operators' strategy pages: strategies (secret never shown), runs with their fires, signals, backtests with
their chart; the stop actions go through the service and are audited."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent
from orders.models import Position
from strategies import services
from strategies.models import Backtest, Signal, Strategy, StrategyRun, StrategyStatus
from strategies.tests.factories import straddle_body

pytestmark = pytest.mark.django_db(transaction=True)
IST = ZoneInfo("Asia/Kolkata")


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def running(trader_client, paper, nifty, day, eager_tasks):
    created = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()
    run = trader_client.post(f"/api/strategies/{created['id']}/start", {"mode": "paper"}, format="json").json()
    services.strategy_fire(
        strategy_id=created["id"],
        run_id=run["run"]["id"],
        action="entry",
        now=datetime.combine(day, time(9, 20), tzinfo=IST),
    )
    return created


def test_pages_render_and_never_show_the_webhook_secret(console, running):
    strategy = Strategy.objects.get(pk=running["id"])
    run = StrategyRun.objects.get(strategy=strategy)
    Signal.objects.create(strategy=strategy, user=strategy.user, source="tradingview", status="rejected", reason="X")
    backtest = Backtest.objects.create(
        strategy=strategy,
        user=strategy.user,
        start_date=timezone.localdate(),
        end_date=timezone.localdate(),
        capital=100000,
        volatility="0.15",
        status="succeeded",
        result={"total_pnl": "1234.50", "win_rate": "50.00", "trades": []},
        chart_png=b"\x89PNG\r\n\x1a\nnot-a-real-image",
    )
    pages = [
        "/admin/strategies/strategy/",
        f"/admin/strategies/strategy/{strategy.pk}/change/",
        "/admin/strategies/strategyrun/",
        f"/admin/strategies/strategyrun/{run.pk}/change/",
        "/admin/strategies/signal/",
        "/admin/strategies/backtest/",
        f"/admin/strategies/backtest/{backtest.pk}/change/",
    ]
    for page in pages:
        response = console.get(page)
        assert response.status_code == 200, page
        assert strategy.webhook_secret not in response.content.decode(), page
    run_page = console.get(f"/admin/strategies/strategyrun/{run.pk}/change/").content.decode()
    assert "entry" in run_page and "placed" in run_page  # the fires, inline
    backtest_page = console.get(f"/admin/strategies/backtest/{backtest.pk}/change/").content.decode()
    assert 'src="data:image/png;base64,' in backtest_page and "1234.50" in backtest_page
    assert "1234.50" in console.get("/admin/strategies/backtest/").content.decode()


def test_stop_and_exit_action_stops_squares_off_and_is_audited(console, running, paper, admin_user):
    response = console.post(
        "/admin/strategies/strategy/",
        {"action": "stop_and_exit_strategies", "_selected_action": [running["id"]]},
        follow=True,
    )
    assert response.status_code == 200
    assert Strategy.objects.get(pk=running["id"]).status == StrategyStatus.STOPPED
    assert all(position.quantity == 0 for position in Position.objects.filter(account=paper))
    assert AuditEvent.objects.filter(action="admin.strategy_stop", actor=admin_user).count() == 1


def test_a_trader_cannot_open_the_console(trader, running):
    client = Client()
    client.force_login(trader)
    assert client.get("/admin/strategies/strategy/").status_code == 302  # to the admin login
