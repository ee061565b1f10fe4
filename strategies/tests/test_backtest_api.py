"""A backtest started through the API runs as a Celery task over stored candles, reports progress on its row, and
serves its result and equity chart; a second delivery of the task does not run it again."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from marketdata import calendar
from marketdata.models import Candle
from strategies import services
from strategies.models import Backtest, BacktestStatus
from strategies.tests.factories import SPOT_SYMBOL, straddle_body

IST = ZoneInfo("Asia/Kolkata")
pytestmark = pytest.mark.django_db(transaction=True)


def past_trading_days(count: int) -> list:
    days, day = [], timezone.localdate(timezone=IST) - timedelta(days=1)
    while len(days) < count:
        if calendar.is_trading_day(day):
            days.append(day)
        day -= timedelta(days=1)
    return sorted(days)


def store_spot_days(days) -> None:
    """A gently rising NIFTY from 09:15 to 15:29 each day."""
    rows = []
    for number, day in enumerate(days):
        start = datetime.combine(day, datetime.min.time(), tzinfo=IST).replace(hour=9, minute=15)
        for minute in range(375):
            price = Decimal(24500 + number * 20) + Decimal(minute) / 10
            rows.append(
                Candle(
                    symbol=SPOT_SYMBOL,
                    interval="1m",
                    start=start + timedelta(minutes=minute),
                    open=price,
                    high=price + 1,
                    low=price - 1,
                    close=price,
                    volume=0,
                )
            )
    Candle.objects.bulk_create(rows)


def test_a_backtest_runs_on_the_worker_path_and_serves_metrics_and_chart(trader_client, paper, nifty, eager_tasks):
    days = past_trading_days(3)
    store_spot_days(days)
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()

    response = trader_client.post(
        f"/api/strategies/{strategy['id']}/start",
        {"mode": "backtest", "start": days[0].isoformat(), "end": days[-1].isoformat(), "capital": 500000},
        format="json",
    )

    assert response.status_code == 202, response.json()
    backtest_id = response.json()["backtest"]["id"]
    assert backtest_id.startswith("bkt_")
    detail = trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{backtest_id}").json()
    assert detail["status"] == "succeeded", detail
    assert detail["progress"] == 100
    result = detail["result"]
    assert result["days"] == 3
    # Two short legs a day, each closed at 15:15 or by its stop: at least 6 trades, all Black-Scholes priced
    # (no option candles are stored), and the total is the sum of the trades.
    trades = result["trades"]
    assert len(trades) >= 6 and {trade["priced_by"] for trade in trades} == {"black_scholes"}
    assert all(isinstance(trade["pnl"], int | float) for trade in trades)  # money is a JSON number, as everywhere
    assert sum(Decimal(str(trade["pnl"])) for trade in trades) == Decimal(str(result["total_pnl"]))
    final = result["equity_curve"][-1]
    assert Decimal(str(final["equity"])) == Decimal("500000") + Decimal(str(result["total_pnl"]))
    assert detail["chart_url"] == f"/api/strategies/{strategy['id']}/backtests/{backtest_id}/chart.png"

    chart = trader_client.get(detail["chart_url"])
    assert chart.status_code == 200 and chart["Content-Type"] == "image/png"
    assert chart.content.startswith(b"\x89PNG\r\n\x1a\n")

    listed = trader_client.get(f"/api/strategies/{strategy['id']}/backtests").json()
    assert [item["id"] for item in listed["items"]] == [backtest_id] and "result" not in listed["items"][0]

    # Delivered again, the task finds the backtest finished and leaves it as it is.
    finished_at = Backtest.objects.get(pk=backtest_id).finished_at
    services.backtest_execute_stored(backtest_id=backtest_id)
    assert Backtest.objects.get(pk=backtest_id).finished_at == finished_at


def test_a_backtest_without_candles_fails_with_a_reason_the_user_can_read(trader_client, paper, nifty, eager_tasks):
    days = past_trading_days(2)
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()
    response = trader_client.post(
        f"/api/strategies/{strategy['id']}/start",
        {"mode": "backtest", "start": days[0].isoformat(), "end": days[-1].isoformat()},
        format="json",
    )
    detail = trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{response.json()['backtest']['id']}")
    body = detail.json()
    assert body["status"] == BacktestStatus.FAILED
    assert "NIFTY 50" in body["error"] and body["result"] is None and body["chart_url"] is None
    assert trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{body['id']}/chart.png").status_code == 404
