"""Start, the beat entries, a fire through the order pipeline, double delivery, exit time and stop."""

from __future__ import annotations

import json
import os
from datetime import datetime, time
from decimal import Decimal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import PeriodicTask

from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from strategies import services
from strategies.models import FireAction, Strategy, StrategyFire, StrategyStatus
from strategies.tests.factories import option_symbol, straddle_body

IST = ZoneInfo("Asia/Kolkata")
pytestmark = pytest.mark.django_db


def create(client, body) -> dict:
    response = client.post("/api/strategies", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def start(client, strategy_id, mode="paper"):
    return client.post(f"/api/strategies/{strategy_id}/start", {"mode": mode}, format="json")


def at(day, hh_mm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hh_mm), tzinfo=IST)


def test_start_creates_ist_beat_entries_on_the_weekdays_and_stop_removes_them(trader_client, paper, nifty):
    strategy = create(trader_client, straddle_body(paper, weekdays=[0, 2, 4]))
    response = start(trader_client, strategy["id"])
    assert response.status_code == 201, response.json()
    run_id = response.json()["run"]["id"]

    entries = {task.name: task for task in PeriodicTask.objects.filter(name__startswith=f"strategy {strategy['id']}")}
    assert set(entries) == {f"strategy {strategy['id']} entry", f"strategy {strategy['id']} exit"}
    entry = entries[f"strategy {strategy['id']} entry"]
    assert (entry.crontab.hour, entry.crontab.minute) == ("9", "20")
    assert str(entry.crontab.timezone) == "Asia/Kolkata"
    assert entry.crontab.day_of_week == "1,3,5"  # cron's Monday, Wednesday, Friday
    assert json.loads(entry.kwargs) == {"strategy_id": strategy["id"], "run_id": run_id, "action": "entry"}
    exit_entry = entries[f"strategy {strategy['id']} exit"]
    assert (exit_entry.crontab.hour, exit_entry.crontab.minute) == ("15", "15")
    # 09:20 IST is 03:50 UTC: the schedule's next run, seen from a Monday 03:00 UTC, is that day at 03:50 UTC.
    monday_0300_utc = datetime(2026, 11, 30, 3, 0, tzinfo=ZoneInfo("UTC"))
    schedule = entry.crontab.schedule
    schedule.nowfun = lambda: monday_0300_utc
    remaining = schedule.remaining_estimate(monday_0300_utc)
    assert remaining.total_seconds() == pytest.approx(50 * 60, abs=60)

    assert trader_client.post(f"/api/strategies/{strategy['id']}/stop", {}, format="json").status_code == 200
    assert not PeriodicTask.objects.filter(name__startswith=f"strategy {strategy['id']}").exists()
    assert Strategy.objects.get(pk=strategy["id"]).status == StrategyStatus.STOPPED


def test_a_fire_sells_the_atm_straddle_of_the_current_week_with_stops(trader_client, paper, nifty, day):
    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]

    fires = services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))

    assert [fire.status for fire in fires] == ["placed", "placed"]
    orders = Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY).order_by("symbol")
    expiry = nifty["weekly"][0]
    assert [order.symbol for order in orders] == [
        option_symbol(expiry, Decimal(24500), "CE"),
        option_symbol(expiry, Decimal(24500), "PE"),
    ]
    for order in orders:
        assert (order.side, order.quantity, order.source, order.tag) == (
            "SELL",
            75,
            OrderSource.STRATEGY,
            strategy["id"],
        )
        assert order.status == OrderStatus.FILLED
    ce = orders[0]
    # CE 24500 is quoted at 90 (see the fixture): a 25% stop on a short is 112.50.
    assert ce.stop_loss == Decimal("112.50")


def test_offsets_premium_and_next_week_choose_their_contracts(trader_client, paper, nifty, day):
    body = straddle_body(paper)
    body["legs"] = [
        {
            "underlying": "NIFTY",
            "instrument": "OPT",
            "option_type": "CE",
            "side": "BUY",
            "lots": 2,
            "expiry": "next_week",
            "strike": "atm",
            "strike_offset": 2,
        },
        {
            "underlying": "NIFTY",
            "instrument": "OPT",
            "option_type": "PE",
            "side": "BUY",
            "lots": 1,
            "expiry": "current_month",
            "strike": "closest_premium",
            "premium": "66",
        },
    ]
    strategy = create(trader_client, body)
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))

    placed = {order.symbol: order.quantity for order in Order.objects.filter(strategy_ref=strategy["id"])}
    # ATM 24500 + 2 steps = 24600 on next week's expiry; the PE nearest a premium of 66 is 24450 (quoted 65).
    assert placed == {
        option_symbol(nifty["weekly"][1], Decimal(24600), "CE"): 150,
        option_symbol(nifty["monthly"][0], Decimal(24450), "PE"): 75,
    }


def test_a_fire_delivered_twice_places_one_set_of_orders(market_open, trader_client, paper, nifty, day):
    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    from strategies.tasks import fire

    fire.apply(kwargs={"strategy_id": strategy["id"], "run_id": run_id, "action": "entry"})
    fire.apply(kwargs={"strategy_id": strategy["id"], "run_id": run_id, "action": "entry"})

    assert Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY).count() == 2
    assert StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.ENTRY).count() == 2


@pytest.mark.django_db(transaction=True)
def test_exit_time_squares_off_only_the_strategys_own_positions(
    trader_client, paper, nifty, day, publish_quote, eager_tasks
):
    from orders.services import OrderSpec, order_place

    expiry = nifty["weekly"][0]
    own_symbol = option_symbol(expiry, Decimal(24500), "CE")
    # The user's own manual short in the same contract must survive the strategy's exit.
    order_place(
        user=paper.owner,
        spec=OrderSpec(
            account_id=paper.pk, symbol=own_symbol, side="SELL", quantity=75, order_type="MARKET", product="MIS"
        ),
    )
    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))
    assert Position.objects.get(account=paper, symbol=own_symbol).quantity == -150

    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="exit", now=at(day, "15:15"))

    assert Position.objects.get(account=paper, symbol=own_symbol).quantity == -75
    pe = option_symbol(expiry, Decimal(24500), "PE")
    assert Position.objects.get(account=paper, symbol=pe).quantity == 0
    # The stop-loss legs of the entries were cancelled, not left to fire on a flat position.
    stops = Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.STOP_LOSS)
    assert stops.exists() and all(stop.status == OrderStatus.CANCELLED for stop in stops)
    # Exiting twice (the exit task delivered again) does nothing more.
    assert services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="exit", now=at(day, "15:15")) == []


def test_a_holiday_or_another_weekday_fires_nothing(trader_client, paper, nifty, day):
    from datetime import timedelta

    from marketdata import calendar

    strategy = create(trader_client, straddle_body(paper, weekdays=[day.weekday()]))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    other_day = day + timedelta(days=1)
    while not calendar.is_trading_day(other_day) or other_day.weekday() == day.weekday():
        other_day += timedelta(days=1)
    assert (
        services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(other_day, "09:20"))
        == []
    )
    sunday = day + timedelta(days=(6 - day.weekday()) % 7)
    assert (
        services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(sunday, "09:20")) == []
    )
    assert not Order.objects.filter(strategy_ref=strategy["id"]).exists()


def test_a_leg_that_cannot_be_placed_marks_the_fire_failed_and_tells_the_user(trader_client, paper, nifty, day):
    from accounts.models import Notification

    body = straddle_body(paper)
    body["legs"][0].update({"strike": "fixed", "strike_price": "30000", "stop_loss_unit": None, "stop_loss": None})
    body["legs"] = body["legs"][:1]
    strategy = create(trader_client, body)
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]

    fires = services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))

    assert fires[0].status == "failed" and "30000" in fires[0].detail
    assert Notification.objects.filter(user=paper.owner, level="error", title__contains="not placed").exists()


def test_mtm_stop_loss_exits_the_strategy_on_the_rms_sweep(trader_client, paper, nifty, day, publish_quote, settings):
    from django.utils import timezone

    from rms.tasks import sweep

    strategy = create(trader_client, straddle_body(paper, mtm_stop_loss="1500", entry_time="00:01", exit_time="23:59"))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    settings.MARKET_ALWAYS_OPEN = True  # the sweep runs on the real clock: let today trade, whatever day it is
    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=timezone.now())
    expiry = nifty["weekly"][0]
    # Both short legs rise by 12: 2 x 75 x 12 = 1,800 of loss, beyond the 1,500 stop.
    publish_quote(option_symbol(expiry, Decimal(24500), "CE"), Decimal(102))
    publish_quote(option_symbol(expiry, Decimal(24500), "PE"), Decimal(102))

    sweep.apply()

    assert StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.MTM_EXIT).count() == 1
    for option_type in ("CE", "PE"):
        assert (
            Position.objects.get(account=paper, symbol=option_symbol(expiry, Decimal(24500), option_type)).quantity == 0
        )


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_beat_entrys_task_once_though_it_arrives_twice(
    wall_clock, trader_client, paper, nifty, monkeypatch
):
    import time as clock

    from django.db import connection

    from algoterm.celery import app as celery_app
    from algoterm.testing import celery_worker_process

    parts = urlparse(os.environ["DATABASE_URL"])
    monkeypatch.setenv("DATABASE_URL", parts._replace(path=f"/{connection.settings_dict['NAME']}").geturl())
    monkeypatch.setenv("MARKET_ALWAYS_OPEN", "true")  # the worker fires on the real clock, whatever the day
    celery_app.control.purge()
    strategy = create(trader_client, straddle_body(paper))
    start(trader_client, strategy["id"])
    entry = PeriodicTask.objects.get(name=f"strategy {strategy['id']} entry")

    with celery_worker_process():
        for _ in range(2):  # what beat sends, delivered twice
            celery_app.send_task(entry.task, kwargs=json.loads(entry.kwargs))
        deadline = clock.monotonic() + 30
        while StrategyFire.objects.filter(strategy_id=strategy["id"]).exclude(status="claimed").count() < 2:
            assert clock.monotonic() < deadline, "the worker never fired the entry"
            clock.sleep(0.1)
        clock.sleep(1)  # the second delivery has had its turn on the solo worker

    orders = Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY)
    assert orders.count() == 2 and {order.side for order in orders} == {"SELL"}
    assert StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.ENTRY).count() == 2
